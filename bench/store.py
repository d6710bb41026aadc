"""The activation store: `tsuika demo` run twice as whole processes, the second reading the
frozen passes the first computed (issue 33: at least 5× faster).

    python bench/store.py [--images] [--repeats 2]

Each repeat starts from an empty store in a temporary folder (the user's store is untouched),
runs the demo cold, then warm; prints both times, their ratio, and whether the two runs'
test figures are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line),
        platform.processor(),
    )
    kinds = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx2") if f" {f} " in flags]
    return f"{model} ({', '.join(kinds)}), {os.cpu_count()} cores"


def demo(store: Path, output: Path, images: bool) -> tuple[float, dict]:
    env = {**os.environ, "TSUIKA_ACTIVATIONS": str(store)}
    command = [sys.executable, "-m", "tsuika.cli", "demo", "--quiet", "--output", str(output)]
    if images:
        command.append("--images")
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    newest = max(output.iterdir(), key=lambda folder: folder.stat().st_mtime)
    return seconds, json.loads((newest / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} · {cpu()} · torch threads default")
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            store, output = Path(folder) / "store", Path(folder) / "runs"
            cold, first = demo(store, output, args.images)
            warm, second = demo(store, output, args.images)
            same = first["test"] == second["test"]
            print(
                f"repeat {repeat}: cold {cold:.1f} s, warm {warm:.1f} s, ratio {cold / warm:.2f}× "
                f"(passes {first.get('frozen_passes')} → {second.get('frozen_passes')}); "
                f"test figures identical: {same}"
            )


if __name__ == "__main__":
    main()
