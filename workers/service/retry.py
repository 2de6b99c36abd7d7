"""Retries: a pure backoff function and the policy object that uses it."""

from __future__ import annotations

import random
from dataclasses import dataclass


def compute_backoff(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry ``attempt`` (1 = the first retry): capped exponential
    with full jitter, uniform in [0, min(cap, base·2^(attempt−1))]."""
    ceiling = min(cap_s, base_s * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return compute_backoff(attempt, self.base_s, self.cap_s, rng)
