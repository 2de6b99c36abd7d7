"""`metallm evaluate` end to end on a slice of the overruling data set."""

import json
from pathlib import Path

import pytest

from workers.cli import main


def test_evaluate_on_a_slice_beats_the_random_router(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    plot = tmp_path / "frontier.png"
    rc = main(
        [
            "evaluate",
            "--dataset",
            "overruling",
            "--limit",
            "600",
            "--data-dir",
            str(data_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--compare-explorers",
            "squarecb",
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert set(r) >= {
        "dataset",
        "split_sizes",
        "arms",
        "oracle",
        "random",
        "router",
        "aiq",
        "online",
    }
    assert r["split_sizes"] == {"train": 360, "val": 120, "test": 120}
    best_router = max(row["acc"] for row in r["router"] if row["budget_of"] is None)
    assert best_router > r["random"]["acc"] + 0.1
    assert r["aiq"]["router"] > r["aiq"]["zero_router"] - 0.02 > 0
    assert r["aiq"]["oracle"] >= r["aiq"]["router"]
    for row in r["router"]:
        assert (
            set(row) == {"mode", "p", "budget_of", "acc", "cost_per_10k"} and 0 <= row["acc"] <= 1
        )
    assert {"p", "eps", "rounds", "progressive_acc", "test_acc"} <= set(r["online"][0])
    assert [(o["mode"], o["explorer"]) for o in r["online"]][-1] == ("paper", "squarecb")
    assert all(o["rounds"] == 480 for o in r["online"])  # train + validation, once
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_settings_end_in_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["evaluate", "--dataset", "overruling", "--data-dir", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and err.startswith("metallm: error: recorded data sets not found")
        and err.count("\n") == 1
    )
