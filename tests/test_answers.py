from pathlib import Path

import numpy as np
import pytest

from bandit.datasets import load_dataset
from workers.service.answers import parse_label


@pytest.mark.parametrize(
    ("answer", "labels", "expected"),
    [
        ("A", "ABCD", "A"),
        ("['B\\n']", "ABCD", "B"),
        ("C) palms covered with oil", "ABCD", "C"),
        ("I do not know", "ABCD", None),
        ("Unfortunately I cannot", "ABCD", None),
        (" yes.", ("Yes", "No"), "Yes"),
        ("The review is NEGATIVE overall", ("positive", "negative"), "negative"),
        ("it is positive or negative", ("positive", "negative"), None),
        ("", ("Yes", "No"), None),
    ],
)
def test_parse_label(answer: str, labels: tuple[str, ...], expected: str | None) -> None:
    assert parse_label(answer, tuple(labels)) == expected


@pytest.mark.parametrize("name", ["overruling", "arc"])
def test_parsed_answers_agree_with_recorded_correctness(name: str, data_dir: Path) -> None:
    ds = load_dataset(name, data_dir)
    known = ds.labels != ""
    parsed = np.array(
        [
            [parse_label(a, ds.label_set) == lab for a in row]
            for row, lab in zip(ds.answers[known], ds.labels[known], strict=True)
        ]
    )
    assert (parsed == (ds.correct[known] == 1)).mean() > 0.99
