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


def test_tuning_ranks_trials_without_touching_test(data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from bandit.config import builtin_config
    from bandit.datasets import load_dataset, make_split
    from bandit.evaluation import Experiment
    from bandit.tuning import tune, tune_online

    ds = load_dataset("overruling", data_dir)
    ds = ds.subset(np.arange(300))
    split = make_split(ds)
    cfg = builtin_config("overruling")
    ex = Experiment(ds, embedder.embed(list(ds.texts)), split, cfg)
    trials = tune(
        ex, cfg.policy, learning_rates=(0.1, 1.0), passes=(1,), word_features=(True, False)
    )
    assert len(trials) == 4 and {(t.learning_rate, t.word_features) for t in trials} == {
        (0.1, True),
        (0.1, False),
        (1.0, True),
        (1.0, False),
    }
    assert [t.val_aiq for t in trials] == sorted((t.val_aiq for t in trials), reverse=True)
    online = tune_online(ex, cfg.policy, learning_rates=(0.05, 0.5))
    assert [o.online_learning_rate for o in online] in ([0.05, 0.5], [0.5, 0.05])
    assert online[0].progressive_acc >= online[1].progressive_acc > 0.4


def test_cross_validation_never_reads_test_rows(data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from bandit.config import builtin_config
    from bandit.datasets import load_dataset, make_split
    from bandit.errors import ConfigError
    from bandit.evaluation import Experiment
    from bandit.tuning import cross_validate

    ds = load_dataset("overruling", data_dir).subset(np.arange(300))
    split = make_split(ds)
    cfg = builtin_config("overruling")
    ex = Experiment(ds, embedder.embed(list(ds.texts)), split, cfg)
    # Poison the test rows: any use of them would turn the scores into NaN.
    ex.correct[split.test] = np.nan
    ex.cost_usd[split.test] = np.nan
    ex.reward_cost[split.test] = np.nan
    got = cross_validate(ex, cfg.policy, "text-davinci-002", learning_rates=(0.5, 2.0),
                         passes=(1,), folds=3, repeats=1)  # fmt: skip
    assert {(r.learning_rate, r.warm_start_passes) for r in got} == {(0.5, 1), (2.0, 1)}
    assert [r.aiq for r in got] == sorted((r.aiq for r in got), reverse=True)
    for r in got:
        assert 0.5 < r.aiq <= 1 and 0.5 < r.budget_acc <= 1
        assert 0 < r.budget_cost_share <= 1.5 and np.isfinite(r.acc_within_share)
    with pytest.raises(ConfigError, match="unknown budget arm 'gpt-5'"):
        cross_validate(ex, cfg.policy, "gpt-5")
