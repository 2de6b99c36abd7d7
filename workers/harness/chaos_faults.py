"""The faults of a chaos run: named functions run in a thread beside the producer, so that
traffic keeps flowing while a process is down; ``FAULTS`` lists them in the order of the
table."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from workers.harness.chaos import FILLER, REDIS_DOWN_S, ROUTER_DOWN_S, TAG, Ctx, decoded
from workers.harness.chaos_tally import Invalid
from workers.service.settings import LEARNERS_GROUP

log = logging.getLogger(__name__)


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
        if decoded(g.get("name")) == LEARNERS_GROUP:
            return f"{decoded(g.get('last-delivered-id'))}/{g.get('pending')}"
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
