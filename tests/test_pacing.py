"""The budget pacing controller on synthetic spend streams, and a short paced replay."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bandit.errors import ConfigError
from bandit.pacing import PaceController, PacingConfig, check_pacing_mode

# Three arms priced like a small catalogue: USD per query.
COSTS = np.array([0.01, 0.003, 0.0002])


def routing_spend(p: float, costs: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """A synthetic router: each query's arm j has an accuracy edge; it takes the arm with the
    best edge − p·c/max(c), so spend falls as p rises (like the decoupled decision)."""
    edge = rng.normal([0.9, 0.8, 0.6], 0.15, size=(n, len(costs)))
    arms = np.argmax(edge - p * costs / costs.max(), axis=1)
    return costs[arms]


def run(ctl: PaceController, costs: np.ndarray, n_batches: int, seed: int = 0, batch: int = 16):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    spent, ps = [], []
    for _ in range(n_batches):
        s = routing_spend(ctl.p, costs, rng, batch)
        ctl.observe(float(s.sum()), batch)
        ps.append(ctl.update())
        spent.append(s)
    return np.concatenate(spent), np.array(ps)


@pytest.mark.parametrize("rule", ["multiplicative", "additive"])
@pytest.mark.parametrize("window", [0.0, 50.0])
def test_converges_to_the_target(rule: str, window: float) -> None:
    target_10k = 30.0  # USD per 10k = 0.003 per query, between the arms
    step = 0.05 if rule == "multiplicative" else 0.005
    ctl = PaceController(
        PacingConfig(usd_per_10k_queries=target_10k, rule=rule, step=step, window_queries=window),
        COSTS,
    )
    spent, ps = run(ctl, COSTS, 400)
    tail = spent[len(spent) // 10 :]
    assert abs(tail.mean() * 1e4 - target_10k) / target_10k < 0.03
    # p settled: it moved far from its start and no longer drifts
    assert ps[-1] > 0.2 and abs(np.log(ps[-50:].mean() / ps[-150:-100].mean())) < 0.5


def test_respects_the_bounds_and_the_floor() -> None:
    cfg = PacingConfig(usd_per_10k_queries=2.02, p_max=1.0, step=0.5, p_floor=0.01)
    ctl = PaceController(cfg, COSTS)
    _, ps = run(ctl, COSTS, 100)
    assert ps.max() <= 1.0 and ps.min() >= 0.01
    assert ps[-1] == 1.0  # 2.02 USD/10k needs nearly every query on the cheapest arm
    high = PaceController(PacingConfig(usd_per_10k_queries=99.0, step=0.5, p_floor=0.01), COSTS)
    _, ps = run(high, COSTS, 100)
    assert ps[-1] == 0.01  # every routing spends less: p rests on the multiplicative floor


def test_warm_up_holds_p() -> None:
    cfg = PacingConfig(usd_per_10k_queries=5.0, warmup_queries=100, p_init=0.3)
    ctl = PaceController(cfg, COSTS)
    for _ in range(6):
        ctl.observe(0.01 * 16, 16)  # far over target
        assert ctl.update() == 0.3
    ctl.observe(0.01 * 16, 16)  # 112 queries: warm-up over
    assert ctl.update() > 0.3


def test_target_below_the_cheapest_routes_to_the_cheapest_and_exports_the_shortfall() -> None:
    cfg = PacingConfig(usd_per_10k_queries=1.0, p_max=200.0)
    ctl = PaceController(cfg, COSTS)
    ctl.observe(0.0002, 1)
    assert ctl.update() == 200.0
    assert ctl.shortfall_per_10k == pytest.approx(1.0)  # cheapest 2 USD/10k against 1
    ok = PaceController(PacingConfig(usd_per_10k_queries=30.0), COSTS)
    assert ok.shortfall_per_10k == 0.0


def test_target_above_the_dearest_is_p_zero() -> None:
    ctl = PaceController(PacingConfig(usd_per_10k_queries=100.0, p_init=0.5), COSTS)
    ctl.observe(0.01, 1)
    assert ctl.update() == 0.0 and ctl.shortfall_per_10k == 0.0


def test_follows_a_price_change_without_a_reset() -> None:
    target_10k = 30.0
    cfg = PacingConfig(usd_per_10k_queries=target_10k, step=0.05)
    ctl = PaceController(cfg, COSTS)
    run(ctl, COSTS, 200, seed=1)
    p_before = ctl.p
    dearer = COSTS.copy()
    dearer[0] *= 2  # the dearest arm doubles: normalised costs of the others halve
    ctl.set_prices(dearer)
    assert ctl.p == pytest.approx(2 * p_before)  # same USD price of accuracy
    assert ctl.observed_queries == 200 * 16  # the state was kept
    spent2, _ = run(ctl, dearer, 200, seed=2)
    tail = spent2[len(spent2) // 4 :]
    assert abs(tail.mean() * 1e4 - target_10k) / target_10k < 0.03


def test_usd_per_hour_uses_the_measured_query_rate() -> None:
    # 2 queries per second and 36 USD per hour = 0.005 USD per query
    cfg = PacingConfig(usd_per_hour=36.0, warmup_queries=0)
    ctl = PaceController(cfg, COSTS)
    assert ctl.target_per_query_usd is None and ctl.update() == cfg.p_init
    for t in range(10):
        ctl.observe(0.002, 2, now_s=float(t))
    assert ctl.target_per_query_usd == pytest.approx(0.005)
    both = PaceController(PacingConfig(usd_per_10k_queries=20.0, usd_per_hour=36.0), COSTS)
    for t in range(10):
        both.observe(0.002, 2, now_s=float(t))
    assert both.target_per_query_usd == pytest.approx(0.002)  # the tighter one binds
    assert both.spend_ratio == pytest.approx(0.5)


def test_state_round_trips_through_json() -> None:
    cfg = PacingConfig(usd_per_10k_queries=30.0, window_queries=40.0)
    ctl = PaceController(cfg, COSTS)
    run(ctl, COSTS, 30)
    ctl.observe(0.004, 1, now_s=12.5)  # pending, not yet folded into p
    state = json.loads(json.dumps(ctl.to_state()))
    again = PaceController.from_state(cfg, COSTS, state)
    assert again.to_state() == ctl.to_state()
    assert again.update() == ctl.update()
    # restored under a new price of the dearest arm: p follows as set_prices would
    dearer = COSTS * np.array([3.0, 1.0, 1.0])
    moved = PaceController.from_state(cfg, dearer, ctl.to_state())
    assert moved.p == pytest.approx(3 * ctl.p)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "set usd_per_10k_queries and/or usd_per_hour"),
        ({"usd_per_10k_queries": 0.0}, r"budget.usd_per_10k_queries = 0.0 must be .* > 0"),
        ({"usd_per_hour": float("nan")}, r"budget.usd_per_hour = nan"),
        ({"usd_per_10k_queries": 1.0, "rule": "pid"}, r"budget.rule = 'pid' is not one of"),
        ({"usd_per_10k_queries": 1.0, "step": -1.0}, r"budget.step = -1.0 must be"),
        ({"usd_per_10k_queries": 1.0, "p_min": 2.0, "p_max": 1.0}, r"budget.p_min = 2.0"),
        ({"usd_per_10k_queries": 1.0, "p_init": 5.0, "p_max": 1.0}, r"budget.p_init = 5.0 must be in \[p_min, p_max\]"),
        ({"usd_per_10k_queries": 1.0, "window_queries": -1.0}, r"budget.window_queries = -1.0"),
        ({"usd_per_10k_queries": 1.0, "warmup_queries": 1.5}, r"budget.warmup_queries = 1.5"),
    ],
)  # fmt: skip
def test_bad_settings_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PacingConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_inputs_and_state_are_refused() -> None:
    ctl = PaceController(PacingConfig(usd_per_10k_queries=1.0), COSTS)
    with pytest.raises(ConfigError, match="spend_usd = -1"):
        ctl.observe(-1.0)
    with pytest.raises(ConfigError, match="arm costs"):
        PaceController(PacingConfig(usd_per_10k_queries=1.0), [])
    with pytest.raises(ConfigError, match="pacing state lacks"):
        PaceController.from_state(PacingConfig(usd_per_10k_queries=1.0), COSTS, {"p": 1.0})


def test_paper_mode_cannot_be_paced() -> None:
    check_pacing_mode("decoupled")
    with pytest.raises(ConfigError, match=r"needs policy\.mode = 'decoupled', not 'paper'"):
        check_pacing_mode("paper")


@pytest.mark.data
def test_a_paced_replay_on_overruling_meets_the_target(data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from bandit.config import builtin_config
    from bandit.datasets import load_dataset, make_split
    from bandit.evaluation import Experiment
    from bandit.pacing_replay import budget_study

    ds = load_dataset("overruling", data_dir)
    ds = ds.subset(np.sort(np.random.default_rng(0).permutation(len(ds))[:900]))
    cfg = builtin_config("overruling")
    ex = Experiment(ds, embedder.embed(list(ds.texts)), make_split(ds), cfg)
    (row, changed) = budget_study(ex, [0.25], price_change_arm="gpt-4")
    assert row.runs == 1 and row.queries == 360 and row.price_change_arm is None
    assert row.spend_error < 0.15, row
    assert 0.5 < row.acc <= 1 and 0.5 < row.offline_acc_at_cost <= 1
    assert changed.price_change_arm == "gpt-4" and changed.spend_error < 0.25, changed


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--price-change", "gpt-4"], "--price-change needs --budgets"),
        (["--budgets", "0.25", "--price-change", "gpt-5"], "unknown arm 'gpt-5'"),
        (["--budgets", "0"], r"--budgets \[0.0\] must be shares > 0"),
        (["--budgets", "0.5", "--budget-seeds", "0"], "--budget-seeds 0"),
    ],
)
def test_evaluate_budget_options_fail_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], match: str
) -> None:
    from workers.cli import main

    # a missing data folder would fail later: the options are checked first
    rc = main(["evaluate", "--dataset", "overruling", "--data-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("metallm: error: ") and err.count("\n") == 1
    assert re.search(match, err), err


def test_evaluate_refuses_a_budget_in_paper_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from importlib import resources

    from workers.cli import main

    text = (resources.files("bandit") / "configs" / "overruling.toml").read_text()
    paper = tmp_path / "paper.toml"
    paper.write_text(text.replace('mode = "decoupled"', 'mode = "paper"\nloss = "squared"'))
    rc = main(["evaluate", "--dataset", "overruling", "--config", str(paper),
               "--data-dir", str(tmp_path), "--budgets", "0.5"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "a spend budget needs policy.mode = 'decoupled', not 'paper'" in err
