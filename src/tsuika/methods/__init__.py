"""Adaptation methods; each is one module, registered here by name, or by another installed
package under the entry-point group `tsuika.methods` (`tsuika.plugins`)."""

from tsuika.errors import TsuikaError
from tsuika.methods.adapters import IA3, Dora, Lora
from tsuika.methods.base import Method
from tsuika.methods.concepts import (
    DreamBooth,
    DreamBoothLora,
    HypernetworkMethod,
    TextualInversion,
)
from tsuika.methods.contrastive import Contrastive
from tsuika.methods.distill import Distill
from tsuika.methods.finetune import Finetune
from tsuika.methods.prompt_tuning import PromptTuning
from tsuika.methods.transfer import Transfer
from tsuika.plugins import registry

BUILT_IN: dict[str, type[Method]] = {
    "transfer": Transfer,
    "finetune": Finetune,
    "contrastive": Contrastive,
    "lora": Lora,
    "dora": Dora,
    "ia3": IA3,
    "prompt-tuning": PromptTuning,
    "distill": Distill,
    "textual-inversion": TextualInversion,
    "dreambooth": DreamBooth,
    "dreambooth-lora": DreamBoothLora,
    "hypernetwork": HypernetworkMethod,
}
METHODS, UNUSABLE = registry("tsuika.methods", BUILT_IN, Method)
"""Every method by name: the built-in ones, then the plugins'; `UNUSABLE`: why each plugin
that could not be loaded is left out."""


def method_class(name: str) -> type[Method]:
    if name == "auto":  # resolved by `tsuika.methods.recipe` once the data is read
        raise TsuikaError(
            "method `auto` is chosen from the training data when a run starts; name a method "
            f"here ({', '.join(METHODS)})"
        )
    if name in UNUSABLE:
        raise TsuikaError(UNUSABLE[name])
    if name not in METHODS:
        raise TsuikaError(f"unknown method `{name}`; methods are {', '.join(METHODS)}")
    return METHODS[name]


__all__ = [
    "IA3",
    "METHODS",
    "Contrastive",
    "Distill",
    "Dora",
    "DreamBooth",
    "DreamBoothLora",
    "Finetune",
    "HypernetworkMethod",
    "Lora",
    "Method",
    "PromptTuning",
    "TextualInversion",
    "Transfer",
    "method_class",
]
