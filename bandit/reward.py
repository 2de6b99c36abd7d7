"""The reward MetaLLM maximises: r = a − p·c (Nguyen et al., eq. 4).

a ∈ {0, 1} says whether the arm answered correctly, c is its normalised cost (the dearest
arm costs 1) and p ≥ 0 prices money against accuracy. Vowpal Wabbit minimises a cost, so
the policy learns −r.

``reward`` is the one place the formula is written: the policy's decisions and its
paper-mode VW cost, budget calibration, evaluation and the learner's reward metric all call
it (tests/test_invariants.py checks they agree).
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

from bandit.errors import ConfigError


def check_p(p: float) -> float:
    if not isinstance(p, int | float) or not math.isfinite(p) or p < 0:
        raise ConfigError(
            f"p = {p!r} must be a finite number ≥ 0 (weight of cost against accuracy)"
        )
    return float(p)


@overload
def reward(correct: float, cost: float, p: float) -> float: ...
@overload
def reward(correct: np.ndarray, cost: np.ndarray | float, p: float) -> np.ndarray: ...
@overload
def reward(correct: np.ndarray | float, cost: np.ndarray, p: float) -> np.ndarray: ...


def reward(correct: np.ndarray | float, cost: np.ndarray | float, p: float) -> np.ndarray | float:
    """r = a − p·c: a float for two numbers, else elementwise over broadcastable arrays of
    correctness, shape (..., n_arms), and normalised cost, e.g. shape (n_arms,).

    p is checked once per call, so score a batch with one call, not one call per query.
    """
    p = check_p(p)
    if isinstance(correct, int | float) and isinstance(cost, int | float):
        return float(correct) - p * float(cost)
    return np.asarray(correct, dtype=np.float64) - p * np.asarray(cost, dtype=np.float64)


def explicit_reward(value: float, cost: float, p: float) -> float:
    """For tasks where correctness is not a label match, the application sends a score in
    [0, 1] in place of a; the cost term is the same as for labelled tasks."""
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"explicit reward {value!r} must be a number in [0, 1]")
    return reward(float(value), float(cost), p)


def is_correct(answer_label: str | None, true_label: str) -> float:
    """1.0 when the parsed answer equals the true label (case and space insensitive)."""
    if answer_label is None:
        return 0.0
    return float(answer_label.strip().casefold() == true_label.strip().casefold())
