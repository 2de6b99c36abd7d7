"""Offline replays of a changing arm catalogue on the recorded overruling data (not a test):
how fast an added arm is adopted with the exploration floor, and what retiring the best arm
costs. README, "Changing the arms live", states the definitions and the figures.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_arms.py [--seeds 5] [--p 0 0.05]

Both replays learn like the live learner: the config's warm start (full information, train
split), then one label per decision with the online learning rate and the logged
probability; held-out figures are greedy decisions on the test split.

- Adoption: the new arm (gpt-4) is absent for the first ``--before`` stream queries (the
  stream is train + val in a seeded order, repeated in new orders as needed), then joins
  with ``Policy.with_arms`` and the floor (``bandit.floors``, share 1/20 for 150 labels).
  Every ``CHECK_LABELS`` labels of the new arm, the router's greedy routing of the test
  queries is scored (accuracy − p·cost, recorded outcomes) against the same router with its
  model of the new arm replaced by a warm start's (the config's, on train, same seed):
  adopted at the first check where it loses no more than two warm starts of different
  seeds differ by that way (the largest such difference over the seeds' pairs), holding
  at the next ``HOLD_CHECKS`` checks too.
- Retirement: the arm the warm router sends most test queries at p is removed at stream
  query ``--retire-at``; accuracy on test just before and just after, and the stream
  queries until it is back within 1 pp of its final level (and stays), against a policy
  restarted cold on the remaining arms at the same point.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bandit.config import builtin_config
from bandit.datasets import load_dataset, make_split
from bandit.embedder import Embedder, default_cache_dir
from bandit.evaluation import Experiment
from bandit.floors import ArmFloors, FloorConfig
from bandit.policy import Policy

CHECK_LABELS = 10  # labels of the new arm between two adoption checks
HOLD_CHECKS = 2  # checks after the first that must hold too
MAX_PASSES = 6  # passes over the stream before an adoption run gives up
RETIRE_CHECK_EVERY = 24  # stream queries between two held-out checks (retirement)
RECOVERED_PP = 1.0


class Stream:
    """Rows in seeded orders, a new order for each pass."""

    def __init__(self, rows: np.ndarray, seed: int) -> None:
        self.rows, self.rng = rows, np.random.default_rng(seed)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for _ in range(MAX_PASSES):
            yield from self.rng.permutation(self.rows)


def warm(ex: Experiment, arms: tuple[str, ...], seed: int) -> Policy:
    """The config's warm start on train over ``arms`` only, with the online learning rate."""
    cols = [ex.arm_names.index(a) for a in arms]
    cfg = ex.config.policy
    if len(cols) == len(ex.arm_names):
        return ex.warm_policy(cfg, seed).with_config(cfg.for_online())
    # train_full_information's order, over ``arms`` only
    policy = Policy(cfg, arms, costs_for(ex, arms), ex.dim)
    data = ex.data(ex.split.train)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.warm_start_passes):
        for i in rng.permutation(len(data)):
            for j, c in enumerate(cols):
                policy.learn_line(data.shared[i], j, 1.0, float(data.correct[i, c]),
                                  float(data.cost[i, c]))  # fmt: skip
    return policy.with_config(cfg.for_online())


def greedy(ex: Experiment, policy: Policy, p: float) -> np.ndarray:
    """The arm (as a column of ``ex``) the policy picks greedily for each test query."""
    lines = [ex.shared[i] for i in ex.split.test]
    names = [policy.arm_names[d.arm] for d in policy.decide_lines(lines, p=p, greedy=True)]
    return np.array([ex.arm_names.index(n) for n in names])


def test_acc(ex: Experiment, policy: Policy, p: float) -> float:
    cols = greedy(ex, policy, p)
    return float(ex.correct[ex.split.test, cols].mean())


def step(ex: Experiment, policy: Policy, i: int, p: float, floor: np.ndarray | None) -> str:
    """Decide stream query ``i``, learn its label; returns the arm's name."""
    (d,) = policy.decide_lines([ex.shared[i]], p=p, floor=floor)
    name = policy.arm_names[d.arm]
    col = ex.arm_names.index(name)
    policy.learn_line(ex.shared[i], d.arm, d.prob, float(ex.correct[i, col]),
                      float(policy.costs[d.arm]))  # fmt: skip
    return name


