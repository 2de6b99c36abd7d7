"""Benchmark of the streaming off-policy estimators (not a test): µs per labelled decision
that ``OffPolicyEvaluator.update`` costs, for 12 arms and the default p grid (21 targets:
live, 12 ``always:ARM``, 8 ``greedy:p=P``), without and with one shadow candidate, then
without the confidence sequences (``confidence_sequence="none"``, which the library feeds
one example at a time), and what one full read (``estimates`` for both scopes) and a
``to_state`` cost.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_ope.py [--labels 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bandit.ope import SCOPES, LoggedDecision, OffPolicyEvaluator, OPEConfig

N_ARMS = 12
CAP_USD = 0.02


def decisions(n: int, seed: int = 0) -> list[tuple[LoggedDecision, int]]:
    """Random ε-greedy-like decisions with predictions, and a shadow's pick for each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pmf = np.full(N_ARMS, 0.1 / N_ARMS)
        pmf[rng.integers(N_ARMS)] += 0.9
        arm = int(rng.choice(N_ARMS, p=pmf))
        pred = rng.random(N_ARMS)
        d = LoggedDecision(pmf, arm, float(rng.random() < pred[arm]), rng.random() * CAP_USD, pred)
        out.append((d, int(rng.integers(N_ARMS))))
    return out


def run(
    log: list[tuple[LoggedDecision, int]], shadow: bool, cs_mode: str = "promotion"
) -> tuple[float, float, float]:
    """(µs per update, ms per full read, ms per to_state)."""
    arms = tuple(f"arm{j}" for j in range(N_ARMS))
    config = OPEConfig(arms, CAP_USD, confidence_sequence=cs_mode)
    ev = OffPolicyEvaluator(config, np.linspace(0.05, 1.0, N_ARMS))
    if shadow:
        ev.add_shadow("candidate")
    start = time.perf_counter()
    for d, pick in log:
        ev.update(d, {"candidate": pick} if shadow else None)
    per_label_us = (time.perf_counter() - start) / len(log) * 1e6
    start = time.perf_counter()
    for scope in SCOPES:
        ev.estimates(scope)
    read_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    ev.to_state()
    state_ms = (time.perf_counter() - start) * 1e3
    return per_label_us, read_ms, state_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--labels", type=int, default=5000)
    args = ap.parse_args()
    log = decisions(args.labels)
    for shadow, cs_mode in ((False, "promotion"), (True, "promotion"), (True, "none")):
        targets = 1 + N_ARMS + 8 + int(shadow)
        us, read_ms, state_ms = run(log, shadow, cs_mode)
        print(
            f"{targets} targets ({'one shadow' if shadow else 'no shadow'}, "
            f"confidence sequences: {cs_mode}): "
            f"{us:.1f} µs per label, estimates (both scopes) {read_ms:.1f} ms, "
            f"to_state {state_ms:.1f} ms"
        )


if __name__ == "__main__":
    main()
