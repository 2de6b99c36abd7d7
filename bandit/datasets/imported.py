"""A user's own recorded outcomes, in the long or the wide format, into a Dataset.

- **long** (JSON lines ``.jsonl``/``.json`` or ``.csv`` with an ``arm`` column): one row per
  (query, arm); see ``long_format``.
- **wide** (``.csv`` with ``<model>|total_cost`` columns, the RouterBench shape): one row per
  query, a score column per model; see ``wide_format``.

Both fill a ``Table`` cell by cell; a (query, arm) cell the file does not give is left
unobserved (``Dataset.observed`` False). Every error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bandit.datasets.base import Dataset
from bandit.errors import DataNotFoundError, DatasetError

SPLITS = ("train", "val", "test")
LONG_SUFFIXES = (".jsonl", ".json")


@dataclass
class ImportSummary:
    """What ``read_records`` read, for the CLI to print."""

    path: Path
    format: str
    rows: int
    queries: int
    arms: tuple[str, ...]
    missing_cells: int
    incomplete_queries: int
    logged_rows: int
    empty_queries: int
    ignored_columns: tuple[str, ...]
    split_source: str

    def lines(self) -> list[str]:
        out = [
            f"{self.path.name}: {self.format} format, {self.rows} rows, {self.queries} queries, "
            f"{len(self.arms)} arms: {', '.join(self.arms)}",
            f"  missing cells: {self.missing_cells} (queries missing some arm: "
            f"{self.incomplete_queries}); logged rows (with prob): {self.logged_rows}; "
            f"split: {self.split_source}",
        ]
        if self.incomplete_queries:
            out.append(
                f"  the {self.incomplete_queries} queries missing some arm are training rows "
                "only (only their recorded arms are learned); validation and test hold "
                "complete queries"
            )
        if self.empty_queries:
            out.append(f"  dropped {self.empty_queries} queries with no recorded outcome")
        if self.ignored_columns:
            out.append(f"  ignored columns: {', '.join(map(repr, self.ignored_columns))}")
        return out


class Where:
    """The file and line a value came from, to name them in errors."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.line = 0

    def error(self, message: str) -> DatasetError:
        return DatasetError(f"{self.name} line {self.line}: {message}")

    def number(self, fname: str, value: Any, lo: float, hi: float, open_lo: bool = False) -> float:
        """``value`` as a float in [lo, hi] ((lo, hi] with ``open_lo``), else the error."""
        rng = f"in {'(' if open_lo else '['}{lo:g}, {hi:g}]" if hi < math.inf else f"≥ {lo:g}"
        bad = self.error(f"field {fname!r} = {value!r} is not a number {rng}")
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float | str):
            raise bad
        try:
            x = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(x) or x < lo or x > hi or (open_lo and x == lo):
            raise bad
        return x

    def text(self, fname: str, value: Any, required: bool = True) -> str:
        if value is None or value == "":
            if required:
                raise self.error(f"field {fname!r} is empty")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(f"field {fname!r} = {value!r} is not a string")
        return str(value)

    def split(self, value: Any) -> str:
        got = self.text("split", value, required=False)
        if got and got not in SPLITS:
            raise self.error(f"field 'split' = {got!r} is not one of {', '.join(SPLITS)}")
        return got


