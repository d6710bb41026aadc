"""Adaptation methods; each is one module, registered here by name."""

from tsuika.errors import TsuikaError
from tsuika.methods.base import Method
from tsuika.methods.finetune import Finetune
from tsuika.methods.transfer import Transfer

METHODS: dict[str, type[Method]] = {"transfer": Transfer, "finetune": Finetune}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise TsuikaError(f"unknown method `{name}`; methods are {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Finetune", "Method", "Transfer", "method_class"]
