"""Exploration: turn per-arm scores into a probability mass function, and sample from it.

Used where the decision depends on p at decision time (the decoupled mode), so the price
shift has to happen before exploring. ε-greedy follows Vowpal Wabbit's own formula.
"""

from __future__ import annotations

import numpy as np

from bandit.errors import ConfigError


def epsilon_greedy(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """pmf of shape (n_arms,): 1 − ε + ε/K on the best score (first on ties), ε/K elsewhere.

    scores: shape (n_arms,), higher is better.
    """
    if not 0 <= epsilon <= 1:
        raise ConfigError(f"epsilon = {epsilon} must be in [0, 1]")
    k = scores.shape[-1]
    pmf = np.full(k, epsilon / k)
    pmf[int(np.argmax(scores))] += 1.0 - epsilon
    return pmf


def softmax(scores: np.ndarray, temperature_inv: float) -> np.ndarray:
    """pmf ∝ exp(λ·score); λ = ``temperature_inv`` ≥ 0 (0 is uniform)."""
    z = temperature_inv * (scores - scores.max())
    e = np.exp(z)
    return e / e.sum()


def sample(pmf: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn from ``pmf`` (shape (n_arms,))."""
    u = rng.random()
    idx = int(np.searchsorted(np.cumsum(pmf), u * pmf.sum(), side="right"))
    return min(idx, len(pmf) - 1)
