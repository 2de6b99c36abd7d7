"""Per-arm circuit breakers: an arm whose calls keep failing leaves the decision for a
cool-down, so an outage costs latency instead of errors.

An arm opens after ``failures`` failed calls in a row (every failed attempt counts, retries
included) and stays out of the decision for ``cooldown_s``; then it is back (half-open): the
next call that fails opens it again at once, the next that succeeds closes it. Exclusion
happens before the draw, so the pmf is renormalised over the arms that are in, and the
probability logged is the one the arm was really drawn with (see ``Policy.decide_lines``'s
``available``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class Breakers:
    def __init__(
        self,
        arm_names: Sequence[str],
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.arm_names = tuple(arm_names)
        self.failures, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self._on_change = on_change or (lambda name, is_open: None)
        n = len(self.arm_names)
        self._in_a_row = np.zeros(n, dtype=np.int64)
        self._open_until = np.zeros(n)  # clock time; 0 = closed

    def carry_from(self, old: Breakers) -> None:
        """Take over the state of the arms ``old`` has too (a config reload)."""
        for j, name in enumerate(self.arm_names):
            if name in old.arm_names:
                k = old.arm_names.index(name)
                self._in_a_row[j], self._open_until[j] = old._in_a_row[k], old._open_until[k]

    def available(self) -> np.ndarray:
        """Shape (n_arms,), True for the arms a decision may draw now."""
        return self._open_until <= self._clock()

    def next_in_s(self) -> float:
        """Seconds until the first open arm is back (0 when one is in already)."""
        now = self._clock()
        if (self._open_until <= now).any():
            return 0.0
        return float(self._open_until.min() - now)

    def succeeded(self, arm: int) -> None:
        self._in_a_row[arm] = 0
        if self._open_until[arm]:
            self._open_until[arm] = 0.0
            log.info("arm %s answers again: closed", self.arm_names[arm])
            self._on_change(self.arm_names[arm], False)

    def failed(self, arm: int) -> None:
        self._in_a_row[arm] += 1
        half_open = self._open_until[arm] and self._open_until[arm] <= self._clock()
        if half_open or (self._in_a_row[arm] >= self.failures and not self._open_until[arm]):
            self._open_until[arm] = self._clock() + self.cooldown_s
            log.warning(
                "arm %s failed %d calls in a row: out of the decision for %.0f s",
                self.arm_names[arm], int(self._in_a_row[arm]), self.cooldown_s,
            )  # fmt: skip
            self._on_change(self.arm_names[arm], True)
