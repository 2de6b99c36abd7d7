"""Budget calibration: pick p on validation so that spend stays within a budget b.

The decoupled decision for query i at price weight p is argmax_j P̂_ij − p·c_j; for one
query the chosen arm's cost never rises as p rises, so sweeping p from 0 upwards walks
from the most accurate routing to the cheapest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bandit.errors import ConfigError
from bandit.reward import reward

# p from 0 to 1,000 in log steps: large enough that the cheapest arm wins every query
# (costs are normalised to ≤ 1 and predicted correctness differs by ≤ 1).
DEFAULT_P_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 121)])
PER_10K = 10_000


@dataclass(frozen=True)
class SweepPoint:
    """The routing at one p: accuracy (fraction) and USD per 10k queries."""

    p: float
    acc: float
    cost_per_10k: float


def choose(scores: np.ndarray, costs: np.ndarray, p: float) -> np.ndarray:
    """Arm index per query, shape (n,): argmax_j of the reward scores_ij − p·costs_(i)j.

    scores: shape (n, n_arms), predicted correctness; costs: shape (n_arms,) or (n, n_arms).
    """
    return np.argmax(reward(scores, costs, p), axis=1)


def outcome(correct: np.ndarray, cost_usd: np.ndarray, arms: np.ndarray) -> tuple[float, float]:
    """(accuracy, USD per 10k queries) when query i goes to arm ``arms[i]``."""
    rows = np.arange(len(arms))
    return float(correct[rows, arms].mean()), float(cost_usd[rows, arms].mean() * PER_10K)


def sweep(
    scores: np.ndarray,
    costs: np.ndarray,
    correct: np.ndarray,
    cost_usd: np.ndarray,
    grid: Sequence[float] = tuple(DEFAULT_P_GRID),
) -> list[SweepPoint]:
    """The routing's accuracy and cost at every p of ``grid``."""
    points = []
    for p in grid:
        acc, cost = outcome(correct, cost_usd, choose(scores, costs, p))
        points.append(SweepPoint(float(p), acc, cost))
    return points


def calibrate(
    points: Sequence[SweepPoint], budget_per_10k: float, n_val: int | None = None
) -> SweepPoint:
    """Pick the validation point to run at for a budget b (USD per 10k queries).

    Among the points whose validation cost is ≤ b, take the best validation accuracy; then,
    when ``n_val`` (the number of validation queries) is given, take the cheapest point
    whose accuracy is within one standard error of that best, sqrt(acc·(1 − acc)/n_val):
    differences smaller than that are noise, and paying for noise is not what a budget is
    for (the one-standard-error rule of model selection). With no point within the budget,
    the cheapest point."""
    if not budget_per_10k >= 0:
        raise ConfigError(f"budget = {budget_per_10k} must be ≥ 0 USD per 10k queries")
    if not points:
        raise ConfigError("calibration needs at least one sweep point")
    within = [pt for pt in points if pt.cost_per_10k <= budget_per_10k + 1e-12]
    if not within:
        return min(points, key=lambda pt: (pt.cost_per_10k, -pt.acc))
    best = max(within, key=lambda pt: (pt.acc, -pt.cost_per_10k, -pt.p))
    if not n_val:
        return best
    tolerance = math.sqrt(best.acc * (1.0 - best.acc) / n_val)
    near = [pt for pt in within if pt.acc >= best.acc - tolerance]
    return min(near, key=lambda pt: (pt.cost_per_10k, -pt.acc, pt.p))