def costs_for(ex: Experiment, arms: tuple[str, ...]) -> np.ndarray:
    c = ex.costs[[ex.arm_names.index(a) for a in arms]]
    return c / c.max()


def reward_on_test(ex: Experiment, predicted: np.ndarray, p: float) -> float:
    """Accuracy − p·cost (normalised, the dearest arm costs 1) on test of routing greedily
    by ``predicted`` (shape (n_test, n_arms), P̂(correct) in ``ex``'s arm order)."""
    cols = np.argmax(predicted - p * ex.costs, axis=1)
    test = ex.split.test
    return float((ex.correct[test, cols] - p * ex.costs[cols]).mean())


def adoption(ex: Experiment, new: str, p: float, seed: int, before: int, share: float,
             reference: np.ndarray, gap_pp: float) -> tuple[int | None, int | None, float]:  # fmt: skip
    """(labels of ``new``, stream queries after it joined) until adopted (None, None if
    never), and the reward gap (pp) when it joined, before any label. ``reference``: shape (n_test,), the warm-started P̂(correct) of ``new``;
    ``gap_pp``: the reward (pp) that not knowing ``new`` as well as it may cost."""
    old_arms = tuple(a for a in ex.arm_names if a != new)
    col = ex.arm_names.index(new)
    policy = warm(ex, old_arms, seed)
    policy.reseed(seed)
    floors = ArmFloors(FloorConfig(share=share) if share > 0 else FloorConfig(), ex.arm_names)
    stream = Stream(np.concatenate([ex.split.train, ex.split.val]), seed)
    lines = [ex.shared[i] for i in ex.split.test]
    labels = queries = 0
    held: list[tuple[int, int]] = []  # (labels, queries) at the checks that hold in a row

    def gap() -> float:
        """Reward (pp) on test lost for not knowing ``new`` as well as the warm start."""
        own = policy.correctness(lines)
        warm_new = own.copy()
        warm_new[:, col] = reference
        return 100 * (reward_on_test(ex, warm_new, p) - reward_on_test(ex, own, p))

    first = 0.0
    for n, i in enumerate(stream):
        if n == before:
            policy = policy.with_arms(ex.arm_names, ex.costs)
            if share > 0:
                floors.added(new)
            first = gap()  # what the new arm is worth before any label of it
            held = [(0, 0)] if first <= gap_pp else []
        if n < before:
            step(ex, policy, i, p, None)
            continue
        queries += 1
        if step(ex, policy, i, p, floors.floors()) != new:
            continue
        floors.labelled(new, float(ex.cost_usd[i, col]))
        labels += 1
        if labels % CHECK_LABELS:
            continue
        held = [*held, (labels, queries)] if gap() <= gap_pp else []
        if len(held) > HOLD_CHECKS:
            return (*held[0], first)
    return None, None, first


def retirement(ex: Experiment, p: float, seed: int, retire_at: int,
               cold: bool) -> tuple[str, float, float, int | None]:  # fmt: skip
    """(arm retired, test accuracy before, just after, stream queries to recover)."""
    policy = warm(ex, ex.arm_names, seed)
    policy.reseed(seed)
    counts = np.bincount(greedy(ex, policy, p), minlength=len(ex.arm_names))
    best = ex.arm_names[int(counts.argmax())]
    rows = np.concatenate([ex.split.train, ex.split.val])
    order = np.random.default_rng(seed).permutation(rows)
    before = after = 0.0
    curve: list[tuple[int, float]] = []
    for n, i in enumerate(order):
        if n == retire_at:
            before = test_acc(ex, policy, p)
            kept = tuple(a for a in ex.arm_names if a != best)
            if cold:
                policy = Policy(ex.config.policy.for_online(), kept, costs_for(ex, kept), ex.dim)
                policy.reseed(seed)
            else:
                policy = policy.with_arms(kept, costs_for(ex, kept))
            after = test_acc(ex, policy, p)
            curve.append((0, after))
        step(ex, policy, i, p, None)
        if n > retire_at and (n - retire_at) % RETIRE_CHECK_EVERY == 0:
            curve.append((n - retire_at, test_acc(ex, policy, p)))
    final = curve[-1][1]
    recovered = None
    for k, (q, _) in enumerate(curve):
        if all(abs(a - final) * 100 <= RECOVERED_PP for _, a in curve[k:]):
            recovered = q
            break
    return best, before, after, recovered


