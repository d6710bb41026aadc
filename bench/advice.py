"""`tsuika check` and `tsuika rank` on the bundled reviews (issue 18), figures for RESULTS.md.

    python bench/advice.py

Check: every finding on the bundled reviews with MiniLM-L6, and the seconds it took. Rank:
MiniLM-L6, a weaker real model made offline (MiniLM-L6 cut to its first two layers, saved as a
folder) and `random:minilm-l6` (the same architecture untrained), on 2,000 training rows.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def first_layers(layers: int, folder: Path) -> Path:
    """MiniLM-L6 with only its first `layers` transformer layers, as a model folder."""
    from transformers import AutoModel, AutoTokenizer

    from tsuika.models import resolve_source

    source = resolve_source("minilm-l6")[1]
    model = AutoModel.from_pretrained(source)
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def main() -> None:
    from tsuika.advice.commands import check, rank

    torch.set_num_threads(2)
    print(f"# bench/advice.py · {date.today()} · {platform.machine()} · torch {torch.__version__}")
    started = time.perf_counter()
    findings = check(model="minilm-l6", data={"train": "bundled:reviews"})
    print(f"check: {time.perf_counter() - started:.1f} s")
    for finding in findings:
        print(f"  {finding.verdict:8s} {finding.check:13s} {finding.count:5d}  {finding.text}")
        for example in finding.examples[:2]:
            print(f"      {json.dumps(example, ensure_ascii=False)[:200]}")
    with tempfile.TemporaryDirectory() as tmp:
        cut = first_layers(2, Path(tmp) / "minilm-first-2-layers")
        started = time.perf_counter()
        results = rank(
            model="minilm-l6",
            data={"train": "bundled:reviews"},
            models=["minilm-l6", str(cut), "random:minilm-l6"],
            limit=2000,
        )
        print(f"rank: {time.perf_counter() - started:.1f} s")
        for row in results:
            seconds = " + ".join(f"{v:.2f}" for v in row["seconds"].values())
            print(
                f"  {Path(row['model']).name:24s} LogME {row['logme']:+.4f}  probe "
                f"{row['probe']:.3f}  ({row['examples']} rows; {seconds} s)"
            )


if __name__ == "__main__":
    main()
