"""Calling the arms: a decision's chosen arm first, retried with capped exponential backoff
and full jitter on timeouts, 429 and 5xx, then the next arms in the policy's order.

The router decides; the dispatcher only calls. It keeps the concurrency limits (all calls,
and per provider) and counts provider errors and fallbacks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bandit.arms import ArmCatalogue
from bandit.policy import Decision
from workers.service.metrics import Metrics
from workers.service.providers import Completion, Provider, ProviderError
from workers.service.retry import RetryPolicy

ERROR_CHARS = 2000  # the most of the joined provider errors kept in a response


@dataclass
class Answer:
    """What came back for one query: the arm that answered (the chosen one when all
    failed), its completion (None when every arm failed), whether a fallback arm answered,
    the errors met on the way, and the seconds it all took."""

    arm: int
    completion: Completion | None
    fell_back: bool
    error: str
    latency_s: float


class Dispatcher:
    def __init__(
        self,
        arms: ArmCatalogue,
        providers: Mapping[str, Provider],
        retry: RetryPolicy,
        metrics: Metrics,
        *,
        max_in_flight: int,
        provider_concurrency: int,
    ) -> None:
        self.arms, self.providers, self.retry, self.m = arms, providers, retry, metrics
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._per_provider = {name: asyncio.Semaphore(provider_concurrency) for name in providers}
        self._rng = random.Random()  # backoff jitter: independent across replicas

    async def answer(self, text: str, d: Decision) -> Answer:
        """Call the chosen arm; on failure retry with backoff, then fall back down the
        policy's order. Never raises: the Answer carries the error."""
        t0 = time.perf_counter()
        errors: list[str] = []
        for rank, arm in enumerate(d.fallback_order()):
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
                    if rank:
                        self.m.fallbacks.labels(self.arms.arms[d.arm].name).inc()
                    return Answer(arm, completion, rank > 0, "", time.perf_counter() - t0)
                except ProviderError as exc:
                    self.m.provider_errors.labels(spec.name, exc.kind).inc()
                    errors.append(f"{spec.name}: {exc}")
                    if not exc.retryable or attempt == self.retry.max_attempts:
                        break
                    await asyncio.sleep(self.retry.delay(attempt, self._rng))
        self.m.failed.inc()
        error = "; ".join(errors)[-ERROR_CHARS:]
        return Answer(d.arm, None, False, error, time.perf_counter() - t0)

    async def close(self) -> None:
        for p in self.providers.values():
            await p.close()
