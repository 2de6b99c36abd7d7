"""Seeded train / validation / test splits, fixed per data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit.datasets.base import Dataset
from bandit.errors import DatasetError

# IMDB: 10,000 / 2,000 / 13,000 of the 25,000 recorded reviews.
IMDB_SIZES = (10_000, 2_000)
# overruling: 60 % / 20 % / 20 %.
FRACTIONS = (0.6, 0.2)
# ARC: the publisher's train file split 80 % / 20 % into train / validation.
ARC_TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class Split:
    """Row indices into a Dataset, each shape (m,), disjoint."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def make_split(ds: Dataset, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    if ds.name == "arc":
        train_rows = np.flatnonzero(ds.source_split == "train")
        test_rows = np.flatnonzero(ds.source_split == "test")
        perm = rng.permutation(train_rows)
        cut = int(round(ARC_TRAIN_FRACTION * len(perm)))
        return Split(np.sort(perm[:cut]), np.sort(perm[cut:]), test_rows)
    perm = rng.permutation(len(ds))
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
