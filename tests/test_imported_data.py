"""A user's own recorded outcomes: the long and wide formats, their errors, splits, arms,
missing cells, and `metallm evaluate --data` against `--dataset` on overruling."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit.config import builtin_config
from bandit.data_config import check_arms, config_from_data
from bandit.datasets import make_split
from bandit.datasets.imported import load_records, read_records
from bandit.errors import ConfigError, DatasetError
from bandit.policy import Policy, PolicyConfig
from bandit.training import TrainingData, train_bandit, train_full_information
from workers.cli import main

ROOT = Path(__file__).resolve().parents[1]

LONG = [
    {"id": "q1", "text": "Is the sky blue?", "arm": "big", "correct": 1, "cost_usd": 0.002,
     "answer": "Yes", "label": "Yes", "note": "x"},
    {"id": "q1", "text": "Is the sky blue?", "arm": "small", "score": 0.25, "cost_usd": 0.0001,
     "label": "Yes", "prob": 0.4, "pmf": {"big": 0.6, "small": 0.4}},
    {"id": "q2", "text": "Is grass red?", "arm": "big", "correct": 0, "cost_usd": 0.003,
     "label": "No", "model_version": 7},
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_long_jsonl_missing_cells_logged_prob_and_extra_fields(tmp_path: Path) -> None:
    ds, summary = read_records(write_jsonl(tmp_path / "mine.jsonl", LONG))
    assert ds.name == "mine" and list(ds.ids) == ["q1", "q2"] and ds.arms == ("big", "small")
    assert ds.correct.tolist() == [[1.0, 0.25], [0.0, 0.0]]
    assert ds.cost_usd.tolist() == [[0.002, 0.0001], [0.003, 0.0]]
    assert ds.observed is not None and ds.observed.tolist() == [[True, True], [True, False]]
    assert ds.logged_prob is not None and ds.logged_prob.tolist() == [[1.0, 0.4], [1.0, 1.0]]
    assert ds.answers[0, 0] == "Yes" and list(ds.labels) == ["Yes", "No"]
    assert ds.label_set == ("No", "Yes")
    assert (summary.rows, summary.queries, summary.missing_cells) == (3, 2, 1)
    assert (summary.incomplete_queries, summary.logged_rows) == (1, 1)
    assert summary.ignored_columns == ("note",)  # pmf and model_version are known log fields
    with pytest.raises(DatasetError, match="a prompt column is for the wide format"):
        read_records(tmp_path / "mine.jsonl", prompt_column="prompt")
    text = "\n".join(summary.lines())
    assert "missing cells: 1" in text and "ignored columns: 'note'" in text


def test_a_complete_file_without_prob_is_full_information(tmp_path: Path) -> None:
    rows = [dict(r, id="q1", text="t") for r in LONG[:1]]
    rows += [{"id": "q1", "text": "t", "arm": "small", "correct": 0, "cost_usd": 0.1}]
    ds = load_records(write_jsonl(tmp_path / "full.jsonl", rows))
    assert ds.observed is None and ds.logged_prob is None  # the bundled sets' code path


HEADER = "id,text,arm,correct,score,cost_usd,label\n"


@pytest.mark.parametrize(
    "row, message",
    [
        ("q2,b,big,1,,abc,No", "data.csv line 3: field 'cost_usd' = 'abc' is not a number ≥ 0"),
        ("q2,b,big,1,,-1,No", "data.csv line 3: field 'cost_usd' = '-1' is not a number ≥ 0"),
        (
            "q2,b,big,,1.5,0.1,No",
            "data.csv line 3: field 'score' = '1.5' is not a number in [0, 1]",
        ),
        ("q2,b,big,0.5,,0.1,No", "data.csv line 3: field 'correct' = '0.5' is not 0 or 1"),
        ("q2,b,big,1,0.5,0.1,No", "data.csv line 3: give exactly one of the fields 'score'"),
        ("q2,b,big,,,0.1,No", "data.csv line 3: give exactly one of the fields 'score'"),
        (",b,big,1,,0.1,No", "data.csv line 3: field 'id' is empty"),
        ("q1,other text,small,1,,0.1,Yes", "data.csv line 3: field 'text' of id 'q1' differs"),
        ("q1,a,big,1,,0.1,Yes", "data.csv line 3: id 'q1' has arm 'big' twice"),
        ("q2,b,big,1,,0.1", "data.csv line 3: 6 fields, the header has 7"),
    ],
)
def test_long_csv_bad_rows_name_the_line_and_field(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(HEADER + "q1,a,big,1,,0.2,Yes\n" + row + "\n")
    with pytest.raises(DatasetError) as err:
        load_records(path)
    assert str(err.value).startswith(message), str(err.value)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "log.jsonl", [LONG[0], {**LONG[2], "prob": 0}])
    with pytest.raises(DatasetError, match=r"log.jsonl line 2: field 'prob' = 0 is not a number in \(0, 1\]"):  # fmt: skip
        load_records(path)
    path.write_text(json.dumps(LONG[0]) + "\n\n{not json\n")
    with pytest.raises(DatasetError, match=r"log\.jsonl line 3: not valid JSON"):
        load_records(path)
    path.write_text(json.dumps({k: v for k, v in LONG[0].items() if k != "arm"}) + "\n")
    with pytest.raises(DatasetError, match=r"log\.jsonl line 1: field 'arm' is missing"):
        load_records(path)
    path.write_text(json.dumps({**LONG[0], "split": "dev"}) + "\n")
    with pytest.raises(DatasetError, match="field 'split' = 'dev' is not one of train, val, test"):
        load_records(path)


WIDE = (
    ",sample_id,prompt,eval_name,big,small,big|model_response,small|model_response,"
    "big|total_cost,small|total_cost,oracle_model_to_route_to\n"
    '0,s1,"first\nquery, two lines",arc,1.0,0.0,A,B,0.002,0.0001,big\n'
    "1,s2,second query,arc,0.0,,C,,0.003,,small\n"
    "2,s3,third query,arc,1.0,1.0,D,D,0.001,0.0002,small\n"
)


def test_wide_csv_routerbench_shape_with_an_empty_score_cell(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    path.write_text(WIDE)
    with pytest.raises(DatasetError, match="no column 'text'; name the prompt column with --prompt-column"):  # fmt: skip
        load_records(path)
    ds, summary = read_records(path, prompt_column="prompt")
    assert ds.arms == ("big", "small") and list(ds.ids) == ["1", "2", "3"]
    assert ds.texts[0] == "first\nquery, two lines"
    assert ds.correct.tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert ds.observed is not None and ds.observed[1].tolist() == [True, False]
    assert ds.answers[2].tolist() == ["D", "D"] and ds.cost_usd[2].tolist() == [0.001, 0.0002]
    assert summary.format == "wide" and summary.missing_cells == 1
    assert summary.ignored_columns == ("", "sample_id", "eval_name", "oracle_model_to_route_to")
    # a query with no recorded outcome at all is dropped, and said
    path.write_text(WIDE + "3,s4,fourth query,arc,,,,,,,small\n")
    ds, summary = read_records(path, prompt_column="prompt")
    assert len(ds) == 3 and summary.empty_queries == 1 and summary.rows == 4
    assert "dropped 1 queries with no recorded outcome" in "\n".join(summary.lines())


def test_wide_csv_bad_cell_names_its_line_after_a_multiline_text(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    path.write_text(WIDE.replace("1,s2,second query,arc,0.0,", "1,s2,second query,arc,yes,"))
    # the first data row spans lines 2-3, so the second starts on line 4
    with pytest.raises(DatasetError, match=r"bench\.csv line 4: field 'big' = 'yes' is not a number in"):  # fmt: skip
        load_records(path, prompt_column="prompt")
    path.write_text(WIDE.replace("0.003,,small", ",,small"))
    with pytest.raises(DatasetError, match=r"line 4: field 'big\|total_cost' = '' is not a number"):
        load_records(path, prompt_column="prompt")
    path.write_text("text,big|total_cost\nq,0.1\n")
    with pytest.raises(DatasetError, match=r"columns \['big\|total_cost'\] have no score column"):
        load_records(path)


def _split_file(tmp_path: Path, parts: list[str], missing: int | None = None) -> Path:
    rows = []
    for i, part in enumerate(parts):
        for arm, cost in (("big", 0.002), ("small", 0.0001)):
            if arm == "small" and i == missing:
                continue
            rows.append({"id": f"q{i}", "text": f"query {i}", "arm": arm, "correct": i % 2,
                         "cost_usd": cost, "split": part})  # fmt: skip
    return write_jsonl(tmp_path / "split.jsonl", rows)


def test_a_split_column_is_used_as_given(tmp_path: Path) -> None:
    parts = ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    ds = load_records(_split_file(tmp_path, parts))
    split = make_split(ds, seed=5)
    assert split.train.tolist() == [0, 1, 2, 3, 4, 5]
    assert split.val.tolist() == [6, 7] and split.test.tolist() == [8, 9, 10]


def test_train_and_test_only_carve_validation_from_train_as_for_arc(tmp_path: Path) -> None:
    ds = load_records(_split_file(tmp_path, ["train"] * 10 + ["test"] * 4))
    split = make_split(ds, seed=0)
    assert split.sizes() == {"train": 8, "val": 2, "test": 4}  # 80 % / 20 % of train
    assert sorted(np.concatenate([split.train, split.val]).tolist()) == list(range(10))
    assert split.test.tolist() == [10, 11, 12, 13]


def test_a_split_must_be_given_for_every_query_or_none(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="1 of 3 queries have no split"):
        load_records(_split_file(tmp_path, ["train", "", "test"]))


def test_a_query_missing_an_arm_is_a_training_row_only(tmp_path: Path) -> None:
    parts = ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    ds = load_records(_split_file(tmp_path, parts, missing=9))  # a test row misses 'small'
    split = make_split(ds)
    assert 9 in split.train and 9 not in split.test and split.test.tolist() == [8, 10]
    # a log of live traffic (one arm per query) has nothing to score against
    rows = [{**r, "id": f"q{i}", "text": f"t{i}", "prob": 0.5} for i, r in enumerate(LONG * 4)]
    with pytest.raises(DatasetError, match=r"the val split is empty .* 12 queries miss some arm"):
        make_split(load_records(write_jsonl(tmp_path / "log.jsonl", rows)))


def test_training_learns_only_recorded_cells(tmp_path: Path) -> None:
    ds = load_records(_split_file(tmp_path, ["train"] * 4, missing=2))
    assert ds.observed is not None
    arms, costs = ("big", "small"), np.array([1.0, 0.05])
    lines = [f"shared |q w{i}" for i in range(len(ds))]
    data = TrainingData(lines, ds.correct, np.tile(costs, (len(ds), 1)), ds.cost_usd, ds.observed)
    cfg = PolicyConfig(warm_start_passes=2)
    policy = train_full_information(Policy(cfg, arms, costs, 4), data)
    assert policy.updates == 2 * int(ds.observed.sum()) == 14
    # bandit feedback draws only recorded arms: with 'small' recorded nowhere but on row 0,
    # every other row must spend 'big''s cost
    only_big = np.zeros(ds.observed.shape, bool)
    only_big[:, 0] = True
    data = TrainingData(lines, ds.correct, np.tile(costs, (len(ds), 1)), ds.cost_usd, only_big)
    res = train_bandit(Policy(cfg.replace(epsilon=1.0), arms, costs, 4), data)
    assert res.progressive_cost_per_10k == pytest.approx(0.002 * 10_000)


def test_arms_from_the_data_at_their_mean_recorded_cost(tmp_path: Path) -> None:
    ds = load_records(write_jsonl(tmp_path / "mine.jsonl", LONG))
    cfg = config_from_data(ds)
    assert cfg.arms.names == ("big", "small") and cfg.task.name == "mine"
    assert cfg.task.labels == ("No", "Yes")
    big, small = cfg.arms.arms
    assert (big.provider, big.model_id) == ("replay", "big")
    assert big.fixed_cost_usd == pytest.approx(0.0025)  # mean of 0.002 and 0.003
    assert small.fixed_cost_usd == pytest.approx(0.0001)  # its one recorded cell only


def test_config_arms_must_match_the_data_and_the_mismatch_names_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", LONG)
    ds = load_records(path)
    with pytest.raises(ConfigError) as err:
        check_arms(builtin_config("overruling"), ds, "overruling.toml", "mine.jsonl")
    msg = str(err.value)
    assert "only in overruling.toml: ['fairseq_gpt_13B'," in msg
    assert "only in mine.jsonl: ['big', 'small']" in msg
    check_arms(config_from_data(ds), ds, "cfg", "data")  # the same names pass
    config = ROOT / "bandit" / "configs" / "arc.toml"
    rc = main(["evaluate", "--data", str(path), "--config", str(config),
               "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    err_text = capsys.readouterr().err
    assert rc == 2 and "only in mine.jsonl: ['big', 'small']" in err_text
    assert err_text.splitlines()[-1].startswith("metallm: error: the arms of")


def test_evaluate_needs_one_of_dataset_or_data(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--dataset", "overruling", "--data", "x.csv"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune"])
    assert "one of the arguments --dataset --data is required" in capsys.readouterr().err


def _evaluate(args: list[str], tmp_path: Path, name: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "evaluate", *args, "--limit", "300",
         "--seed", "2", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.parametrize("fmt, suffix", [("wide", "csv")])
def test_evaluate_data_gives_the_figures_of_evaluate_dataset(
    data_dir: Path, tmp_path: Path, fmt: str, suffix: str
) -> None:
    path = tmp_path / f"overruling-{fmt}.{suffix}"
    subprocess.run(
        [sys.executable, "scripts/convert_dataset.py", "--dataset", "overruling", "--format",
         fmt, "--out", str(path), "--data-dir", str(data_dir)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    config = str(ROOT / "bandit" / "configs" / "overruling.toml")
    want_text, want = _evaluate(["--dataset", "overruling", "--data-dir", str(data_dir)], tmp_path, "ds")  # fmt: skip
    got_text, got = _evaluate(["--data", str(path), "--config", config], tmp_path, "file")
    assert got["dataset"] == f"overruling-{fmt}" and want["dataset"] == "overruling"
    assert {**got, "dataset": "overruling"} == want
    # every printed line but the name (first) and where the JSON went (last)
    assert got_text.splitlines()[1:-1] == want_text.splitlines()[1:-1]
    assert got_text.splitlines()[0].startswith(f"metallm evaluate — overruling-{fmt}: train 180,")
    assert got["split_sizes"] == {"train": 180, "val": 60, "test": 60}

    # The same file with gpt-4's outcome blanked on every 10th query: those queries are
    # training rows only, the rest of the report is made as before.
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::10]:
        row["gpt-4"] = row["gpt-4|total_cost"] = ""
    holed = tmp_path / "holed.csv"
    with holed.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _, rep = _evaluate(["--data", str(holed), "--config", config], tmp_path, "holed")
    sizes = rep["split_sizes"]
    assert sum(sizes.values()) == 300 and sizes["train"] > 180 and sizes["test"] < 60
    assert rep["aiq"]["router"] > rep["aiq"]["zero_router"] - 0.05 > 0
