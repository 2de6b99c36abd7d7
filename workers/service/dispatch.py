"""Calling the arms: the drawn arm, retried with capped exponential backoff and full jitter
on timeouts, 429 and 5xx; when it still fails, a new draw over the arms that are left.

Each arm has a circuit breaker (``Breakers``): an arm that keeps failing is out of every
decision for a cool-down, and a failed query is drawn again from the policy's pmf
renormalised over the healthy arms it has not tried, so the arm that answers was drawn with
the probability logged with it and its answer is learned like any other. When no arm is
healthy the query waits for one, up to ``no_arm_wait_s``, before an error response: an
outage costs latency, not errors.

The router decides; the dispatcher calls. It keeps the concurrency limits (all calls, and
per provider) and counts provider errors and fallbacks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from bandit.arms import ArmCatalogue
from bandit.policy import Decision
from workers.service.breaker import Breakers
from workers.service.metrics import Metrics
from workers.service.providers import Completion, Provider, ProviderError
from workers.service.retry import RetryPolicy
from workers.service.settings import ServiceSettings

ERROR_CHARS = 2000  # the most of the joined provider errors kept in a response


Redraw = Callable[[np.ndarray], Decision]
"""A new decision for the same query over the arms of a mask, shape (n_arms,) of bool."""


@dataclass
class Answer:
    """What came back for one query: the decision that was called last (the first draw, or
    a redraw after failures), its completion (None when every arm failed), whether it is a
    redraw, the errors met on the way, and the seconds it all took."""

    decision: Decision
    completion: Completion | None
    fell_back: bool
    error: str
    latency_s: float

    @property
    def arm(self) -> int:
        return self.decision.arm


class Dispatcher:
    def __init__(
        self,
        arms: ArmCatalogue,
        providers: Mapping[str, Provider],
        retry: RetryPolicy,
        metrics: Metrics,
        breakers: Breakers,
        *,
        max_in_flight: int,
        provider_concurrency: int,
        no_arm_wait_s: float,
    ) -> None:
        self.arms, self.providers, self.retry, self.m = arms, providers, retry, metrics
        self.breakers, self.no_arm_wait_s = breakers, no_arm_wait_s
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._per_provider = {name: asyncio.Semaphore(provider_concurrency) for name in providers}
        self._rng = random.Random()  # backoff jitter: independent across replicas

    async def answer(self, text: str, d: Decision, redraw: Redraw) -> Answer:
        """Call the drawn arm; on failure draw again over the healthy arms not tried yet,
        waiting for one while none is healthy, until ``no_arm_wait_s`` has passed. Never
        raises: the Answer carries the error."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.no_arm_wait_s
        first = d.arm
        errors: list[str] = []
        tried = np.zeros(len(self.arms.arms), dtype=bool)  # failed for this query this round
        refused = tried.copy()  # failed with a client error: that arm will not answer it
        while True:
            if tried[d.arm] or not self.breakers.available()[d.arm]:
                drawn = await self._redraw(redraw, tried, refused, deadline)
                if drawn is None:
                    break
                d = drawn
            completion = await self._call(d.arm, text, errors)
            if completion is not None:
                if d.arm != first:
                    self.m.fallbacks.labels(self.arms.arms[first].name).inc()
                return Answer(d, completion, d.arm != first, "", time.perf_counter() - t0)
            tried[d.arm] = True
            if errors[-1].startswith("client:"):
                refused[d.arm] = True
        self.m.failed.inc()
        error = "; ".join(e.partition(":")[2] for e in errors)[-ERROR_CHARS:]
        return Answer(d, None, False, error, time.perf_counter() - t0)

    async def _redraw(
        self, redraw: Redraw, tried: np.ndarray, refused: np.ndarray, deadline: float
    ) -> Decision | None:
        """A new draw over the healthy arms not tried (a new round when every healthy arm
        was tried), or None when the deadline passes first or every arm refused the query."""
        attempt = 0
        while not refused.all():
            healthy = self.breakers.available() & ~refused
            if (healthy & ~tried).any():
                return redraw(healthy & ~tried)
            if healthy.any():  # every healthy arm failed once: another round of all of them
                tried[:] = refused
                attempt += 1
                wait = self.retry.delay(attempt, self._rng)
            else:
                wait = self.breakers.next_in_s()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(max(wait, 0.001), left))
        return None

    async def _call(self, arm: int, text: str, errors: list[str]) -> Completion | None:
        """One arm with retries; None when it failed (the errors appended as 'kind:msg')."""
        spec = self.arms.arms[arm]
        provider = self.providers[spec.name]
        prompt = spec.render(text)
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                async with self._in_flight, self._per_provider[spec.name]:
                    self.m.in_flight.inc()
                    try:
                        completion = await provider.complete(prompt)
                    finally:
                        self.m.in_flight.dec()
                self.breakers.succeeded(arm)
                return completion
            except ProviderError as exc:
                self.m.provider_errors.labels(spec.name, exc.kind).inc()
                errors.append(f"{exc.kind}:{spec.name}: {exc}")
                if not exc.retryable:
                    return None
                self.breakers.failed(arm)
                if attempt == self.retry.max_attempts or not self.breakers.available()[arm]:
                    return None
                await asyncio.sleep(self.retry.delay(attempt, self._rng))
        return None

    async def close(self) -> None:
        for p in self.providers.values():
            await p.close()


def build_dispatcher(settings: ServiceSettings, arms: ArmCatalogue, providers: Mapping[str, Provider],
                     metrics: Metrics, breakers: Breakers | None = None) -> Dispatcher:  # fmt: skip
    """A router's dispatcher under its settings (fresh circuit breakers unless given)."""
    s = settings
    retry = RetryPolicy(s.max_attempts, s.backoff_base_s, s.backoff_cap_s)
    breakers = breakers or Breakers(arms.names, s.breaker_failures, s.breaker_cooldown_s,
                                    on_change=metrics.breaker_changed)  # fmt: skip
    return Dispatcher(arms, providers, retry, metrics, breakers, max_in_flight=s.max_in_flight,
                      provider_concurrency=s.provider_concurrency, no_arm_wait_s=s.no_arm_wait_s)  # fmt: skip
