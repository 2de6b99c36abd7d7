"""The long format: one row per (query, arm), JSON lines or CSV.

Required: ``id``, ``text`` (the same on every row of one id), ``arm``, exactly one of ``score``
(in [0, 1]) or ``correct`` (0/1), ``cost_usd`` (≥ 0). Optional: ``answer``, ``label``,
``split`` (train/val/test). An exported service log adds ``prob`` (in (0, 1], the logging
policy's probability of this row's arm: ``Dataset.logged_prob``) and ``pmf``, ``p``,
``model_version``, ``time``, ``reward`` (read past: the warm start needs only ``prob``).
Other columns are ignored and named in the summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bandit.datasets.imported import Table, Where
from bandit.errors import DatasetError

REQUIRED = ("id", "text", "arm", "cost_usd")
OPTIONAL = ("score", "correct", "answer", "label", "split", "prob")
LOG_FIELDS = ("pmf", "p", "model_version", "time", "reward")
KNOWN = frozenset(REQUIRED + OPTIONAL + LOG_FIELDS)


def _add_row(table: Table, row: dict[str, Any]) -> None:
    w = table.where
    for fname in REQUIRED:
        if fname not in row:
            raise w.error(f"field {fname!r} is missing (the long format needs {', '.join(REQUIRED)} and score or correct)")  # fmt: skip
    score, correct = row.get("score"), row.get("correct")
    has_score, has_correct = score not in (None, ""), correct not in (None, "")
    if has_score == has_correct:
        raise w.error("give exactly one of the fields 'score' (in [0, 1]) or 'correct' (0/1)")
    if has_score:
        a = w.number("score", score, 0.0, 1.0)
    else:
        a = w.number("correct", correct, 0.0, 1.0)
        if a not in (0.0, 1.0):
            raise w.error(f"field 'correct' = {correct!r} is not 0 or 1")
    cost = w.number("cost_usd", row["cost_usd"], 0.0, float("inf"))
    prob_value = row.get("prob")
    prob = None if prob_value in (None, "") else w.number("prob", prob_value, 0.0, 1.0, True)
    i = table.query(
        w.text("id", row["id"]),
        w.text("text", row["text"]),
        w.text("label", row.get("label"), required=False),
        w.split(row.get("split")),
    )
    j = table.arm(w.text("arm", row["arm"]))
    pmf = row.get("pmf")  # a logged row's pmf names every arm the logging policy could draw
    for name in (json.loads(pmf) if isinstance(pmf, str) and pmf else pmf) or ():
        table.arm(w.text("pmf", name))
    table.cell(i, j, a, cost, w.text("answer", row.get("answer"), required=False), prob)
    table.rows += 1


def _ignored(columns: Iterable[str]) -> list[str]:
    return sorted({c for c in columns if c not in KNOWN})


def read_long(path: Path, table: Table) -> list[str]:
    """JSON lines into ``table``; the ignored field names."""
    w: Where = table.where
    extra: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            w.line = number
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise w.error(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
            if not isinstance(row, dict):
                raise w.error("not a JSON object")
            extra.update(row)
            _add_row(table, row)
    if not table.rows:
        raise DatasetError(f"{w.name}: no records")
    return _ignored(extra)


def read_long_csv(header: list[str], rows: Iterator[dict[str, str]], table: Table) -> list[str]:
    """Long-format CSV rows into ``table``; the ignored column names."""
    missing = [c for c in REQUIRED if c not in header]
    if missing or not {"score", "correct"} & set(header):
        need = missing + ([] if {"score", "correct"} & set(header) else ["score or correct"])
        raise DatasetError(
            f"{table.where.name}: no column {', '.join(repr(c) for c in need)}; the long format "
            f"needs {', '.join(REQUIRED)} and score or correct"
        )
    for row in rows:
        _add_row(table, row)
    return _ignored(header)
