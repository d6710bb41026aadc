"""Models that leave tsuika: `tsuika export RUN --merge` writes the adapted network as a plain
Hugging Face folder (weights, config, tokenizer) that `transformers` loads without tsuika.

Adapters are merged into the weights they adapt (PEFT's `merge_and_unload`: W + (α/r)·BA
for LoRA), so the folder needs no `peft` either; a run that trained the network's own weights
(`finetune`) is written as it is. The head of a classifier is not part of such a folder (see
the run's `model/`); a causal language model's LM head is, so the folder is the whole model.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

from transformers import PreTrainedModel

from tsuika.errors import TsuikaError
from tsuika.run import load


def export_merged(run_path: str | Path, out: str | Path) -> Path:
    """Write the run's network (adapters merged) to the new folder `out`."""
    out = Path(out)
    if out.exists():
        raise TsuikaError(f"{out} already exists; exports never overwrite, choose another --out")
    run = load(run_path)
    model = run.model
    network = model.library
    if not isinstance(network, PreTrainedModel):
        raise TsuikaError(
            f"{run_path}: --merge writes a Hugging Face folder, and this run's network "
            f"({model.spec.get('source')}) is not a transformers model"
        )
    if model.adapters is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            network = model.adapters.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a failed export leaves no half folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        network.save_pretrained(staging)
        model.preprocess.tokenizer.save_pretrained(staging)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
