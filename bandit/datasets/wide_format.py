"""The wide format: one CSV row per query, the shape RouterBench publishes.

Columns: ``text`` (or the prompt column named by ``prompt_column``), optional ``id`` (else
the row number), ``label``, ``split``; per model ``<model>`` (its score in [0, 1]; an empty
cell: that model's outcome is missing for this query), ``<model>|total_cost`` (USD ≥ 0)
and optional ``<model>|model_response``. A model is any ``<model>`` with a
``<model>|total_cost`` column; every other column (``sample_id``, ``eval_name``,
``oracle_model_to_route_to``, ...) is ignored and named in the summary.
"""

from __future__ import annotations

from collections.abc import Iterator

from bandit.datasets.imported import Table
from bandit.errors import DatasetError

COST = "|total_cost"
RESPONSE = "|model_response"


def read_wide(
    header: list[str], rows: Iterator[dict[str, str]], table: Table, prompt_column: str | None
) -> list[str]:
    """Wide CSV rows into ``table``; the ignored column names."""
    name = table.where.name
    text_col = prompt_column or "text"
    if text_col not in header:
        hint = "" if prompt_column else "; name the prompt column with --prompt-column"
        raise DatasetError(
            f"{name}: no column {text_col!r}{hint} (columns: {', '.join(header[:12])}...)"
        )
    models = [c.removesuffix(COST) for c in header if c.endswith(COST)]
    no_score = [m for m in models if m not in header]
    if no_score:
        raise DatasetError(
            f"{name}: columns {[m + COST for m in no_score]} have no score column {no_score}"
        )
    used = {text_col, "id", "label", "split"}
    used.update(c for m in models for c in (m, m + COST, m + RESPONSE))
    ignored = [c for c in header if c not in used]
    w = table.where
    arms = [table.arm(m) for m in models]
    for number, row in enumerate(rows, start=1):
        i = table.query(
            w.text("id", row["id"]) if "id" in row else str(number),
            w.text(text_col, row[text_col]),
            w.text("label", row.get("label"), required=False),
            w.split(row.get("split")),
        )
        for m, j in zip(models, arms, strict=True):
            score = row[m].strip()
            if not score:
                continue  # missing: this model's outcome is not recorded for this query
            table.cell(
                i,
                j,
                w.number(m, score, 0.0, 1.0),
                w.number(m + COST, row[m + COST].strip(), 0.0, float("inf")),
                row.get(m + RESPONSE, ""),
                None,
            )
        table.rows += 1
    return ignored
