"""IMDB sentiment, 25,000 test reviews × 4 commercial sentiment APIs (FrugalML)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from bandit.datasets.base import Dataset, require_file
from bandit.errors import DatasetError

FOLDER = "imdb-apis"
# FrugalML's label coding: 0 = positive, 1 = negative.
LABELS = ("positive", "negative")
TEXT_LABELS = {"pos": "positive", "neg": "negative"}


def _read_column(path: Path) -> list[str]:
    return [
        line.strip().rstrip(",")
        for line in require_file(path).read_text().split("\n")
        if line.strip()
    ]


def load_imdb(data_dir: Path) -> Dataset:
    folder = data_dir / FOLDER
    with require_file(folder / "meta.csv").open(newline="") as f:
        meta = list(csv.DictReader(f))
    api_index = [row["Index"] for row in meta]
    arms = tuple(row["MLaaS(API)"] for row in meta)
    price_usd = np.array([float(row["Cost per 10k texts"]) / 10_000 for row in meta])

    names = _read_column(folder / f"Model{api_index[0]}_ImageName.txt")
    n = len(names)
    texts_by_name: dict[str, tuple[str, str]] = {}
    with gzip.open(require_file(folder / "aclImdb_test_texts.tsv.gz"), "rt", encoding="utf-8") as f:
        # Reviews contain Unicode line separators, so split on "\n" only.
        lines = f.read().split("\n")
    for line in lines[1:]:
        if line:
            name, label, text = line.split("\t", 2)
            texts_by_name[name] = (TEXT_LABELS[label], text)

    answers = np.empty((n, len(arms)), dtype=object)
    correct = np.empty((n, len(arms)))
    labels: list[str] = []
    for j, k in enumerate(api_index):
        if _read_column(folder / f"Model{k}_ImageName.txt") != names:
            raise DatasetError(f"{folder}: Model{k} rows are not in the shared row order")
        predicted = [LABELS[int(v)] for v in _read_column(folder / f"Model{k}_PredictedLabel.txt")]
        true = [LABELS[int(v)] for v in _read_column(folder / f"Model{k}_TrueLabel.txt")]
        rewards = [float(v) for v in _read_column(folder / f"Model{k}_Reward.txt")]
        if not (len(predicted) == len(true) == len(rewards) == n):
            raise DatasetError(f"{folder}: Model{k} files do not all have {n} rows")
        if j == 0:
            labels = true
        elif true != labels:
            raise DatasetError(f"{folder}: Model{k} true labels disagree with Model{api_index[0]}")
        answers[:, j] = predicted
        correct[:, j] = rewards

    missing = [name for name in names if name not in texts_by_name]
    if missing:
        raise DatasetError(f"{folder}: {len(missing)} reviews have no text, e.g. {missing[0]}")
    disagree = sum(texts_by_name[nm][0] != lab for nm, lab in zip(names, labels, strict=True))
    if disagree:
        raise DatasetError(f"{folder}: {disagree} review labels disagree with the API files")
    return Dataset(
        name="imdb",
        ids=np.array([f"imdb-{nm.removesuffix('.txt')}" for nm in names], dtype=object),
        texts=np.array([texts_by_name[nm][1] for nm in names], dtype=object),
        labels=np.array(labels, dtype=object),
        arms=arms,
        answers=answers,
        correct=correct,
        cost_usd=np.tile(price_usd, (n, 1)),
        label_set=LABELS,
        source_split=np.full(n, "", dtype=object),
    )
