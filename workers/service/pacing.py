"""Budget pacing in the live service: routers report spend, one controller turns it into p.

- Every router adds each answer's ``cost_usd`` and one query to a time-bucketed hash
  (``spend:{bucket}``, ``SPEND_BUCKET_S`` seconds each) inside the transaction that writes
  the responses (``record_spend``), so spend costs no round trip of its own and is counted
  exactly once with the response.
- The learner runs one ``Pacer`` (there is one learner per policy, hence one controller per
  deployment): every ``update_every_s`` it reads the buckets of its window, feeds what was
  added since its last look to ``bandit.pacing.PaceController``, and writes the new p and
  the controller's state (with what it has seen of each bucket) in one transaction. A
  restarted learner goes on from that state; a price changed in the config meanwhile is
  followed without starting over (``PaceController.from_state``).
- Every router reads p once per batch (``PaceReader``), decides with it and logs it in the
  decision record and the response. Without a budget, p is the config's constant and no
  key is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from bandit.config import RoutingConfig
from bandit.errors import ConfigError
from bandit.pacing import PER_10K, PaceController, PacingConfig, check_pacing_mode
from workers.service.metrics import Metrics
from workers.service.settings import Keys, ServiceSettings

log = logging.getLogger(__name__)
# Resolution of the spend counters: the window slides by this much. Ten seconds keeps a
# 5-minute window at 30 small hashes, read in one pipeline per update.
SPEND_BUCKET_S = 10
DEFAULT_UPDATE_EVERY_S = 1.0  # how often the controller folds new spend into p
# The window of the exported spend (metallm_spend_usd_per_10k), in seconds: long enough to
# hold hundreds of answers at a few queries per second, short against the alert's 15 minutes.
DEFAULT_WINDOW_S = 300.0
# Buckets outlive the window by a few buckets, so a controller that was down briefly still
# finds the spend it had not seen.
BUCKET_SLACK = 6
# The [budget] table's targets, by the ServiceSettings field that overrides each.
TARGETS = {"usd_per_10k_queries": "budget_usd_per_10k", "usd_per_hour": "budget_usd_per_hour"}
SERVICE_KNOBS = ("update_every_s", "window_s")


@dataclass(frozen=True)
class BudgetSettings:
    """A spend target with the controller's knobs (``pacing``), and how the service runs it:
    ``update_every_s`` — seconds between updates of p; ``window_s`` — seconds of spend the
    controller reads and exports as ``metallm_spend_usd_per_10k``."""

    pacing: PacingConfig
    update_every_s: float = DEFAULT_UPDATE_EVERY_S
    window_s: float = DEFAULT_WINDOW_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.update_every_s) and self.update_every_s > 0):
            raise ConfigError(
                f"budget.update_every_s = {self.update_every_s!r} must be > 0 seconds"
            )
        if not (math.isfinite(self.window_s) and self.window_s >= SPEND_BUCKET_S):
            raise ConfigError(
                f"budget.window_s = {self.window_s!r} must be ≥ {SPEND_BUCKET_S} seconds "
                "(one spend bucket)"
            )

    @property
    def buckets(self) -> int:
        """Buckets in the window, the current one included."""
        return math.ceil(self.window_s / SPEND_BUCKET_S) + 1


def budget_settings(settings: ServiceSettings, config: RoutingConfig) -> BudgetSettings | None:
    """The budget of a deployment, or None when no target is set. Targets come from the
    settings (file [service] < METALLM_* < options) when > 0, else from the [budget] table;
    the knobs from the [budget] table. A target in paper mode is a ConfigError."""
    table: Mapping[str, Any] = dict(config.budget)
    allowed = set(TARGETS) | set(SERVICE_KNOBS) | {f.name for f in fields(PacingConfig)}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"[budget]: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")  # fmt: skip
    values = dict(table)
    for key, field_name in TARGETS.items():
        given = getattr(settings, field_name)
        if given > 0:
            values[key] = given
        elif values.get(key) in (0, 0.0):
            values.pop(key)  # 0 = none, as in the settings
    if not any(values.get(k) is not None for k in TARGETS):
        if table:
            log.warning("[budget] has no target (usd_per_10k_queries, usd_per_hour): p stays %g",
                        config.policy.p)  # fmt: skip
        return None
    check_pacing_mode(config.policy.mode)
    service = {k: values.pop(k) for k in SERVICE_KNOBS if k in values}
    try:
        return BudgetSettings(PacingConfig(**values), **service)
    except TypeError as exc:
        raise ConfigError(f"[budget]: {exc}") from None


def record_spend(pipe: Pipeline, keys: Keys, spend_usd: float, queries: int, now_s: float) -> None:
    """Queue the spend of ``queries`` answers on ``pipe`` (the router's response transaction),
    in the bucket of ``now_s`` (unix seconds)."""
    if queries <= 0:
        return
    key = keys.spend_bucket(int(now_s // SPEND_BUCKET_S))
    pipe.hincrbyfloat(key, "usd", spend_usd)
    pipe.hincrby(key, "queries", queries)
    pipe.expire(key, int(DEFAULT_WINDOW_S) + BUCKET_SLACK * SPEND_BUCKET_S)


class PaceReader:
    """The router's side: the p to decide a batch with. ``budget`` None: the config's p,
    without a round trip. A Redis error keeps the last p read (the batch's own writes then
    wait for Redis through the router's reconnect logic)."""

    def __init__(self, r: aioredis.Redis, keys: Keys, config_p: float,
                 budget: BudgetSettings | None, metrics: Metrics) -> None:  # fmt: skip
        self.r, self.keys, self.budget, self.m = r, keys, budget, metrics
        self.p = budget.pacing.p_init if budget else config_p
        self.m.budget_p.set(self.p)

    @property
    def paced(self) -> bool:
        return self.budget is not None

    async def current(self) -> float:
        if self.budget is None:
            return self.p
        try:
            raw: Any = await self.r.get(self.keys.budget_p)
        except (RedisError, OSError) as exc:
            log.warning("could not read p (%s); deciding with the last one, %g", exc, self.p)
            return self.p
        if raw is not None:
            try:
                p = float(raw)
            except ValueError:
                p = math.nan
            if math.isfinite(p) and p >= 0:
                self.p = p
            else:
                log.warning("%s holds %r, not a p ≥ 0; deciding with %g", self.keys.budget_p,
                            raw, self.p)  # fmt: skip
        self.m.budget_p.set(self.p)
        return self.p


class Pacer:
    """The one controller of a deployment, run by the learner: see the module docstring.
    ``arm_costs_usd``: each arm's fixed USD per query, in the policy's arm order."""

    def __init__(self, r: aioredis.Redis, keys: Keys, budget: BudgetSettings,
                 arm_costs_usd: Any, metrics: Metrics) -> None:  # fmt: skip
        self.r, self.keys, self.budget, self.m = r, keys, budget, metrics
        self.costs = [float(c) for c in arm_costs_usd]
        self.controller = PaceController(budget.pacing, self.costs)
        # What was seen of each bucket still in the window: {bucket: (usd, queries)}.
        self.seen: dict[int, tuple[float, int]] = {}
        self.spend_per_10k = 0.0  # over the last window_s seconds

    async def start(self) -> None:
        """Go on from the state in Redis (under today's prices), and publish p."""
        raw: Any = await self.r.get(self.keys.budget_state)
        if raw is not None:
            try:
                state = json.loads(raw)
                self.controller = PaceController.from_state(
                    self.budget.pacing, self.costs, state["controller"]
                )
                self.seen = {int(b): (float(u), int(q)) for b, (u, q) in state["seen"].items()}
                log.info("pacing goes on from its state: p = %g after %d answers",
                         self.controller.p, self.controller.observed_queries)  # fmt: skip
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                log.warning("pacing state in %s unusable (%s): starting at p = %g",
                            self.keys.budget_state, exc, self.budget.pacing.p_init)  # fmt: skip
        await self._store()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.update()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.budget.update_every_s)

    async def update(self, now_s: float | None = None) -> float:
        """Fold the spend added since the last update into p; store and export it."""
        now_s = time.time() if now_s is None else now_s
        last = int(now_s // SPEND_BUCKET_S)
        buckets = list(range(last - self.budget.buckets + 1, last + 1))
        async with self.r.pipeline(transaction=False) as pipe:
            for b in buckets:
                pipe.hmget(self.keys.spend_bucket(b), ["usd", "queries"])
            replies = await pipe.execute()
        new_usd, new_queries = 0.0, 0
        window_usd, window_queries = 0.0, 0
        seen: dict[int, tuple[float, int]] = {}
        for b, (usd_raw, q_raw) in zip(buckets, replies, strict=True):
            usd, queries = float(usd_raw or 0), int(q_raw or 0)
            old_usd, old_queries = self.seen.get(b, (0.0, 0))
            new_usd += max(0.0, usd - old_usd)
            new_queries += max(0, queries - old_queries)
            window_usd, window_queries = window_usd + usd, window_queries + queries
            if queries:
                seen[b] = (usd, queries)
        self.seen = seen
        self.controller.observe(new_usd, new_queries, now_s)
        self.controller.update()
        self.spend_per_10k = window_usd / window_queries * PER_10K if window_queries else 0.0
        await self._store()
        return self.controller.p

    async def _store(self) -> None:
        c = self.controller
        state = {"controller": c.to_state(),
                 "seen": {str(b): [u, q] for b, (u, q) in self.seen.items()}}  # fmt: skip
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.budget_p, repr(c.p))
            pipe.set(self.keys.budget_state, json.dumps(state))
            await pipe.execute()
        target = c.target_per_query_usd
        self.m.budget_p.set(c.p)
        self.m.spend_per_10k.set(self.spend_per_10k)
        self.m.budget_target_per_10k.set(target * PER_10K if target is not None else 0.0)
        self.m.budget_shortfall_per_10k.set(c.shortfall_per_10k)
