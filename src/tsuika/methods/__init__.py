"""Adaptation methods; each is one module, registered here by name."""

from tsuika.methods.base import Method
from tsuika.methods.finetune import Finetune
from tsuika.methods.transfer import Transfer

METHODS: dict[str, type[Method]] = {"transfer": Transfer, "finetune": Finetune}

__all__ = ["METHODS", "Finetune", "Method", "Transfer"]