@dataclass
class Table:
    """Queries × arms filled cell by cell, in the order the file gives them."""

    name: str
    where: Where
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)
    cells: dict[tuple[int, int], tuple[float, float, str, float | None]] = field(
        default_factory=dict
    )
    rows: int = 0
    empty_queries: int = 0
    _query: dict[str, int] = field(default_factory=dict)
    _arm: dict[str, int] = field(default_factory=dict)

    def query(self, qid: str, text: str, label: str, split: str) -> int:
        """The row of query ``qid``. A repeated id must repeat its text; its label and split
        may be given on any of its rows, but never two different ones."""
        i = self._query.get(qid)
        if i is None:
            i = self._query[qid] = len(self.ids)
            self.ids.append(qid)
            self.texts.append(text)
            self.labels.append(label)
            self.splits.append(split)
            return i
        for fname, values, got in (
            ("text", self.texts, text),
            ("label", self.labels, label),
            ("split", self.splits, split),
        ):
            have = values[i]
            if fname != "text" and (not got or not have):
                values[i] = have or got
            elif have != got:
                raise self.where.error(
                    f"field {fname!r} of id {qid!r} differs from its first row's ({got!r} vs {have!r})"
                )
        return i

    def arm(self, name: str) -> int:
        j = self._arm.get(name)
        if j is None:
            j = self._arm[name] = len(self.arms)
            self.arms.append(name)
        return j

    def cell(
        self, i: int, j: int, score: float, cost: float, answer: str, prob: float | None
    ) -> None:
        if (i, j) in self.cells:
            raise self.where.error(f"id {self.ids[i]!r} has arm {self.arms[j]!r} twice")
        self.cells[(i, j)] = (score, cost, answer, prob)

    def dataset(self) -> Dataset:
        """The data set of the queries with at least one recorded outcome."""
        kept = sorted({i for i, _ in self.cells})
        self.empty_queries = len(self.ids) - len(kept)
        if len(kept) < len(self.ids):
            for fname in ("ids", "texts", "labels", "splits"):
                values = getattr(self, fname)
                setattr(self, fname, [values[i] for i in kept])
            new = {old: i for i, old in enumerate(kept)}
            self.cells = {(new[i], j): c for (i, j), c in self.cells.items()}
        n, k = len(self.ids), len(self.arms)
        if n == 0 or k == 0:
            raise DatasetError(f"{self.where.name}: no records")
        answers = np.full((n, k), "", dtype=object)
        correct, cost = np.zeros((n, k)), np.zeros((n, k))
        observed = np.zeros((n, k), dtype=bool)
        prob = np.ones((n, k))
        logged = False
        for (i, j), (a, c, ans, pr) in self.cells.items():
            correct[i, j], cost[i, j], answers[i, j], observed[i, j] = a, c, ans, True
            if pr is not None:
                prob[i, j], logged = pr, True
        splits = np.array(self.splits, dtype=object)
        given = splits != ""
        if given.any() and not given.all():
            raise DatasetError(
                f"{self.where.name}: {int((~given).sum())} of {n} queries have no split "
                f"(e.g. id {self.ids[int(np.argmin(given))]!r}); give every query one or none"
            )
        return Dataset(
            name=self.name,
            ids=np.array(self.ids, dtype=object),
            texts=np.array(self.texts, dtype=object),
            labels=np.array(self.labels, dtype=object),
            arms=tuple(self.arms),
            answers=answers,
            correct=correct,
            cost_usd=cost,
            label_set=tuple(sorted({lab for lab in self.labels if lab})),
            source_split=splits,
            # None when complete / full information: the bundled sets' code path exactly.
            observed=None if observed.all() else observed,
            logged_prob=prob if logged else None,
        )


def csv_rows(path: Path, where: Where) -> tuple[list[str], Iterator[dict[str, str]]]:
    """The header and the rows of a CSV file; ``where.line`` follows each row's first line."""
    csv.field_size_limit(1 << 30)
    f = path.open(newline="", encoding="utf-8")
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        f.close()
        raise DatasetError(f"{path.name}: the file is empty")

    def rows() -> Iterator[dict[str, str]]:
        with f:
            start = reader.line_num + 1
            for values in reader:
                where.line = start
                start = reader.line_num + 1
                if not values:
                    continue
                if len(values) != len(header):
                    raise where.error(f"{len(values)} fields, the header has {len(header)}")
                yield dict(zip(header, values, strict=True))

    return header, rows()


def read_records(
    path: str | Path, prompt_column: str | None = None
) -> tuple[Dataset, ImportSummary]:
    """Read ``path`` in the long or wide format (see the module docstring) and say what was read.

    ``prompt_column``: the wide format's query text column when it is not ``text``."""
    from bandit.datasets.long_format import read_long, read_long_csv
    from bandit.datasets.wide_format import read_wide

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"data file {path} does not exist")
    where = Where(path)
    table = Table(path.stem, where)
    suffix = path.suffix.lower()
    if suffix in LONG_SUFFIXES:
        fmt, ignored = "long", read_long(path, table)
    elif suffix == ".csv":
        header, rows = csv_rows(path, where)
        if "arm" in header:
            fmt, ignored = "long", read_long_csv(header, rows, table)
        elif any(c.endswith("|total_cost") for c in header):
            fmt, ignored = "wide", read_wide(header, rows, table, prompt_column)
        else:
            raise DatasetError(
                f"{path.name}: neither format: a long file has an 'arm' column, a wide file a "
                f"'<model>|total_cost' column per model (columns: {', '.join(header[:12])})"
            )
    else:
        raise DatasetError(
            f"{path.name}: unknown file type {path.suffix!r}; use .jsonl/.json (long) or .csv "
            "(long or wide)"
        )
    if fmt == "long" and prompt_column:
        raise DatasetError(
            f"{path.name}: a prompt column is for the wide format; a long file's query is its "
            "'text' field"
        )
    ds = table.dataset()
    obs = ds.observed_mask
    given = [part for part in SPLITS if (ds.source_split == part).any()]
    summary = ImportSummary(
        path=path,
        format=fmt,
        rows=table.rows,
        queries=len(ds),
        arms=ds.arms,
        missing_cells=int((~obs).sum()),
        incomplete_queries=int((~obs.all(1)).sum()),
        logged_rows=sum(1 for c in table.cells.values() if c[3] is not None),
        empty_queries=table.empty_queries,
        ignored_columns=tuple(ignored),
        split_source=f"the file's split column ({'/'.join(given)})" if given else "seeded",
    )
    return ds, summary


def load_records(path: str | Path, prompt_column: str | None = None) -> Dataset:
    """The Dataset of ``read_records`` alone."""
    return read_records(path, prompt_column)[0]
