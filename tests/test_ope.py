"""Off-policy estimators (bandit/ope.py, bandit/ope_tally.py) on small hand-made logs.

Their coverage against the truth of recorded data sets is an experiment, not a unit test:
scripts/ope_coverage.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bandit.errors import EstimatorError
from bandit.ope import (
    LIVE,
    PER_10K,
    LoggedDecision,
    OffPolicyEvaluator,
    OPEConfig,
    arm_policy,
    greedy_policy,
    shadow_policy,
)
from bandit.policy import Policy, PolicyConfig

ARMS = ("a", "b", "c")
COSTS = np.array([1.0, 0.5, 0.1])
CAP = 0.02  # USD

# (pmf, arm, correct, cost_usd, predicted correctness)
LOG = [
    ([0.8, 0.1, 0.1], 0, 1.0, 0.010, [0.9, 0.7, 0.2]),
    ([0.1, 0.8, 0.1], 1, 0.0, 0.005, [0.7, 0.8, 0.3]),
    ([0.5, 0.25, 0.25], 2, 1.0, 0.001, [0.5, 0.4, 0.6]),
    ([0.2, 0.2, 0.6], 0, 0.0, 0.012, [0.3, 0.2, 0.25]),
]
# greedy picks argmax P̂ − p·c: at p = 0 [0, 1, 2, 0] (the logged arms), at p = 1 [1, 1, 2, 2]
GREEDY_PICKS = {0.0: [0, 1, 2, 0], 1.0: [1, 1, 2, 2]}
UNIFORM = np.full(3, 1 / 3)


def decisions(log: list = LOG) -> list[LoggedDecision]:
    return [
        LoggedDecision(np.array(pmf), arm, a, c, np.array(pred)) for pmf, arm, a, c, pred in log
    ]


def config(**changes: object) -> OPEConfig:
    base: dict[str, object] = {
        "arm_names": ARMS,
        "cost_cap_usd": CAP,
        "p_grid": (0.0, 1.0),
        "window_labels": 4,
        "window_blocks": 2,
        "confidence_sequence": "all",
    }
    return OPEConfig(**{**base, **changes})  # type: ignore[arg-type]


def evaluator(**changes: object) -> OffPolicyEvaluator:
    ev = OffPolicyEvaluator(config(**changes), COSTS)
    ev.add_shadow("uniform")
    return ev


def feed(ev: OffPolicyEvaluator, ds: list[LoggedDecision]) -> None:
    for d in ds:
        ev.update(d, {s: UNIFORM for s in ev.shadows})


def brute_force(target_probs: list[float], values: list[float]) -> tuple[float, float]:
    """(IPS, SNIPS) by hand: w = π(A|x) / π₀(A|x)."""
    w = np.array(target_probs) / np.array([pmf[arm] for pmf, arm, *_ in LOG])
    r = np.array(values)
    return float((w * r).sum() / len(r)), float((w * r).sum() / w.sum())


def target_probs(policy: str) -> list[float]:
    if policy == LIVE:
        return [pmf[arm] for pmf, arm, *_ in LOG]
    if policy.startswith("always:"):
        j = ARMS.index(policy.split(":")[1])
        return [float(arm == j) for _, arm, *_ in LOG]
    if policy.startswith("greedy:"):
        picks = GREEDY_PICKS[float(policy.split("=")[1])]
        return [float(arm == pick) for (_, arm, *_), pick in zip(LOG, picks, strict=True)]
    return [1 / 3] * len(LOG)


ALL_POLICIES = [
    LIVE,
    *(arm_policy(a) for a in ARMS),
    greedy_policy(0.0),
    greedy_policy(1.0),
    shadow_policy("uniform"),
]


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_estimates_equal_ips_and_snips_by_hand(policy: str) -> None:
    ev = evaluator()
    feed(ev, decisions())
    est = ev.estimate(policy)
    assert est.labels == 4
    probs = target_probs(policy)
    ips, snips = brute_force(probs, [a for _, _, a, _, _ in LOG])
    assert est.acc.ips == pytest.approx(ips)
    assert est.acc.value == pytest.approx(snips)
    ips, snips = brute_force(probs, [c * PER_10K for _, _, _, c, _ in LOG])
    assert est.cost_per_10k.ips == pytest.approx(ips)
    assert est.cost_per_10k.value == pytest.approx(snips)


def test_hand_worked_figures() -> None:
    """always:a: w = (1.25, 0, 0, 5); accuracy IPS 1.25/4, SNIPS 1.25/6.25; cost IPS
    (1.25·0.010 + 5·0.012)/4 USD, SNIPS the same sum / 6.25."""
    ev = evaluator()
    feed(ev, decisions())
    est = ev.estimate("always:a")
    assert (est.acc.ips, est.acc.value) == pytest.approx((0.3125, 0.2))
    assert (est.cost_per_10k.ips, est.cost_per_10k.value) == pytest.approx((181.25, 116.0))
    # the library's Gaussian interval of IPS: w·r = (1.25, 0, 0, 0), sample sd / √n = 0.3125
    assert est.acc.gaussian == pytest.approx((0.0, 0.3125 + 1.959964 * 0.3125))  # clipped
    live = ev.estimate(LIVE)  # on-policy: the plain mean of what it got
    assert (live.acc.value, live.cost_per_10k.value) == pytest.approx((0.5, 70.0))


def test_greedy_picks_price_cost_in_and_follow_a_price_change() -> None:
    ev = evaluator()
    for d, (p0, p1) in zip(decisions(), zip(*GREEDY_PICKS.values(), strict=True), strict=True):
        assert ev.greedy_arms(d.predicted).tolist() == [p0, p1]  # type: ignore[arg-type]
    ev.set_costs([0.0, 0.0, 0.0])  # free arms: greedy at any p is argmax P̂
    assert ev.greedy_arms(np.array([0.9, 0.7, 0.2])).tolist() == [0, 0]
    with pytest.raises(EstimatorError, match="3 finite numbers"):
        ev.set_costs([1.0, 0.5])


def test_intervals_hold_their_point_estimates() -> None:
    rng = np.random.default_rng(3)
    ev = evaluator(window_labels=100, window_blocks=4)
    for _ in range(300):
        pmf = rng.dirichlet(np.ones(3))
        arm = int(rng.choice(3, p=pmf))
        pred = rng.random(3)
        d = LoggedDecision(pmf, arm, float(rng.random() < pred[arm]), rng.random() * CAP, pred)
        ev.update(d, {"uniform": int(rng.integers(3))})
    for scope in ("cumulative", "window"):
        for est in ev.estimates(scope):
            for m, top in ((est.acc, 1.0), (est.cost_per_10k, CAP * PER_10K)):
                assert m.value is not None and m.ips is not None
                lo, hi = m.gaussian
                assert lo is not None and hi is not None
                assert 0 <= lo <= m.value <= hi <= top
                lo, hi = m.clopper_pearson
                assert lo is not None and hi is not None
                # IPS is not normalised: it may leave [0, top], where the interval stops
                assert 0 <= lo <= min(m.ips, top) <= hi <= top
                if scope == "window":
                    assert m.cs is None
                else:
                    assert m.cs is not None
                    lo, hi = m.cs
                    assert lo is not None and hi is not None
                    assert 0 <= lo <= hi <= top


def test_no_labels_no_estimate() -> None:
    est = evaluator().estimate(LIVE)
    assert est.labels == 0
    assert est.acc.value is None and est.acc.gaussian == (None, None)


def test_window_holds_the_last_blocks() -> None:
    """Blocks of 2 labels, 2 blocks: after 7 labels the window is labels 5–7 (block 3,
    full, and block 4, one label), and reads as a fresh evaluator fed just those."""
    log = LOG + LOG[:3]
    ev = evaluator()
    feed(ev, decisions(log))
    fresh = evaluator()
    feed(fresh, decisions(log[4:]))
    for policy in ALL_POLICIES:
        window = ev.estimate(policy, "window")
        assert window.labels == 3
        want = fresh.estimate(policy)
        assert window.acc.value == pytest.approx(want.acc.value)
        assert window.acc.gaussian == pytest.approx(want.acc.gaussian)
        assert window.cost_per_10k.clopper_pearson == pytest.approx(
            want.cost_per_10k.clopper_pearson
        )
        assert ev.estimate(policy).labels == 7


def test_state_round_trip_continues_as_if_never_stopped() -> None:
    rng = np.random.default_rng(5)
    log = []
    for _ in range(60):
        pmf = rng.dirichlet(np.ones(3))
        arm = int(rng.choice(3, p=pmf))
        log.append((pmf.tolist(), arm, float(rng.integers(2)), float(rng.random() * CAP), rng.random(3).tolist()))  # fmt: skip
    ds = decisions(log)
    straight = evaluator(window_labels=20, window_blocks=4)
    feed(straight, ds)

    first = evaluator(window_labels=20, window_blocks=4)
    feed(first, ds[:37])
    state = json.loads(json.dumps(first.to_state()))  # as the learner stores it
    resumed = OffPolicyEvaluator.from_state(state, first.config)
    feed(resumed, ds[37:])

    assert resumed.labels == straight.labels == 60
    assert resumed.to_state() == straight.to_state()
    for scope in ("cumulative", "window"):
        assert resumed.estimates(scope) == straight.estimates(scope)


def test_state_under_other_settings_is_refused() -> None:
    ev = evaluator()
    feed(ev, decisions())
    state = ev.to_state()
    with pytest.raises(EstimatorError, match="other settings \\(p_grid\\)"):
        OffPolicyEvaluator.from_state(state, config(p_grid=(0.0, 0.5)))
    with pytest.raises(EstimatorError, match="version"):
        OffPolicyEvaluator.from_state({**state, "version": 99})
    bad = json.loads(json.dumps(state))
    bad["tallies"][LIVE]["acc"]["total"]["snips"] = [1.0]
    with pytest.raises(EstimatorError, match="weighted_examples_count"):
        OffPolicyEvaluator.from_state(bad)


def test_target_that_agrees_with_the_logging_policys_greedy_choice() -> None:
    """A real decoupled Policy logs ε-greedy decisions; the greedy target at its p picks
    its greedy arm on every decision, and a shadow giving that arm reads the same: the
    SNIPS of the outcomes where the logged arm was the greedy one (w = 1/(1 − ε + ε/K))."""
    p, eps = 0.3, 0.2
    policy = Policy(PolicyConfig(epsilon=eps, seed=1), ARMS, COSTS, dim=4)
    rng = np.random.default_rng(0)
    ev = OffPolicyEvaluator(config(p_grid=(0.0, p)), COSTS)
    ev.add_shadow("greedy")
    outcomes, agreed = rng.integers(0, 2, size=(200, 3)).astype(float), []
    for i in range(200):
        vec = rng.normal(size=(1, 4))
        line = policy.features.shared_batch(vec, None)[0]
        predicted = policy.correctness([line])[0]
        (d,) = policy.decide_lines([line], p=p)
        assert ev.greedy_arms(predicted)[1] == d.greedy
        a = outcomes[i, d.arm]
        ev.update(LoggedDecision(d.pmf, d.arm, a, 0.001, predicted), {"greedy": d.greedy})
        policy.learn_line(line, d.arm, d.prob, a)
        if d.arm == d.greedy:
            agreed.append(a)
    greedy, shadow = ev.estimate(greedy_policy(p)), ev.estimate(shadow_policy("greedy"))
    assert greedy.acc == shadow.acc and greedy.cost_per_10k == shadow.cost_per_10k
    assert greedy.acc.value == pytest.approx(np.mean(agreed))
    assert greedy.acc.ips == pytest.approx(np.sum(agreed) / (1 - eps + eps / 3) / 200)


def test_decisions_without_predictions_leave_greedy_targets_alone() -> None:
    ev = evaluator()
    ds = decisions()
    feed(ev, [*ds[:2], LoggedDecision(ds[2].pmf, ds[2].arm, 1.0, 0.001, None)])
    assert ev.estimate(greedy_policy(0.0)).labels == 2
    assert ev.estimate(LIVE).labels == ev.labels == 3


def test_shadows_start_when_added_and_must_each_be_given() -> None:
    ev = evaluator()
    ds = decisions()
    feed(ev, ds[:2])
    ev.add_shadow("late")
    feed(ev, ds[2:])
    assert ev.estimate(shadow_policy("late")).labels == 2
    assert ev.estimate(shadow_policy("uniform")).labels == 4
    with pytest.raises(EstimatorError, match="registered ones are \\['late', 'uniform'\\]"):
        ev.update(ds[0], {"uniform": 0})
    with pytest.raises(EstimatorError, match="already registered"):
        ev.add_shadow("late")
    ev.remove_shadow("late")
    assert shadow_policy("late") not in ev.policies
    with pytest.raises(EstimatorError, match="no shadow candidate 'late'"):
        ev.remove_shadow("late")


def test_cost_above_the_cap_is_clipped_and_counted() -> None:
    ev = evaluator()
    pmf = np.array([0.5, 0.25, 0.25])
    feed(ev, [LoggedDecision(pmf, 0, 1.0, 3 * CAP), LoggedDecision(pmf, 0, 1.0, CAP / 2)])
    assert ev.clipped_costs == 1
    assert ev.estimate(LIVE).cost_per_10k.value == pytest.approx(0.75 * CAP * PER_10K)


@pytest.mark.parametrize(
    ("decision", "shadow", "match"),
    [
        (LoggedDecision(np.array([0.5, 0.5]), 0, 1.0, 0.0), 0, "3 probabilities summing to 1"),
        (LoggedDecision(np.array([0.5, 0.4, 0.0]), 0, 1.0, 0.0), 0, "summing to 1"),
        (LoggedDecision(np.array([0.5, 0.5, 0.0]), 2, 1.0, 0.0), 0, "with pmf > 0"),
        (LoggedDecision(np.array([0.5, 0.5, 0.0]), 3, 1.0, 0.0), 0, "index 0..2"),
        (LoggedDecision(UNIFORM, 0, 1.5, 0.0), 0, "correctness 1.5"),
        (LoggedDecision(UNIFORM, 0, 1.0, -1.0), 0, "cost -1.0"),
        (LoggedDecision(UNIFORM, 0, 1.0, 0.0, np.ones(2)), 0, "predicted correctness"),
        (LoggedDecision(UNIFORM, 0, 1.0, 0.0), 5, "picked arm 5"),
        (LoggedDecision(UNIFORM, 0, 1.0, 0.0), np.array([0.5, 0.5]), "shadow 'uniform': pmf"),
    ],
)
def test_bad_decisions_are_refused(decision: LoggedDecision, shadow: object, match: str) -> None:
    ev = evaluator()
    with pytest.raises(EstimatorError, match=match):
        ev.update(decision, {"uniform": shadow})  # type: ignore[dict-item]
    assert ev.labels == 0 and ev.estimate(LIVE).labels == 0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"arm_names": ("a", "a")}, "distinct"),
        ({"cost_cap_usd": 0.0}, "cost_cap_usd = 0.0"),
        ({"p_grid": (0.1, 0.1)}, "holds a p twice"),
        ({"p_grid": (-1.0,)}, "p = -1.0"),
        ({"window_labels": 10, "window_blocks": 3}, "multiple"),
        ({"window_labels": 2, "window_blocks": 3}, "window_blocks ≤ window_labels"),
        ({"alpha": 1.0}, "alpha = 1.0"),
        ({"confidence_sequence": True}, "not one of: promotion, all, none"),
    ],
)
def test_bad_settings_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(Exception, match=match):
        config(**changes)


def test_clopper_pearson_undefined_once_ips_passes_one() -> None:
    """Two rows where arm a, drawn with probability 0.01, was right: IPS = 100 and the
    library's Clopper-Pearson gives NaN; it is reported as undefined, never as NaN."""
    ev = evaluator()
    pmf = np.array([0.01, 0.49, 0.5])
    feed(ev, [LoggedDecision(pmf, 0, 1.0, 0.001)] * 2)
    acc = ev.estimate(arm_policy("a")).acc
    assert acc.ips == pytest.approx(100.0) and acc.value == pytest.approx(1.0)
    assert acc.clopper_pearson[0] is None


def test_confidence_sequence_by_default_only_where_promotion_looks() -> None:
    ev = OffPolicyEvaluator(config(confidence_sequence="promotion"), COSTS)
    ev.add_shadow("uniform")
    feed(ev, decisions())
    kept = {e.policy for e in ev.estimates() if e.acc.cs is not None}
    assert kept == {shadow_policy("uniform")}
    restored = OffPolicyEvaluator.from_state(json.loads(json.dumps(ev.to_state())))
    assert restored.estimates() == ev.estimates()
    none = OffPolicyEvaluator(config(confidence_sequence="none"), COSTS)
    feed(none, decisions())
    assert all(e.acc.cs is None and e.cost_per_10k.cs is None for e in none.estimates())
