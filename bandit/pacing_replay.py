"""The budget proof on recorded outcomes: a paced online replay.

A decoupled policy warm-started on the train split streams the rows it never trained on
(validation + test) in a seeded order, in batches as a router reads them: each batch is
decided at the controller's current p, the chosen arms' recorded costs are the measured
spend, each label is learned online (bandit feedback, with its logged probability), and
the controller updates p after the batch. The recorded data hold every arm's outcome, so
the offline router's cost–accuracy frontier on the same rows is known exactly, and the
paced router is compared with it at the cost it realised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from bandit.arms import normalise_costs
from bandit.calibration import PER_10K, sweep
from bandit.errors import ConfigError
from bandit.evaluation import Experiment
from bandit.frontier import upper_hull
from bandit.pacing import PaceController, PacingConfig, check_pacing_mode
from bandit.policy import Policy

BUDGET_SHARES = (0.25, 0.5, 0.75)  # of the dearest arm's cost per query
BURN_IN_SHARE = 0.1  # the spend error is measured on the stream after its first 10 %
DEFAULT_BATCH = 16  # queries decided at one p (a router reads p once per batch)
# Price change: the spend is "back" when the mean over this many queries, all after the
# change, is within RECOVERY_TOLERANCE of the target.
RECOVERY_WINDOW = 200
RECOVERY_TOLERANCE = 0.05
PRICE_FACTOR = 2.0


@dataclass(frozen=True)
class BudgetRun:
    """One paced replay. Costs in USD per 10k queries, accuracy as a fraction; figures
    marked "after burn-in" cover the stream after its first ``BURN_IN_SHARE``."""

    share: float  # target ÷ the dearest arm's cost per query
    target_cost_per_10k: float
    seed: int
    queries: int
    realised_cost_per_10k: float  # after burn-in
    spend_error: float  # |realised − target| ÷ target, after burn-in
    acc: float  # after burn-in
    offline_acc_at_cost: float  # the offline router, same exploration, at the realised cost
    offline_greedy_acc_at_cost: float  # the offline router without exploration, same cost
    p_final: float
    price_change_arm: str | None = None
    recovery_queries: int | None = None  # None: not back within the stream


@dataclass(frozen=True)
class BudgetRow:
    """The runs of one target, over seeds: means, and the worst spend error."""

    share: float
    target_cost_per_10k: float
    runs: int
    queries: int
    realised_cost_per_10k: float
    spend_error: float
    spend_error_max: float
    acc: float
    offline_acc_at_cost: float
    offline_greedy_acc_at_cost: float
    p_final: float
    price_change_arm: str | None = None
    recovery_queries: float | None = None  # mean over the runs that recovered
    recovered_runs: int = 0
    p0_cost_per_10k: float = 0.0  # what the same online router spends unpaced at p = 0

    @property
    def acc_gap_pp(self) -> float:
        """Paced minus offline accuracy at the same cost and exploration, in percentage
        points: what pacing itself gains or loses."""
        return (self.acc - self.offline_acc_at_cost) * 100

    @property
    def binding(self) -> bool:
        """Whether the target is below what the router spends at p = 0: above it, the router
        has nothing worth buying with the rest, and underspends by design."""
        return self.target_cost_per_10k < self.p0_cost_per_10k


def frontier_acc(points: Sequence[tuple[float, float]], cost: float) -> float:
    """The accuracy of the upper cost–accuracy frontier of ``points`` (cost, acc) at
    ``cost``, linearly interpolated (mixing two routings reaches any cost between them);
    flat beyond its ends."""
    hull = upper_hull(points)
    xs, ys = zip(*hull, strict=True)
    return float(np.interp(cost, xs, ys))


def recovery_queries(
    spent: np.ndarray, change_at: int, target: float, window: int = RECOVERY_WINDOW
) -> int | None:
    """Queries after ``change_at`` until the mean spend over the last ``window`` queries,
    all after the change, is within ``RECOVERY_TOLERANCE`` of ``target``: the smallest such
    count (≥ ``window``), or None when the stream ends first. ``spent``: shape (n,), USD."""
    after = spent[change_at:]
    if len(after) < window:
        return None
    means = np.convolve(after, np.ones(window) / window, mode="valid")
    ok = np.flatnonzero(np.abs(means - target) <= RECOVERY_TOLERANCE * target)
    return int(ok[0]) + window if ok.size else None


def paced_replay(
    ex: Experiment,
    warm: bytes,
    rows: np.ndarray,
    pacing: PacingConfig,
    *,
    share: float,
    seed: int = 0,
    batch: int = DEFAULT_BATCH,
    price_change_arm: str | None = None,
    greedy: bool = False,
    frontier: Sequence[tuple[float, float]] | None = None,
    passes: int = 1,
) -> BudgetRun:
    """Stream ``rows`` (seeded order) through the policy ``warm`` (``Policy.to_bytes``) paced
    by ``pacing``; with ``price_change_arm``, that arm's price doubles halfway through.
    ``greedy`` switches exploration off; ``frontier``: ``offline_frontier`` of these rows,
    when already computed; ``passes``: stream the rows this many times, each pass in its
    own seeded order (the policy then sees a row again: accuracy is flattered, spend is not)."""
    base = Policy.from_bytes(warm)
    check_pacing_mode(base.config.mode)
    policy = base.with_config(base.config.for_online().replace(seed=seed))
    fixed = ex.config.arms.fixed_costs_usd()
    ctl = PaceController(pacing, fixed)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(rows) for _ in range(passes)])
    n = len(order)
    change_at = n // 2 if price_change_arm else n + 1
    arm_j = ex.arm_names.index(price_change_arm) if price_change_arm else -1
    if price_change_arm and arm_j < 0:
        raise ConfigError(f"unknown arm {price_change_arm!r}; the arms are {ex.arm_names}")
    target = pacing.usd_per_10k_queries
    if target is None:
        raise ConfigError("the replay paces to budget.usd_per_10k_queries; set it")
    spent = np.zeros(n)
    got = np.zeros(n)
    start, changed = 0, False
    while start < n:
        if start >= change_at and not changed:
            changed = True
            fixed = fixed.copy()
            fixed[arm_j] *= PRICE_FACTOR
            policy.costs = normalise_costs(fixed)  # the catalogue's new normalised costs
            ctl.set_prices(fixed)
        stop = min(start + batch, n, change_at if start < change_at else n)
        idx = order[start:stop]
        lines = [ex.shared[i] for i in idx]
        decisions = policy.decide_lines(lines, p=ctl.p, greedy=greedy)
        for k, (i, d) in enumerate(zip(idx, decisions, strict=True)):
            factor = PRICE_FACTOR if start >= change_at and d.arm == arm_j else 1.0
            spent[start + k] = float(ex.cost_usd[i, d.arm]) * factor
            got[start + k] = float(ex.correct[i, d.arm])
            policy.learn_line(lines[k], d.arm, d.prob, got[start + k])
        ctl.observe(float(spent[start:stop].sum()), stop - start)
        ctl.update()
        start = stop

    burn = int(round(BURN_IN_SHARE * n))
    realised = float(spent[burn:].mean() * PER_10K)
    acc = float(got[burn:].mean())
    eps = 0.0 if greedy else policy.config.epsilon
    if frontier is None:
        frontier = offline_frontier(ex, base, rows)
    offline = frontier_acc(explored(frontier, ex, rows, eps), realised)
    offline_greedy = frontier_acc(frontier, realised)
    recovery = recovery_queries(spent, change_at, target / PER_10K) if price_change_arm else None
    return BudgetRun(
        share, target, seed, n, realised, abs(realised - target) / target, acc, offline,
        offline_greedy, ctl.p, price_change_arm, recovery,
    )  # fmt: skip


def summarise(runs: Sequence[BudgetRun]) -> BudgetRow:
    """Mean over seeds of runs at one target (and one price change, if any)."""
    if not runs:
        raise ConfigError("no runs to summarise")
    rec = [r.recovery_queries for r in runs if r.recovery_queries is not None]
    first = runs[0]
    return BudgetRow(
        share=first.share,
        target_cost_per_10k=first.target_cost_per_10k,
        runs=len(runs),
        queries=first.queries,
        realised_cost_per_10k=float(np.mean([r.realised_cost_per_10k for r in runs])),
        spend_error=float(np.mean([r.spend_error for r in runs])),
        spend_error_max=float(max(r.spend_error for r in runs)),
        acc=float(np.mean([r.acc for r in runs])),
        offline_acc_at_cost=float(np.mean([r.offline_acc_at_cost for r in runs])),
        offline_greedy_acc_at_cost=float(np.mean([r.offline_greedy_acc_at_cost for r in runs])),
        p_final=float(np.mean([r.p_final for r in runs])),
        price_change_arm=first.price_change_arm,
        recovery_queries=float(np.mean(rec)) if rec else None,
        recovered_runs=len(rec),
    )


def budget_study(
    ex: Experiment,
    shares: Sequence[float] = BUDGET_SHARES,
    *,
    seeds: Sequence[int] = (0,),
    pacing: PacingConfig | None = None,
    price_change_arm: str | None = None,
    batch: int = DEFAULT_BATCH,
    warm: bytes | None = None,
    greedy: bool = False,
    passes: int = 1,
) -> list[BudgetRow]:
    """Paced replays over validation + test at each target share of the dearest arm's cost
    per query (measured on those rows), one per seed; with ``price_change_arm``, a second
    row per target where that arm's price doubles halfway; ``passes``: see ``paced_replay``."""
    rows = np.concatenate([ex.split.val, ex.split.test])
    if warm is None:
        warm = ex.warm_policy(ex.config.policy.replace(mode="decoupled")).to_bytes()
    frontier = offline_frontier(ex, Policy.from_bytes(warm), rows)

    def run(cfg: PacingConfig, share: float, seed: int, arm: str | None = None) -> BudgetRun:
        return paced_replay(
            ex, warm, rows, cfg, share=share, seed=seed, batch=batch, price_change_arm=arm,
            greedy=greedy, frontier=frontier, passes=passes,
        )  # fmt: skip

    template = pacing or PacingConfig(usd_per_10k_queries=1.0)
    # What the same online router spends unpaced at p = 0 (a target at the dearest arm's
    # cost pins p there): a target above it is not binding.
    fixed_dearest = float(ex.config.arms.fixed_costs_usd().max() * PER_10K)
    unpaced = replace(template, usd_per_10k_queries=fixed_dearest, p_init=0.0)
    p0 = float(np.mean([run(unpaced, 1.0, s).realised_cost_per_10k for s in seeds]))
    dearest = float(ex.cost_usd[rows].mean(0).max() * PER_10K)
    out = []
    for share in shares:
        if not share > 0:
            raise ConfigError(f"budget share {share} must be > 0 (of the dearest arm's cost)")
        cfg = replace(template, usd_per_10k_queries=share * dearest)
        for arm in [None] + ([price_change_arm] if price_change_arm else []):
            row = summarise([run(cfg, share, s, arm) for s in seeds])
            out.append(replace(row, p0_cost_per_10k=p0))
    return out


def explored(
    points: Sequence[tuple[float, float]], ex: Experiment, rows: np.ndarray, epsilon: float
) -> list[tuple[float, float]]:
    """``points`` (USD per 10k, accuracy) of a greedy router under ε-greedy exploration:
    with probability ε the query goes to a uniformly random arm, so in expectation each
    point mixes with the random router's (cost, accuracy) — exactly, on recorded outcomes."""
    rand_cost = float(ex.cost_usd[rows].mean() * PER_10K)
    rand_acc = float(ex.correct[rows].mean())
    return [
        ((1 - epsilon) * c + epsilon * rand_cost, (1 - epsilon) * a + epsilon * rand_acc)
        for c, a in points
    ]


def offline_frontier(ex: Experiment, policy: Policy, rows: np.ndarray) -> list[tuple[float, float]]:
    """(USD per 10k, accuracy) of ``policy`` run greedy at every p of the calibration grid
    on ``rows``, learning nothing: the offline-calibrated router's reachable points."""
    scores = ex.correctness(policy, rows)
    points = sweep(scores, ex.reward_cost[rows], ex.correct[rows], ex.cost_usd[rows])
    return [(pt.cost_per_10k, pt.acc) for pt in points]
