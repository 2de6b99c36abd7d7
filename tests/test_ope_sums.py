"""The off-policy estimators' vectorised sums (bandit/ope_tally.py ``Tallies``) against the
``vw-estimators`` objects fed one ``add_example`` per target, quantity and label, as the
library is meant to be used: a seeded random log with decisions without predictions (the
greedy targets skip them), a shadow registered late, a pmf shadow and a window of blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from estimators.bandits import clopper_pearson, cs, gaussian, ips, snips

from bandit.ope import (
    LIVE,
    PER_10K,
    LoggedDecision,
    MetricEstimate,
    OffPolicyEvaluator,
    OPEConfig,
    arm_policy,
    greedy_policy,
    shadow_policy,
)

ARMS = ("a", "b", "c")
CAP = 0.02  # USD
ALPHA = 0.05
BLOCK, BLOCKS = 5, 4
LABELS, LATE = 157, 41  # the shadow "late" sees labels LATE.. on


def clip(x: float | None) -> float | None:
    return None if x is None or np.isnan(x) else min(max(float(x), 0.0), 1.0)


def library_estimate(examples: list[tuple[float, float, float]], factor: float, with_cs: bool):
    """(p_log, r, p_pred) fed one by one to the library's objects, read as ``Reading`` does."""
    objs = snips.Estimator(), ips.Estimator(), gaussian.Interval(), clopper_pearson.Interval()
    seq = cs.Interval()
    for p_log, r, p_pred in examples:
        for obj in objs:
            obj.add_example(p_log, r, p_pred)
        seq.add_example(p_log, r, p_pred)
    est_snips, est_ips, gauss, cp = objs
    value, lo, hi = est_snips.get(), *gauss.get(ALPHA)
    if value is not None and lo is not None and hi is not None:
        lo, hi = min(lo, value), max(hi, value)

    def scaled(x: float | None) -> float | None:
        return None if x is None else x * factor

    def pair(bounds: list[float | None]) -> tuple[float | None, float | None]:
        return scaled(clip(bounds[0])), scaled(clip(bounds[1]))

    return MetricEstimate(
        scaled(value),
        scaled(est_ips.get()),
        pair([lo, hi]),
        pair(cp.get(ALPHA)),
        pair(seq.get(ALPHA)) if with_cs else None,
    )


def window(examples: list) -> list:
    """The labels a window of BLOCKS blocks of BLOCK holds, the newest block partly filled."""
    n = len(examples)
    return examples[max(0, ((n - 1) // BLOCK - (BLOCKS - 1)) * BLOCK) :] if n else []


def assert_close(got: MetricEstimate, want: MetricEstimate) -> None:
    for name in ("value", "ips", "gaussian", "clopper_pearson", "cs"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if isinstance(g, tuple):
            assert [x is None for x in g] == [x is None for x in w], name
            g, w = [x for x in g if x is not None], [x for x in w if x is not None]
        if g is not None:
            assert g == pytest.approx(w, rel=1e-12, abs=1e-15), name


@pytest.mark.parametrize("cs_mode", ["promotion", "all"])
def test_sums_read_as_the_library_fed_example_by_example(cs_mode: str) -> None:
    rng = np.random.default_rng(11)
    config = OPEConfig(ARMS, CAP, p_grid=(0.0, 0.3, 1.0), window_labels=BLOCK * BLOCKS,
                       window_blocks=BLOCKS, alpha=ALPHA, confidence_sequence=cs_mode)  # fmt: skip
    ev = OffPolicyEvaluator(config, [1.0, 0.5, 0.1])
    ev.add_shadow("uniform")
    fed: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in ev.policies}
    fed[shadow_policy("late")] = []
    for i in range(LABELS):
        if i == LATE:
            ev.add_shadow("late")
        pmf = rng.dirichlet(np.full(3, 0.7))
        arm = int(rng.choice(3, p=pmf))
        predicted = None if rng.random() < 0.2 else rng.random(3)
        cost = float(rng.random() * 1.2 * CAP)  # some above the cap: clipped
        d = LoggedDecision(pmf, arm, float(rng.random() < 0.6), cost, predicted)
        uniform, late = rng.dirichlet(np.ones(3)), int(rng.integers(3))
        ev.update(d, {"uniform": uniform, **({"late": late} if i >= LATE else {})})
        probs = {
            LIVE: float(pmf[arm]),
            **{arm_policy(a): float(j == arm) for j, a in enumerate(ARMS)},
        }
        if predicted is not None:
            picks = ev.greedy_arms(predicted)
            probs |= {
                greedy_policy(p): float(k == arm) for p, k in zip(config.p_grid, picks, strict=True)
            }
        probs[shadow_policy("uniform")] = uniform[arm]
        if i >= LATE:
            probs[shadow_policy("late")] = float(late == arm)
        for name, p_pred in probs.items():
            fed[name].append((float(pmf[arm]), d.correct, min(cost / CAP, 1.0), float(p_pred)))

    assert fed[greedy_policy(0.3)] and len(fed[greedy_policy(0.3)]) < LABELS
    restored = OffPolicyEvaluator.from_state(json.loads(json.dumps(ev.to_state())), config)
    for name, examples in fed.items():
        with_cs = cs_mode == "all" or name.startswith("shadow:")
        for scope, span in (("cumulative", examples), ("window", window(examples))):
            keep_cs = with_cs and scope == "cumulative"
            for got in (ev.estimate(name, scope), restored.estimate(name, scope)):
                assert got.labels == len(span)
                acc = [(p_log, a, p) for p_log, a, _, p in span]
                cost = [(p_log, c, p) for p_log, _, c, p in span]
                assert_close(got.acc, library_estimate(acc, 1.0, keep_cs))
                assert_close(got.cost_per_10k, library_estimate(cost, CAP * PER_10K, keep_cs))
