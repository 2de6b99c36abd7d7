"""Legal overruling (Yes/No), 2,160 queries × 12 real LLM APIs (FrugalGPT via OptLLM)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bandit.datasets.base import Dataset, require_file
from bandit.errors import DatasetError

FILE = "overruling/overruling.csv"
LABELS = ("Yes", "No")
ARMS = (
    "gpt-4", "text-davinci-002", "gpt-3.5-turbo", "xlarge", "j1-jumbo", "text-curie-001",
    "gptneox_20B", "j1-large", "j1-grande", "fairseq_gpt_13B", "gptj_6B", "medium",
)  # fmt: skip


def load_overruling(data_dir: Path) -> Dataset:
    csv.field_size_limit(1 << 30)
    with require_file(data_dir / FILE).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for a in ARMS for c in (a, f"{a}_answer", f"{a}_cost") if c not in rows[0]]
    if missing or "content" not in rows[0]:
        raise DatasetError(f"{FILE}: missing columns {missing or ['content']}")
    n = len(rows)
    return Dataset(
        name="overruling",
        ids=np.array([f"overruling-{r['']}" for r in rows], dtype=object),
        # `query` is the 5-shot prompt; its shared prefix would make every embedding alike.
        texts=np.array([r["content"] for r in rows], dtype=object),
        labels=np.array([r["ref_answer"].strip() for r in rows], dtype=object),
        arms=ARMS,
        answers=np.array([[r[f"{a}_answer"] for a in ARMS] for r in rows], dtype=object),
        correct=np.array([[float(r[a]) for a in ARMS] for r in rows]),
        cost_usd=np.array([[float(r[f"{a}_cost"]) for a in ARMS] for r in rows]),
        label_set=LABELS,
        source_split=np.full(n, "", dtype=object),
    )
