"""Exploration: turn per-arm scores into a probability mass function, and sample from it.

Used where the decision depends on p at decision time (the decoupled mode), so the price
shift has to happen before exploring. ε-greedy follows Vowpal Wabbit's own formula.
"""

from __future__ import annotations

import numpy as np

from bandit.errors import ConfigError


def epsilon_greedy(
    scores: np.ndarray, epsilon: float, available: np.ndarray | None = None
) -> np.ndarray:
    """pmf of shape (n_arms,): 1 − ε + ε/K on the best score (first on ties), ε/K elsewhere.

    scores: shape (n_arms,), higher is better. ``available``: shape (n_arms,) of bool, the
    arms that may be drawn (None: all); the others get 0 and K counts only those that may.
    """
    if not 0 <= epsilon <= 1:
        raise ConfigError(f"epsilon = {epsilon} must be in [0, 1]")
    if available is None:
        k = scores.shape[-1]
        pmf = np.full(k, epsilon / k)
        pmf[int(np.argmax(scores))] += 1.0 - epsilon
        return pmf
    k = int(_check_available(available, scores).sum())
    pmf = np.where(available, epsilon / k, 0.0)
    pmf[int(np.argmax(np.where(available, scores, -np.inf)))] += 1.0 - epsilon
    return pmf


def softmax(
    scores: np.ndarray, temperature_inv: float, available: np.ndarray | None = None
) -> np.ndarray:
    """pmf ∝ exp(λ·score) over the ``available`` arms (None: all), 0 on the others;
    λ = ``temperature_inv`` ≥ 0 (0 is uniform)."""
    if available is not None:
        _check_available(available, scores)
        scores = np.where(available, scores, -np.inf)
    z = temperature_inv * (scores - scores.max())
    e = np.where(np.isfinite(z), np.exp(z), 0.0)
    return e / e.sum()


def restrict(pmf: np.ndarray, available: np.ndarray) -> np.ndarray:
    """``pmf`` renormalised over the ``available`` arms (uniform over them when it gave
    them no mass): for an explorer that cannot exclude arms itself (VW's, in paper mode)."""
    kept = np.where(_check_available(available, pmf), pmf, 0.0)
    total = kept.sum()
    return kept / total if total > 0 else available / available.sum()


def with_floor(
    pmf: np.ndarray, floor: np.ndarray, available: np.ndarray | None = None
) -> np.ndarray:
    """``pmf`` with arm j given at least ``floor[j]`` (shape (n_arms,), ≥ 0, summing to
    less than 1), the other arms scaled down in proportion to make room: a guaranteed
    exploration share for a new or drifted arm. An arm that may not be drawn (``available``
    False) is given no floor. The result is the pmf the arm is really drawn from.
    """
    floor = np.asarray(floor, dtype=np.float64)
    if available is not None:
        floor = np.where(_check_available(available, pmf), floor, 0.0)
    if floor.shape != pmf.shape or np.any(floor < 0) or floor.sum() >= 1:
        raise ConfigError(f"exploration floor {floor.tolist()} must be ≥ 0 per arm and sum below 1")
    out = np.asarray(pmf, dtype=np.float64).copy()
    raised = np.zeros(out.shape, dtype=bool)
    for _ in range(out.size):  # raising one arm can push another below its floor
        low = ~raised & (out < floor)
        if not low.any():
            break
        raised |= low
        rest = out[~raised].sum()
        room = 1.0 - floor[raised].sum()
        out = np.where(raised, floor, out * (room / rest if rest > 0 else 0.0))
    return out / out.sum()


def _check_available(available: np.ndarray, scores: np.ndarray) -> np.ndarray:
    if available.shape != scores.shape or not available.any():
        raise ConfigError(
            f"available arms {available.tolist()} must be a non-empty mask of shape {scores.shape}"
        )
    return available


def sample(pmf: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn from ``pmf`` (shape (n_arms,))."""
    u = rng.random()
    idx = int(np.searchsorted(np.cumsum(pmf), u * pmf.sum(), side="right"))
    return min(idx, len(pmf) - 1)
