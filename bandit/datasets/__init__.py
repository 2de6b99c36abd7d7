"""Importers for the recorded data sets in ../shared/data, all into one form (Dataset)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bandit.datasets.base import DATA_DIR_ENV, Dataset, resolve_data_dir
from bandit.datasets.imdb import load_imdb
from bandit.datasets.overruling import load_overruling
from bandit.datasets.routerbench import load_arc
from bandit.datasets.splits import Split, make_split
from bandit.errors import ConfigError

LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "overruling": load_overruling,
    "imdb": load_imdb,
    "arc": load_arc,
}


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Import data set ``name`` (one of LOADERS) from ``data_dir`` (see resolve_data_dir)."""
    if name not in LOADERS:
        raise ConfigError(f"unknown data set {name!r}; choose one of: {', '.join(LOADERS)}")
    return LOADERS[name](resolve_data_dir(data_dir))


__all__ = [
    "DATA_DIR_ENV",
    "LOADERS",
    "Dataset",
    "Split",
    "load_dataset",
    "make_split",
    "resolve_data_dir",
]
