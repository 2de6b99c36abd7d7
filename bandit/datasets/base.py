"""The one form every recorded data set is imported into, and where the files are found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandit.errors import DataNotFoundError, DatasetError

DATA_DIR_ENV = "METALLM_DATA_DIR"
DATA_SOURCES = (
    "imdb-apis/ from FrugalML (github.com/lchen001/FrugalML, dataset/mlserviceperformance_IMDB) "
    "with the aclImdb test texts; overruling/ from FrugalGPT as republished in "
    "superyue72/OptLLM; routerbench/ from RouterBench as republished in shuhao02/RouterDC"
)


@dataclass(frozen=True)
class Dataset:
    """Recorded outcomes of several real models on the same queries.

    Row i is one query; column j is one arm (``arms[j]``).

    - ``ids``: shape (n,), client-unique query ids.
    - ``texts``: shape (n,), what the router embeds (the bare query, no few-shot scaffolding).
    - ``labels``: shape (n,), the true label ("" where the source does not give it).
    - ``answers``: shape (n, n_arms), object, the raw text each model returned.
    - ``correct``: shape (n, n_arms), float in {0, 1}: 1 where that model was right.
    - ``cost_usd``: shape (n, n_arms), float, USD that call cost.
    - ``label_set``: the labels a parsed answer can take.
    - ``source_split``: shape (n,), "train"/"test" where the publisher fixed a split, else "".
    - ``observed``: shape (n, n_arms), bool, where the outcome is known (None: everywhere).
      An imported file may miss some arms on some rows; ``correct`` and ``cost_usd`` hold
      0 there and nothing may learn from or score those cells.
    - ``logged_prob``: shape (n, n_arms), float, the probability with which a logging
      policy drew the observed arm (an exported service log); None: full information, 1.
    """

    name: str
    ids: np.ndarray
    texts: np.ndarray
    labels: np.ndarray
    arms: tuple[str, ...]
    answers: np.ndarray
    correct: np.ndarray
    cost_usd: np.ndarray
    label_set: tuple[str, ...]
    source_split: np.ndarray
    observed: np.ndarray | None = None
    logged_prob: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, k = len(self.ids), len(self.arms)
        for fname in ("texts", "labels", "source_split"):
            if len(getattr(self, fname)) != n:
                raise DatasetError(
                    f"{self.name}: {fname} has {len(getattr(self, fname))} rows, ids {n}"
                )
        for fname in ("answers", "correct", "cost_usd", "observed", "logged_prob"):
            value = getattr(self, fname)
            if value is not None and value.shape != (n, k):
                raise DatasetError(
                    f"{self.name}: {fname} has shape {value.shape}, expected {(n, k)}"
                )
        if len(set(self.ids.tolist())) != n:
            raise DatasetError(f"{self.name}: query ids are not unique")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def observed_mask(self) -> np.ndarray:
        """shape (n, n_arms), bool: ``observed``, or all True for a complete data set."""
        if self.observed is None:
            return np.ones(self.correct.shape, dtype=bool)
        return self.observed

    def subset(self, idx: np.ndarray) -> Dataset:
        """The rows ``idx`` (shape (m,), int) as a data set of their own."""
        return Dataset(
            name=self.name,
            ids=self.ids[idx],
            texts=self.texts[idx],
            labels=self.labels[idx],
            arms=self.arms,
            answers=self.answers[idx],
            correct=self.correct[idx],
            cost_usd=self.cost_usd[idx],
            label_set=self.label_set,
            source_split=self.source_split[idx],
            observed=None if self.observed is None else self.observed[idx],
            logged_prob=None if self.logged_prob is None else self.logged_prob[idx],
        )


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the recorded data sets: ``data_dir`` when given (the caller reads
    ``$METALLM_DATA_DIR`` at its edge), else ``../shared/data`` from the working directory or
    beside this checkout.
    """
    if data_dir:
        candidates = [Path(data_dir)]
    else:
        candidates = [
            Path.cwd().parent / "shared" / "data",
            Path(__file__).resolve().parents[3] / "shared" / "data",
        ]
    for path in candidates:
        if path.is_dir():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise DataNotFoundError(
        f"recorded data sets not found (looked in: {looked}). They live in the project's "
        f"shared folder, ../shared/data beside the checkout; pass --data-dir or set "
        f"{DATA_DIR_ENV} to where they are. Sources: {DATA_SOURCES}."
    )


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} is missing. The recorded data sets come from the project's shared folder "
            f"(../shared/data; set {DATA_DIR_ENV} or --data-dir). Sources: {DATA_SOURCES}."
        )
    return path
