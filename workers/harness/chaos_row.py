"""One row of a fault-injection run: start the workers on a fresh prefix, stream real queries
and their labels, inject one fault, wait (bounded) for the system to settle, and account."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import redis

from bandit.errors import ConfigError
from workers.harness.chaos import RECENT_ENTRIES, TAG, Ctx, Run, decoded
from workers.harness.chaos_faults import FAULTS
from workers.harness.chaos_procs import (
    ChaosError,
)
from workers.harness.chaos_tally import Response, Row, tally
from workers.harness.cleanup import delete_prefix
from workers.service.settings import LEARNERS_GROUP

log = logging.getLogger(__name__)

# -- a row --------------------------------------------------------------------------------


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
                last_id = decoded(eid)
                qid = decoded(f.get(b"id", b""))
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
    found = {decoded(f.get(b"id", b"")) for _, f in _entries(r, ctx.keys.responses)}
    found |= {decoded(f.get(b"id", b"")) for _, f in _entries(r, ctx.keys.dead)}
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
    last = decoded(info.get("last-generated-id"))
    for g in r.xinfo_groups(ctx.keys.feedback):
        if decoded(g.get("name")) == LEARNERS_GROUP:
            return decoded(g.get("last-delivered-id")) == last and int(g.get("pending", 0)) == 0
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
        Response(
            decoded(f.get(b"id", b"")),
            decoded(f.get(b"error", b"")),
            decoded(f.get(b"fallback", b"")),
        )
        for _, f in _retrying("read responses", lambda: _entries(r, keys.responses))
    ]
    dead_tags: set[str] = set()
    dead = 0
    for _, f in _retrying("read dead letters", lambda: _entries(r, keys.dead)):
        dead += 1
        dead_tags |= {decoded(f.get(TAG.encode(), b"")), decoded(f.get(b"id", b""))}
    version = int(_retrying("read the version", lambda: r.get(keys.model_version)) or 0)
    row = tally(ctx.fault, ctx.valid, ctx.invalid, responses, dead_tags, dead, ctx.labelled,
                stats.get("answers", {}), version, ctx.workers.crashes)  # fmt: skip
    delete_prefix(r, keys.prefix)  # the private Redis stays small (a 10 MB text, say)
    return row


def row_names(selected: Sequence[str] | None) -> list[str]:
    names = list(selected or FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ConfigError(f"unknown fault(s) {unknown}; choose from: {', '.join(FAULTS)}")
    return names
