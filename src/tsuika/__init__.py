"""tsuika (追加): adapt pretrained networks to your own small dataset, and find out honestly
whether it helped."""

import os
from importlib.metadata import version

__version__ = version("tsuika")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tsuika.api import Run, load, train
from tsuika.config import Config, load_config
from tsuika.errors import TsuikaError
from tsuika.models import register_module

__all__ = ["Config", "Run", "TsuikaError", "load", "load_config", "register_module", "train"]
