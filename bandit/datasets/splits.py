"""Seeded train / validation / test splits, fixed per data set.

- A ``source_split`` (the publisher's, or an imported file's ``split`` column) is kept:
  with train/val/test as given; with only train and test, validation is carved from train
  (``TRAIN_FRACTION``), as for ARC.
- Otherwise a seeded permutation: 60 % / 20 % / 20 % (IMDB: 10,000 / 2,000 / the rest).
- A row that misses some arm's outcome (``Dataset.observed``) cannot be scored, so it is
  always a training row: any such row in validation or test moves to train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.datasets.base import Dataset
from bandit.errors import DatasetError

# IMDB: 10,000 / 2,000 / 13,000 of the 25,000 recorded reviews.
IMDB_SIZES = (10_000, 2_000)
# overruling and imported files without a split: 60 % / 20 % / 20 %.
FRACTIONS = (0.6, 0.2)
# ARC, and any file split into train and test only: train split 80 % / 20 % into train / val.
TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class Split:
    """Row indices into a Dataset, each shape (m,), disjoint."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def make_split(ds: Dataset, seed: int = 0) -> Split:
    split = _given_split(ds, seed) if (ds.source_split != "").any() else _seeded_split(ds, seed)
    why = ""
    if ds.observed is not None:
        complete = np.asarray(ds.observed.all(1))
        split = training_only_incomplete(split, complete)
        why = (
            f"; {int((~complete).sum())} of {len(ds)} queries miss some arm and are training "
            "rows only: validation and test need queries with every arm's outcome"
        )
    for part, rows in split.sizes().items():
        if rows == 0:
            raise DatasetError(f"{ds.name}: the {part} split is empty ({split.sizes()}){why}")
    return split


def training_only_incomplete(split: Split, complete: np.ndarray) -> Split:
    """``split`` with the rows that are not ``complete`` (shape (n,), bool) of validation and
    test moved to train."""
    if complete[split.val].all() and complete[split.test].all():
        return split
    extra = np.concatenate([r[~complete[r]] for r in (split.val, split.test)])
    return Split(
        np.sort(np.concatenate([split.train, extra])),
        split.val[complete[split.val]],
        split.test[complete[split.test]],
    )


def _given_split(ds: Dataset, seed: int) -> Split:
    train_rows = np.flatnonzero(ds.source_split == "train")
    test_rows = np.flatnonzero(ds.source_split == "test")
    val_rows = np.flatnonzero(ds.source_split == "val")
    if len(val_rows):
        return Split(train_rows, val_rows, test_rows)
    perm = np.random.default_rng(seed).permutation(train_rows)
    cut = int(round(TRAIN_FRACTION * len(perm)))
    return Split(np.sort(perm[:cut]), np.sort(perm[cut:]), test_rows)


def _seeded_split(ds: Dataset, seed: int) -> Split:
    perm = np.random.default_rng(seed).permutation(len(ds))
    if ds.name == "imdb" and len(ds) >= sum(IMDB_SIZES):
        n_train, n_val = IMDB_SIZES
    else:
        n_train = int(round(FRACTIONS[0] * len(ds)))
        n_val = int(round(FRACTIONS[1] * len(ds)))
    if n_train == 0 or n_val == 0 or n_train + n_val >= len(ds):
        raise DatasetError(f"{ds.name}: {len(ds)} rows are too few to split")
    return Split(
        np.sort(perm[:n_train]),
        np.sort(perm[n_train : n_train + n_val]),
        np.sort(perm[n_train + n_val :]),
    )
