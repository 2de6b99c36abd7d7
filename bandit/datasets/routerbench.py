"""ARC-Challenge, 1,039 + 445 queries × 11 LLMs (RouterBench zero-shot slice via RouterDC)."""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import numpy as np

from bandit.datasets.base import Dataset, require_file
from bandit.errors import DatasetError

FILES = {
    "train": "routerbench/arc_challenge_train.csv",
    "test": "routerbench/arc_challenge_test.csv",
}
ARMS = (
    "gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-instant-v1", "claude-v1", "claude-v2",
    "meta/llama-2-70b-chat", "mistralai/mixtral-8x7b-chat", "mistralai/mistral-7b-chat",
    "zero-one-ai/Yi-34B-Chat", "WizardLM/WizardLM-13B-V1.2", "meta/code-llama-instruct-34b-chat",
)  # fmt: skip
_INSTRUCTION = re.compile(r"\nPrint only a single choice.*$", re.DOTALL)
_OPTION = re.compile(r"^([A-E])\) ", re.MULTILINE)


def final_question(prompt: str) -> str:
    """The last question of a 5-shot ARC prompt, with its options, without the instruction.

    ``prompt`` is the Python list literal RouterBench stores (one string inside).
    """
    try:
        parts = ast.literal_eval(prompt)
        text = parts[-1] if isinstance(parts, list) else str(parts)
    except (ValueError, SyntaxError):
        text = prompt
    last = text.rstrip().split("\n\n")[-1]
    return _INSTRUCTION.sub("", last).strip()


def parse_response(raw: str) -> str:
    """RouterBench stores responses as a list literal such as "['A\\n']"; return 'A'."""
    try:
        value = ast.literal_eval(raw)
        text = value[0] if isinstance(value, list) and value else str(value)
    except (ValueError, SyntaxError):
        text = raw
    return str(text).strip()


def load_arc(data_dir: Path) -> Dataset:
    csv.field_size_limit(1 << 30)
    rows: list[dict[str, str]] = []
    split: list[str] = []
    for part, rel in FILES.items():
        with require_file(data_dir / rel).open(newline="", encoding="utf-8") as f:
            part_rows = list(csv.DictReader(f))
        rows += part_rows
        split += [part] * len(part_rows)
    missing = [
        c for a in ARMS for c in (a, f"{a}|model_response", f"{a}|total_cost") if c not in rows[0]
    ]
    if missing:
        raise DatasetError(f"routerbench: missing columns {missing}")
    texts = [final_question(r["prompt"]) for r in rows]
    answers = np.array(
        [[parse_response(r[f"{a}|model_response"]) for a in ARMS] for r in rows], dtype=object
    )
    # A few correctness cells are empty: the source's README says to treat them as wrong.
    correct = np.array([[float(r[a]) if r[a].strip() else 0.0 for a in ARMS] for r in rows])
    labels = []
    for i in range(len(rows)):
        # The source does not store the answer key; a model marked right reveals it.
        right = {
            answers[i, j].rstrip(")").rstrip(":") for j in range(len(ARMS)) if correct[i, j] == 1
        }
        labels.append(right.pop() if len(right) == 1 else "")
    letters = sorted({m for t in texts for m in _OPTION.findall(t)})
    return Dataset(
        name="arc",
        # sample_id repeats within and across the two files, so ids are file and row number.
        ids=np.array(
            [f"arc-{part}-{i}" for part in FILES for i in range(split.count(part))], dtype=object
        ),
        texts=np.array(texts, dtype=object),
        labels=np.array(labels, dtype=object),
        arms=ARMS,
        answers=answers,
        correct=correct,
        cost_usd=np.array([[float(r[f"{a}|total_cost"] or 0) for a in ARMS] for r in rows]),
        label_set=tuple(letters),
        source_split=np.array(split, dtype=object),
    )
