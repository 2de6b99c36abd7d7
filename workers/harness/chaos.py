"""The settings and the shared state of a fault-injection run: start the workers on a fresh prefix, stream real queries
and their labels, inject one fault, wait (bounded) for the system to settle, and account.

``chaos_faults`` holds the faults, ``chaos_row`` runs one row of the table.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bandit.errors import ConfigError
from workers.harness.chaos_procs import (
    Managed,
    RedisServer,
    ReplayAdmin,
    Workers,
    child_env,
    cli_argv,
)
from workers.harness.chaos_tally import Invalid
from workers.harness.demo import free_port
from workers.service.settings import Keys

log = logging.getLogger(__name__)
TAG = "chaos_tag"  # marker field of intentionally invalid entries, found again on the dead stream
POLL_S = 0.05
RECENT_ENTRIES = 200  # where a query sent just before a connection error would be
REDIS_DOWN_S = 2.0  # how long Redis stays dead before its restart
ROUTER_DOWN_S = 1.0
FILLER = "The court considered whether the earlier holding still stands. "


@dataclass(frozen=True)
class ChaosOptions:
    """Timings of a run. ``rate_qps``: queries per second per row; ``queries``: valid queries
    per row; ``settle_s``: how long after its fault a row may take to answer everything;
    ``drain_s``: how long the learner may take to drain the feedback stream and publish;
    ``outage_s``: how long every arm fails in the provider-outage row; ``claim_idle_ms``:
    the workers' claim time (slow arms answer after it)."""

    queries: int = 120
    rate_qps: float = 8.0
    routers: int = 3
    settle_s: float = 60.0
    drain_s: float = 30.0
    ready_s: float = 120.0
    outage_s: float = 20.0
    slow_s: float = 12.0
    claim_idle_ms: int = 3000
    snapshot_every_s: float = 1.0
    base_latency_ms: float = 300.0

    def __post_init__(self) -> None:
        for name in ("queries", "routers", "claim_idle_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be ≥ 1")
        for name in ("rate_qps", "settle_s", "drain_s", "ready_s", "outage_s", "slow_s",
                     "snapshot_every_s"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)} must be > 0")
        if self.base_latency_ms < 0:
            raise ConfigError(f"base_latency_ms = {self.base_latency_ms} must be ≥ 0")

    @property
    def send_s(self) -> float:
        """Seconds the valid queries of a row take to send."""
        return self.queries / self.rate_qps


@dataclass
class Run:
    """What lives for the whole run: Redis, the replay server, the texts not used yet."""

    opts: ChaosOptions
    redis_server: RedisServer
    replay: Managed
    admin: ReplayAdmin
    checkout: Path
    env: dict[str, str]
    work: Path
    texts: Iterator[tuple[str, str]]  # (data set id, text), each used once per run
    labels: dict[str, str]  # data set text → true label
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis_server.port, socket_timeout=5, socket_connect_timeout=2)


class Ctx:
    """A row in progress: what the fault thread and the producer share."""

    def __init__(self, run: Run, fault: str, n: int) -> None:
        self.run, self.fault = run, fault
        self.keys = Keys(f"chaos-{run.run_id}-{n}:")
        self.valid: dict[str, str] = {}  # query id → text
        self.invalid: list[Invalid] = []
        self.labelled: set[str] = set()
        self.sending_done = threading.Event()
        self.fault_done = threading.Event()
        self.lock = threading.Lock()
        self.ready_urls: dict[str, str] = {}
        self.workers = self._workers()

    def _workers(self) -> Workers:
        o, run = self.opts, self.run
        env = child_env(run.env, run.checkout, {
            "METALLM_REPLAY_URL": run.admin.url, "METALLM_CLAIM_IDLE_MS": str(o.claim_idle_ms),
            "METALLM_SNAPSHOT_EVERY_S": str(o.snapshot_every_s), "METALLM_EMBEDDER_PROCESS": "false",
        })  # fmt: skip
        common = ["--dataset", "overruling", "--redis-url", run.redis_server.url,
                  "--prefix", self.keys.prefix]  # fmt: skip
        log_path = run.work / f"{self.keys.prefix.rstrip(':')}.log"

        def worker(command: str, name: str) -> Managed:
            # /readyz on a port of its own says when the worker holds its model.
            port = free_port()
            self.ready_urls[name] = f"http://127.0.0.1:{port}/readyz"
            argv = cli_argv(command, *common, "--consumer", name, "--metrics-port", str(port))
            return Managed(name, argv, env, log_path)

        learner = worker("learn", "learner")
        routers = [worker("route", f"router-{k}") for k in range(1, o.routers + 1)]
        return Workers(routers, learner)

    def ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(self.ready_urls[name], timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    @property
    def opts(self) -> ChaosOptions:
        return self.run.opts

    def wait_until(self, what: str, cond: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``cond`` (a Redis error counts as not yet) until true or ``timeout_s``,
        restarting workers that crash meanwhile; returns whether it came true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.workers.check()
            try:
                if cond():
                    return True
            except redis.RedisError:
                pass
            time.sleep(POLL_S)
        log.warning("%s: gave up waiting for %s after %.0f s", self.fault, what, timeout_s)
        return False


# -- faults -------------------------------------------------------------------------------
# Each runs in its own thread, started a third of the way into sending.


def decoded(v: Any) -> str:
    """A Redis reply's bytes as text (undecodable bytes replaced: they are fault data)."""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
