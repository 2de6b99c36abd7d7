"""One row of a fault-injection run: start the workers on a fresh prefix, stream real queries
and their labels, inject one fault, wait (bounded) for the system to settle, and account.

The faults are named functions run in a thread beside the producer, so that traffic keeps
flowing while a process is down; ``FAULTS`` lists them in the order of the table.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bandit.errors import ConfigError
from workers.harness.chaos_procs import (
    ChaosError,
    Managed,
    RedisServer,
    ReplayAdmin,
    Workers,
    child_env,
    cli_argv,
)
from workers.harness.chaos_tally import Invalid, Response, Row, tally
from workers.harness.demo import free_port
from workers.service.settings import LEARNERS_GROUP, Keys

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


def kill_router(ctx: Ctx) -> None:
    router = ctx.workers.routers[0]
    router.kill9()
    time.sleep(ROUTER_DOWN_S)
    router.start()


def kill_learner_steady(ctx: Ctx) -> None:
    ctx.workers.learner.kill9()
    ctx.workers.learner.start()


def kill_learner_backlog(ctx: Ctx) -> None:
    """Kill the learner, let labels pile up until sending is over, restart it and kill it
    again as soon as it has started on the backlog, then restart it for good."""
    learner, r = ctx.workers.learner, ctx.run.client()
    learner.kill9()
    ctx.sending_done.wait(ctx.opts.send_s + ctx.opts.settle_s)
    ctx.wait_until("labels to pile up", lambda: len(ctx.labelled) >= 0.8 * len(ctx.valid),
                   ctx.opts.settle_s)  # fmt: skip
    version = r.get(ctx.keys.model_version)
    learner.start()
    # "Started on it": the group's read position or the published version moved.
    before = _delivered(r, ctx.keys.feedback)
    ctx.wait_until("the learner to start on the backlog", lambda: _delivered(
        r, ctx.keys.feedback) != before or r.get(ctx.keys.model_version) != version,
        ctx.opts.ready_s)  # fmt: skip
    learner.kill9()
    learner.start()


def _delivered(r: redis.Redis, stream: str) -> str:
    for g in r.xinfo_groups(stream):
        if _s(g.get("name")) == LEARNERS_GROUP:
            return f"{_s(g.get('last-delivered-id'))}/{g.get('pending')}"
    return ""


def kill_redis(ctx: Ctx) -> None:
    server = ctx.run.redis_server
    server.process.kill9()
    time.sleep(REDIS_DOWN_S)
    server.start()


def client_kill(ctx: Ctx) -> None:
    """Every normal client connection dropped at once (the fault thread's own is spared)."""
    r = ctx.run.client()
    r.execute_command("CLIENT", "KILL", "TYPE", "normal")
    r.close()


def provider_outage(ctx: Ctx) -> None:
    ctx.run.admin.set_faults(ctx.opts.base_latency_ms, ctx.opts.base_latency_ms / 2, 1.0)
    time.sleep(ctx.opts.outage_s)
    ctx.run.admin.set_faults(ctx.opts.base_latency_ms, ctx.opts.base_latency_ms / 2, 0.0)


def slow_arms(ctx: Ctx) -> None:
    """Every LLM call takes longer than the claim time, for ``slow_s``."""
    ctx.run.admin.set_faults(ctx.opts.claim_idle_ms * 1.5, 100.0, 0.0)
    time.sleep(ctx.opts.slow_s)
    ctx.run.admin.set_faults(ctx.opts.base_latency_ms, ctx.opts.base_latency_ms / 2, 0.0)


def _tagged(ctx: Ctx, qid: str | None) -> str:
    tag = f"{ctx.keys.prefix}bad-{len(ctx.invalid)}"
    with ctx.lock:
        ctx.invalid.append(Invalid(tag, qid))
    return tag


def _bad_id(ctx: Ctx, n: int) -> str:
    return f"{ctx.run.run_id}-bad-{ctx.fault}-{n}"


def malformed_queries(ctx: Ctx) -> None:
    r, q = ctx.run.client(), ctx.keys.queries
    text = "chaos: a query that is not a recorded one"
    r.xadd(q, {TAG: _tagged(ctx, None), "text": text})  # no id
    r.xadd(q, {TAG: _tagged(ctx, None), "id": "   ", "text": text})  # blank id
    entries: list[dict[Any, Any]] = [
        {"text": ""}, {"text": text, "labels": "[not json"}, {"text": text, "labels": "[]"},
        {"text": text, "meta": "{bad"}, {"text": text, "task": "no-such-task"},
    ]  # fmt: skip
    for n, fields in enumerate(entries):
        qid = _bad_id(ctx, n)
        r.xadd(q, {TAG: _tagged(ctx, qid), "id": qid, **fields})


def non_utf8_queries(ctx: Ctx) -> None:
    r, q = ctx.run.client(), ctx.keys.queries
    text = b"chaos: a query that is not a recorded one"
    bad = b"\xff\xfe\xc3\x28"
    r.xadd(q, {TAG: _tagged(ctx, None), b"id": b"id-" + bad, b"text": text})  # in the id
    qid = _bad_id(ctx, 0)
    r.xadd(q, {TAG: _tagged(ctx, qid), b"id": qid.encode(), b"text": text + bad})  # in a value
    qid = _bad_id(ctx, 1)
    r.xadd(q, {TAG: _tagged(ctx, qid), b"id": qid.encode(), b"text": text, bad: b"x"})  # a name


def malformed_feedback(ctx: Ctx) -> None:
    """Invalid feedback, for ids that were never queries (none of it can be learned)."""
    r, f = ctx.run.client(), ctx.keys.feedback
    bad: list[dict[Any, Any]] = [{"label": "No"}, {"reward": "abc"}, {"reward": "7"}, {},
                                 {"reward": "nan"}]  # fmt: skip
    for n, fields in enumerate(bad):
        r.xadd(f, {TAG: f"fb-{n}", **({"id": _bad_id(ctx, n)} if n else {}), **fields})


def non_utf8_feedback(ctx: Ctx) -> None:
    r, f, bad = ctx.run.client(), ctx.keys.feedback, b"\xff\xfe\xc3\x28"
    r.xadd(f, {TAG: b"fb-0", b"id": b"id-" + bad, b"label": b"No"})
    r.xadd(f, {TAG: b"fb-1", b"id": _bad_id(ctx, 1).encode(), b"label": bad})
    r.xadd(f, {TAG: b"fb-2", b"id": _bad_id(ctx, 2).encode(), b"label": b"No", bad: b"1"})


def _oversized(size: int) -> Callable[[Ctx], None]:
    def inject(ctx: Ctx) -> None:
        qid = _bad_id(ctx, 0)
        head = f"chaos oversized {qid}: "
        text = (head + FILLER * (size // len(FILLER) + 1))[:size]
        r = ctx.run.client()
        r.xadd(ctx.keys.queries, {TAG: _tagged(ctx, qid), "id": qid, "text": text})

    return inject


MB = 1 << 20
FAULTS: dict[str, Callable[[Ctx], None]] = {
    "router-kill": kill_router,
    "learner-kill-steady": kill_learner_steady,
    "learner-kill-backlog": kill_learner_backlog,
    "redis-kill": kill_redis,
    "client-kill": client_kill,
    "provider-outage": provider_outage,
    "slow-arms": slow_arms,
    "malformed-queries": malformed_queries,
    "non-utf8-queries": non_utf8_queries,
    "malformed-feedback": malformed_feedback,
    "non-utf8-feedback": non_utf8_feedback,
    "oversized-1mb": _oversized(MB),
    "oversized-10mb": _oversized(10 * MB),
}


# -- a row --------------------------------------------------------------------------------


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _retrying(what: str, fn: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """``fn()``, retried while Redis is down or restarting (it is, in some rows)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() > deadline:
                raise ChaosError(f"{what}: Redis unreachable for {timeout_s:.0f} s: {exc}") from exc
            time.sleep(0.2)


def run_row(run: Run, fault: str, n: int) -> Row:
    """Start the workers on a fresh prefix, send, inject ``fault``, settle, drain, account."""
    ctx = Ctx(run, fault, n)
    o = run.opts
    run.admin.set_faults(o.base_latency_ms, o.base_latency_ms / 2, 0.0)
    w = ctx.workers
    try:
        w.learner.start()
        r = run.client()
        for router in w.routers:
            router.start()
        ctx.wait_until("the workers", lambda: all(ctx.ready(m.name) for m in w.all), o.ready_s)
        _traffic(ctx, r)
        ctx.wait_until("the learner to drain", lambda: _drained(r, ctx), o.drain_s)
        _stable_version(ctx, r)
    finally:
        w.stop()
    return _account(ctx, run.client(), run.admin.stats())


def _traffic(ctx: Ctx, r: redis.Redis) -> None:
    """Send the row's queries at the rate, label each as its first response comes in, run
    the fault in a thread a third of the way in, and return once everything is answered (or
    ``settle_s`` after the fault)."""
    o, keys = ctx.opts, ctx.keys
    rows = [next(ctx.run.texts) for _ in range(o.queries)]
    fault = threading.Thread(target=_fault_thread, args=(ctx,), name=f"fault-{ctx.fault}",
                             daemon=True)  # fmt: skip
    t0 = time.monotonic()
    fault_at = t0 + o.send_s / 3
    last_id = "0-0"
    settle_deadline: float | None = None
    sent = 0
    seen: set[str] = set()
    hard_stop = t0 + o.send_s + o.settle_s + o.outage_s + o.slow_s + o.ready_s
    while time.monotonic() < hard_stop:
        ctx.workers.check()
        now = time.monotonic()
        if fault.ident is None and now >= fault_at:
            fault.start()
        while sent < len(rows) and t0 + sent / o.rate_qps <= now:
            ds_id, text = rows[sent]
            qid = f"{ctx.run.run_id}-{ds_id}"
            with ctx.lock:
                ctx.valid[qid] = text
            _send_once(r, keys.queries, qid, text)
            sent += 1
        if sent == len(rows):
            ctx.sending_done.set()
        reply = _retrying("read responses", partial(r.xread, {keys.responses: last_id}, 500, 100))
        labels: list[str] = []
        for _, entries in reply or []:
            for eid, f in entries:
                last_id = _s(eid)
                qid = _s(f.get(b"id", b""))
                if qid in ctx.valid and qid not in seen:
                    seen.add(qid)
                    labels.append(qid)
        for qid in labels:
            fb: dict[Any, Any] = {"id": qid, "label": ctx.run.labels[ctx.valid[qid]]}
            _retrying("send a label", partial(r.xadd, keys.feedback, fb))
            ctx.labelled.add(qid)
        if ctx.fault_done.is_set():
            if settle_deadline is None:
                settle_deadline = time.monotonic() + o.settle_s
            answered = len(seen) == len(ctx.valid) and sent == len(rows)
            if (answered and _invalid_settled(ctx, r)) or time.monotonic() > settle_deadline:
                break
    else:
        log.warning("%s: traffic did not settle within %.0f s", ctx.fault, hard_stop - t0)
    fault.join(timeout=o.ready_s)


def _send_once(r: redis.Redis, stream: str, qid: str, text: str) -> None:
    """XADD the query; after a connection error, only if it is not in the stream already
    (the server may have taken it before it died), so the harness never sends one twice."""
    query: dict[Any, Any] = {"id": qid, "text": text}
    try:
        r.xadd(stream, query)
        return
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.info("sending %s: %s; checking whether it got in", qid, exc)

    def resend() -> None:
        recent: Any = r.xrevrange(stream, count=RECENT_ENTRIES)
        if not any(f.get(b"id") == qid.encode() for _, f in recent):
            r.xadd(stream, query)

    _retrying("send a query", resend)


def _fault_thread(ctx: Ctx) -> None:
    try:
        FAULTS[ctx.fault](ctx)
    except Exception:  # the row goes on and measures what the fault did
        log.exception("fault %s failed", ctx.fault)
    finally:
        ctx.fault_done.set()


def _invalid_settled(ctx: Ctx, r: redis.Redis) -> bool:
    """Whether every invalid entry with an id was answered or dead-lettered (those without
    an id have nothing to wait for)."""
    with ctx.lock:
        pending = {i.qid for i in ctx.invalid if i.qid is not None}
    if not pending:
        return True
    found = {_s(f.get(b"id", b"")) for _, f in _entries(r, ctx.keys.responses)}
    found |= {_s(f.get(b"id", b"")) for _, f in _entries(r, ctx.keys.dead)}
    return pending <= found


def _entries(r: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of ``stream`` (raw bytes: some fields are not UTF-8 on purpose)."""
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    start: Any = "-"
    while True:
        got: Any = r.xrange(stream, min=start, count=1000)
        out += got
        if len(got) < 1000:
            return out
        start = b"(" + got[-1][0]


def _drained(r: redis.Redis, ctx: Ctx) -> bool:
    """Every feedback entry delivered to the learner and acknowledged."""
    info: Any = r.xinfo_stream(ctx.keys.feedback)
    last = _s(info.get("last-generated-id"))
    for g in r.xinfo_groups(ctx.keys.feedback):
        if _s(g.get("name")) == LEARNERS_GROUP:
            return _s(g.get("last-delivered-id")) == last and int(g.get("pending", 0)) == 0
    return False


def _stable_version(ctx: Ctx, r: redis.Redis) -> None:
    """Wait until the published version has stayed put for two snapshot intervals (the
    learner publishes what it learned at most ``snapshot_every_s`` later)."""
    hold = 2 * ctx.opts.snapshot_every_s + 0.5
    last: Any = None
    since = time.monotonic()

    def stable() -> bool:
        nonlocal last, since
        v = r.get(ctx.keys.model_version)
        if v != last:
            last, since = v, time.monotonic()
        return time.monotonic() - since >= hold

    ctx.wait_until("the model version to settle", stable, hold + ctx.opts.drain_s)


def _account(ctx: Ctx, r: redis.Redis, stats: dict[str, Any]) -> Row:
    keys = ctx.keys
    responses = [
        Response(_s(f.get(b"id", b"")), _s(f.get(b"error", b"")), _s(f.get(b"fallback", b"")))
        for _, f in _retrying("read responses", lambda: _entries(r, keys.responses))
    ]
    dead_tags: set[str] = set()
    dead = 0
    for _, f in _retrying("read dead letters", lambda: _entries(r, keys.dead)):
        dead += 1
        dead_tags |= {_s(f.get(TAG.encode(), b"")), _s(f.get(b"id", b""))}
    version = int(_retrying("read the version", lambda: r.get(keys.model_version)) or 0)
    row = tally(ctx.fault, ctx.valid, ctx.invalid, responses, dead_tags, dead, ctx.labelled,
                stats.get("answers", {}), version, ctx.workers.crashes)  # fmt: skip
    _cleanup(r, keys)
    return row


def _cleanup(r: redis.Redis, keys: Keys) -> None:
    """The row's keys go, so that the private Redis stays small (a 10 MB text, say)."""
    batch: list[Any] = []
    for key in r.scan_iter(match=f"{keys.prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            r.delete(*batch)
            batch.clear()
    if batch:
        r.delete(*batch)


def row_names(selected: Sequence[str] | None) -> list[str]:
    names = list(selected or FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ConfigError(f"unknown fault(s) {unknown}; choose from: {', '.join(FAULTS)}")
    return names
