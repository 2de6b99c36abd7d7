"""Write a bundled data set in the import formats (README, "Your own data").

The rows are what the built-in loader reads from ../shared/data (the same texts, outcomes,
costs, answers and labels), so ``metallm evaluate --data OUT`` gives the figures of
``metallm evaluate --dataset NAME`` (same --seed). When the generic rule of an imported file
(a seeded 60/20/20 split) would not reproduce the bundled split, a ``split`` column is
written: ARC's publisher's train/test (validation is carved from train, any seed), IMDB's
fixed-size seeded split as train/val/test (for ``--seed``, default 0).

    .venv/bin/python scripts/convert_dataset.py --dataset overruling --format long \\
        --out /tmp/overruling.jsonl [--data-dir ../shared/data] [--seed 0]

``--out`` ending in .jsonl/.json writes JSON lines (long format only), .csv writes CSV. The
file is written where you say, never into the project.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bandit.datasets import DATA_DIR_ENV, LOADERS, Dataset, load_dataset, make_split
from bandit.datasets.wide_format import COST, RESPONSE
from bandit.errors import MetalLMError

PROJECT = Path(__file__).resolve().parents[1]


def split_column(ds: Dataset, seed: int) -> np.ndarray | None:
    """The ``split`` values to write, or None when an imported file's own rule (no column)
    gives the bundled split."""
    bundled = make_split(ds, seed)
    plain = dataclasses.replace(ds, name="imported", source_split=np.full(len(ds), "", object))
    generic = make_split(plain, seed)
    if all(np.array_equal(getattr(bundled, f), getattr(generic, f)) for f in ("train", "val", "test")):  # fmt: skip
        return None
    if (ds.source_split != "").all():
        return ds.source_split  # the publisher's train/test: validation is carved per seed
    out = np.full(len(ds), "", dtype=object)
    for part in ("train", "val", "test"):
        out[getattr(bundled, part)] = part
    return out


def _outcome(ds: Dataset) -> str:
    """``correct`` when every outcome is 0/1, else ``score``."""
    return "correct" if np.isin(ds.correct, (0.0, 1.0)).all() else "score"


def long_rows(ds: Dataset, split: np.ndarray | None) -> Iterator[dict[str, Any]]:
    field = _outcome(ds)
    for i in range(len(ds)):
        for j, arm in enumerate(ds.arms):
            a = float(ds.correct[i, j])
            row: dict[str, Any] = {
                "id": str(ds.ids[i]),
                "text": str(ds.texts[i]),
                "arm": arm,
                field: int(a) if field == "correct" else a,
                "cost_usd": float(ds.cost_usd[i, j]),
                "answer": str(ds.answers[i, j]),
                "label": str(ds.labels[i]),
            }
            if split is not None:
                row["split"] = str(split[i])
            yield row


def wide_rows(ds: Dataset, split: np.ndarray | None) -> Iterator[dict[str, Any]]:
    for i in range(len(ds)):
        row: dict[str, Any] = {"id": str(ds.ids[i]), "text": str(ds.texts[i]), "label": str(ds.labels[i])}  # fmt: skip
        if split is not None:
            row["split"] = str(split[i])
        for j, arm in enumerate(ds.arms):
            row[arm] = float(ds.correct[i, j])
            row[arm + COST] = float(ds.cost_usd[i, j])
            row[arm + RESPONSE] = str(ds.answers[i, j])
        yield row


def write(ds: Dataset, fmt: str, out: Path, split: np.ndarray | None) -> int:
    """Write ``ds`` to ``out`` (with ``split`` as its split column); the rows written."""
    rows = list(long_rows(ds, split) if fmt == "long" else wide_rows(ds, split))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".jsonl", ".json"):
        with out.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", required=True, choices=sorted(LOADERS))
    ap.add_argument("--format", required=True, choices=("long", "wide"))
    ap.add_argument("--out", required=True, type=Path, help="file to write (.jsonl/.json or .csv)")
    ap.add_argument("--data-dir", help=f"the recorded data sets (default: ${DATA_DIR_ENV}, else ../shared/data)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of a written train/val/test split (IMDB; default 0)")  # fmt: skip
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out.is_relative_to(PROJECT):
        ap.error(f"--out {args.out} is inside the project ({PROJECT}); write it elsewhere")
    if args.format == "wide" and out.suffix.lower() != ".csv":
        ap.error("the wide format is CSV: give --out a .csv name")
    if out.suffix.lower() not in (".csv", ".jsonl", ".json"):
        ap.error("--out must end in .jsonl, .json or .csv")
    try:
        ds = load_dataset(args.dataset, args.data_dir or os.environ.get(DATA_DIR_ENV))
        split = split_column(ds, args.seed)
        n = write(ds, args.format, out, split)
    except MetalLMError as exc:
        ap.exit(2, f"convert_dataset: error: {exc}\n")
    note = "no split column (the seeded rule reproduces it)" if split is None else "a split column"
    print(f"wrote {out}: {args.dataset} in the {args.format} format, {n} rows, {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
