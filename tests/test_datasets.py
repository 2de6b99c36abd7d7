"""Importers on the real recorded files in ../shared/data."""

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from bandit.datasets import load_dataset, make_split
from bandit.datasets.routerbench import final_question, parse_response
from bandit.errors import ConfigError, DataNotFoundError


def test_imdb_rows_labels_and_texts_agree_with_the_source(data_dir: Path) -> None:
    ds = load_dataset("imdb", data_dir)
    assert len(ds) == 25_000 and ds.arms == ("Google", "Baidu", "Amazon", "GitHub(Vader)")
    with gzip.open(data_dir / "imdb-apis/aclImdb_test_texts.tsv.gz", "rt", encoding="utf-8") as f:
        source = {
            row[0]: row[1]
            for row in (line.split("\t", 2) for line in f.read().split("\n")[1:] if line)
        }
    for i in (0, 123, 24_999):
        name = ds.ids[i].removeprefix("imdb-") + ".txt"
        assert ds.labels[i] == {"pos": "positive", "neg": "negative"}[source[name]]
    # the README's per-API accuracy: Google 86.45 %, Vader 69.31 %
    assert ds.correct[:, 0].mean() == pytest.approx(0.8645, abs=5e-5)
    assert ds.correct[:, 3].mean() == pytest.approx(0.6931, abs=5e-5)
    assert ds.cost_usd[0, 0] == pytest.approx(2.5 / 10_000)
    assert make_split(ds).sizes() == {"train": 10_000, "val": 2_000, "test": 13_000}


def test_overruling_uses_the_bare_query_and_recorded_outcomes(data_dir: Path) -> None:
    ds = load_dataset("overruling", data_dir)
    assert len(ds) == 2_160 and len(ds.arms) == 12
    with (data_dir / "overruling/overruling.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(ds.labels) == [r["ref_answer"] for r in rows]
    assert ds.texts[0] == rows[0]["content"] and "Answer:" not in ds.texts[0]
    j = ds.arms.index("gpt-4")
    assert ds.correct[:, j].mean() == pytest.approx(0.9505, abs=5e-5)
    assert ds.cost_usd[:, j].mean() * 10_000 == pytest.approx(89.47, abs=0.01)
    # recorded correctness agrees with answer == reference
    agree = ds.answers[:, j] == ds.labels
    assert (agree == (ds.correct[:, j] == 1)).mean() > 0.99
    assert make_split(ds).sizes() == {"train": 1296, "val": 432, "test": 432}


def test_arc_takes_the_final_question_and_keeps_the_given_test_file(data_dir: Path) -> None:
    ds = load_dataset("arc", data_dir)
    assert (ds.source_split == "train").sum() == 1_039 and (ds.source_split == "test").sum() == 445
    split = make_split(ds)
    assert split.sizes() == {"train": 831, "val": 208, "test": 445}
    assert set(split.test) == set(np.flatnonzero(ds.source_split == "test"))
    assert all("Print only" not in t and "\nA) " in t for t in ds.texts)
    j = ds.arms.index("gpt-4-1106-preview")
    test = ds.source_split == "test"
    assert ds.correct[test, j].mean() == pytest.approx(0.9438, abs=5e-5)
    # where gpt-4 was right, its answer is the derived true label (unless the models marked
    # right disagree, which leaves the label unknown: a handful of rows)
    assert (ds.labels == "").mean() < 0.03
    right = (ds.correct[:, j] == 1) & (ds.labels != "")
    assert (ds.answers[right, j] == ds.labels[right]).all()


def test_arc_prompt_and_response_parsing() -> None:
    prompt = repr(
        [
            "Q1?\nA) x\nB) y\nPrint only a single choice.\nAnswer:\nA\n\nQ2?\nA) u\nB) v\nPrint only a single choice  from ...\nAnswer:"
        ]
    )
    assert final_question(prompt) == "Q2?\nA) u\nB) v"
    assert parse_response("['C\\n']") == "C"


def test_unknown_data_set_and_missing_folder_are_clear(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown data set .mnist.; choose one of: overruling, imdb, arc"
    ):
        load_dataset("mnist")
    with pytest.raises(DataNotFoundError, match="METALLM_DATA_DIR"):
        load_dataset("overruling", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match=r"overruling\.csv is missing"):
        load_dataset("overruling", tmp_path)