def span(xs: Sequence[float | None], fmt: str = "{:.0f}") -> str:
    got = [x for x in xs if x is not None]
    missing = len(xs) - len(got)
    if not got:
        return "never"
    out = f"median {fmt.format(float(np.median(got)))}, range {fmt.format(min(got))}-{fmt.format(max(got))}"
    return out + (f" ({missing} never)" if missing else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--p", type=float, nargs="*", default=[0.0, 0.05])
    ap.add_argument("--new-arm", default="gpt-4")
    ap.add_argument("--before", type=int, default=500)
    ap.add_argument("--retire-at", type=int, default=864)
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--skip-retirement", action="store_true", help="only the adoption replays")
    args = ap.parse_args()
    cfg = builtin_config("overruling")
    cache = str(default_cache_dir() / "embeddings")
    cfg = replace(cfg, embedder=replace(cfg.embedder, cache_dir=cache))
    ds = load_dataset("overruling", args.data_dir)
    ex = Experiment(ds, Embedder(cfg.embedder).embed_cached(list(ds.texts)), make_split(ds), cfg)
    seeds = list(range(args.seeds))
    usd = cfg.arms.fixed_costs_usd()
    print("arms (correct over all queries, fixed USD per call, normalised cost): " + ", ".join(
        f"{n} {ex.correct[:, j].mean():.3f} ${usd[j]:.5f} {ex.costs[j]:.3f}"
        for j, n in enumerate(ex.arm_names)))  # fmt: skip
    new_col = ex.arm_names.index(args.new_arm)
    for p in args.p:
        t0 = time.perf_counter()
        lines = [ex.shared[i] for i in ex.split.test]
        full = {s: warm(ex, ex.arm_names, s).correctness(lines) for s in seeds}
        refs = {s: full[s][:, new_col] for s in seeds}
        # How far apart two warm starts are: one's model of the new arm in the other's router.
        gaps = []
        for a in seeds:
            for b in seeds:
                if a != b:
                    swapped = full[a].copy()
                    swapped[:, new_col] = refs[b]
                    gaps.append(
                        100 * abs(reward_on_test(ex, full[a], p) - reward_on_test(ex, swapped, p))
                    )
        gap_pp = max(gaps)
        print(f"\np = {p:g}: two warm starts of different seeds differ by {span(gaps, '{:.2f}')} "
              f"pp of reward on test (one's model of {args.new_arm} in the other's router); "
              f"adopted when the router's own model of it loses ≤ {gap_pp:.2f} pp against the "
              f"warm start's, at {HOLD_CHECKS + 1} checks in a row ({CHECK_LABELS} labels apart)")  # fmt: skip
        for share in (args.share, 0.0):
            res = [
                adoption(ex, args.new_arm, p, s, args.before, share, refs[s], gap_pp) for s in seeds
            ]
            label = f"floor {share:g}" if share else "no floor (ε only)"
            print(f"  adoption, {label}: labels of {args.new_arm} {span([r[0] for r in res])}; "
                  f"stream queries after it joined {span([r[1] for r in res])}; gap before any label "
                  f"{span([r[2] for r in res], '{:.2f}')} pp; per seed "
                  f"{[(r[0], r[1], round(r[2], 2)) for r in res]}")  # fmt: skip
        for cold in () if args.skip_retirement else (False, True):
            rows = [retirement(ex, p, s, args.retire_at, cold) for s in seeds]
            how = "policy restarted cold" if cold else "with_arms (kept arms' models)"
            drops = [100 * (b - a) for _, b, a, _ in rows]
            print(f"  retirement of {sorted({r[0] for r in rows})} at query {args.retire_at}, {how}: "
                  f"test accuracy {span([100 * r[1] for r in rows], '{:.1f}')} % before, "
                  f"drop {span(drops, '{:.1f}')} pp; back within {RECOVERED_PP:g} pp of the final "
                  f"level after {span([r[3] for r in rows])} queries; per seed "
                  f"{[(round(100 * r[1], 1), round(100 * r[2], 1), r[3]) for r in rows]}")  # fmt: skip
        print(f"  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
