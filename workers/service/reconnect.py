"""A worker's link to Redis: connecting at start-up, noticing an outage, reconnecting.

A worker that never reached Redis has a configuration problem and stops with one line
(``RedisUnreachableError``). Once it has run, a lost connection is an outage: the worker
marks itself unready, pings with capped exponential backoff and full jitter until Redis
answers, and carries on (rq's ``BaseWorker`` reconnect, dramatiq's consumer restart on
``ConnectionError``). Writes of work already paid for (decisions, LLM answers) wait for
Redis through the outage instead of being dropped (``RedisLink.persist``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bandit.errors import ConfigError, MetalLMError
from workers.service.health import HealthState
from workers.service.metrics import Metrics
from workers.service.retry import compute_backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# What an outage looks like to redis-py (BusyLoadingError, Redis replaying its AOF after a
# restart, is a ConnectionError). Anything else is a bug or a configuration error.
REDIS_OUTAGE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
_UNREACHABLE: tuple[type[Exception], ...] = (
    *REDIS_OUTAGE,
    OSError,
)  # at start-up, a socket error is the same
CONNECT_TIMEOUT_S = 5.0  # a Redis host that does not answer SYN (routing, firewall)
# A reply slower than this (beyond a blocking read's own wait) is a dead connection: a
# half-open TCP connection would otherwise hang the loop for good.
REPLY_TIMEOUT_S = 10.0
WAKE_S = 0.25  # how often a waiter looks at the stop deadline


class RedisUnreachableError(MetalLMError, ConnectionError):
    """Redis did not answer when the command or worker started."""


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def check_redis_url(url: str) -> str:
    """``url`` when redis-py can parse it, else a ConfigError that says so."""
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL {url!r} is not a Redis URL: {exc}") from None
    return url


def unreachable(url: str, exc: BaseException) -> RedisUnreachableError:
    return RedisUnreachableError(
        f"cannot reach Redis at {redacted(url)}: {str(exc).rstrip('.') or exc.__class__.__name__}; "
        "check REDIS_URL (or --redis-url) and that Redis is running"
    )


def worker_client(url: str, block_ms: int) -> aioredis.Redis:
    """A client for a worker. redis-py's own retries are off: a transaction re-sent after a
    lost reply could run twice (the router checks what it did before writing again), and
    an outage must show (unready, ``metallm_redis_connected`` 0) instead of stalling the
    loop inside the client."""
    return aioredis.from_url(
        check_redis_url(url),
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=block_ms / 1000 + REPLY_TIMEOUT_S,
    )


async def connect(url: str, block_ms: int = 0) -> aioredis.Redis:
    """A worker's client, once Redis has answered PING (else RedisUnreachableError)."""
    r = worker_client(url, block_ms)
    try:
        await r.ping()
    except _UNREACHABLE as exc:
        await r.aclose()
        raise unreachable(url, exc) from None
    return r


def check_reachable(url: str) -> None:
    """RedisUnreachableError (or ConfigError for a malformed URL) unless Redis at ``url``
    answers PING, in one try: the first contact of a command-line tool, whose own client
    then keeps redis-py's retries."""
    import redis

    r = redis.Redis.from_url(check_redis_url(url), retry=Retry(NoBackoff(), 0),
                             socket_connect_timeout=CONNECT_TIMEOUT_S)  # fmt: skip
    try:
        r.ping()
    except _UNREACHABLE as exc:
        raise unreachable(url, exc) from None
    finally:
        r.close()


class RedisLink:
    """The connection state one worker process shares between its roles and tasks.

    ``lost`` is called by whoever sees an outage first; one task then pings Redis with
    backoff (``base_s``, ``cap_s``: seconds, full jitter) until it answers. Everyone else
    waits in ``wait_back``. After a stop, waiting ends ``stop_grace_s`` seconds later."""

    def __init__(self, r: aioredis.Redis, url: str, health: HealthState, metrics: Metrics,
                 base_s: float, cap_s: float, stop_grace_s: float) -> None:  # fmt: skip
        self.r, self.url, self.health, self.m = r, url, health, metrics
        self.base_s, self.cap_s, self.stop_grace_s = base_s, cap_s, stop_grace_s
        self.generation = 0  # reconnects so far: tells an old error from a new outage
        self._back = asyncio.Event()
        self._back.set()
        self._deadline: float | None = None  # monotonic time after which waiting stops
        self._reconnecting: asyncio.Task[None] | None = None
        self.m.redis_connected.set(1)

    @property
    def connected(self) -> bool:
        return self._back.is_set()

    def stopping(self) -> None:
        """The worker was asked to stop: wait for Redis at most ``stop_grace_s`` more."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.stop_grace_s

    def lost(self, exc: BaseException, generation: int | None = None) -> None:
        """Redis failed with ``exc``; ``generation``: the link's generation when the work
        that failed started (an error from before the last reconnect is not a new outage)."""
        if generation is not None and generation < self.generation:
            return
        if not self._back.is_set():
            return
        self._back.clear()
        self.health.redis_connected = False
        self.m.redis_connected.set(0)
        log.warning("lost Redis at %s (%s: %s); reconnecting with backoff up to %.1f s",
                    redacted(self.url), exc.__class__.__name__, exc, self.cap_s)  # fmt: skip
        self._reconnecting = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        t0, attempt = time.monotonic(), 0
        # Every pooled connection predates the outage and may be dead: closed now, the next
        # command of each task connects afresh instead of failing once more after Redis is
        # back (which would look like a second outage).
        await self.r.connection_pool.disconnect()
        while True:
            attempt += 1
            await asyncio.sleep(compute_backoff(attempt, self.base_s, self.cap_s))
            try:
                await self.r.ping()
                break
            except REDIS_OUTAGE as exc:
                log.debug("Redis still unreachable (attempt %d): %s", attempt, exc)
        self.generation += 1
        self.m.redis_reconnects.inc()
        self.m.redis_connected.set(1)
        self.health.redis_connected = True
        self._back.set()
        log.info("Redis at %s is back after %.1f s (%d attempts)",
                 redacted(self.url), time.monotonic() - t0, attempt)  # fmt: skip

    async def wait_back(self) -> bool:
        """True once Redis answers again; False when the stop deadline passed first."""
        while not self._back.is_set():
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._back.wait(), WAKE_S)
        return True

    async def persist(self, write: Callable[[bool], Awaitable[T]], what: str = "write") -> T:
        """``write(retrying)`` until it succeeds, waiting for Redis through outages; re-raises
        the outage once the stop deadline has passed. ``retrying`` is True after a failed
        attempt, whose effect is unknown (its reply may have been lost)."""
        retrying = False
        while True:
            try:
                return await write(retrying)
            except REDIS_OUTAGE as exc:
                self.lost(exc)
                if not await self.wait_back():
                    log.error("gave up %s: Redis still unreachable %.0f s after stop",
                              what, self.stop_grace_s)  # fmt: skip
                    raise
                retrying = True

    async def close(self) -> None:
        if self._reconnecting is not None and not self._reconnecting.done():
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
