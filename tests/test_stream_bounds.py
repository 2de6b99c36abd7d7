"""Streams stay bounded: responses, feedback and dead letters are capped (MAXLEN ~), and the
queries and feedback streams are trimmed up to what their group has acknowledged, never
past an entry that is pending or not yet delivered. Against a real Redis (whose stream nodes
hold 100 entries: approximate trimming drops whole nodes, so the streams here are a few
hundred entries long)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis

import workers.service.upkeep
from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from workers.harness.replay_server import ReplayServer
from workers.service.app import Service
from workers.service.settings import Keys, ServiceSettings
from workers.service.streams import Entry, dead_letter, trim_acknowledged


def trimmer(redis_url: str, stream: str, group: str) -> Callable[[], int]:
    def trim() -> int:
        async def main() -> int:
            r = aioredis.Redis.from_url(redis_url)
            try:
                return await trim_acknowledged(r, stream, group)
            finally:
                await r.aclose()

        return asyncio.run(main())

    return trim


def ids_left(r: redis.Redis, stream: str) -> set[bytes]:
    return {eid for eid, _ in r.xrange(stream)}


def test_trimming_keeps_every_pending_and_undelivered_entry(redis_url: str, prefix: str) -> None:
    r, stream = redis.Redis.from_url(redis_url), f"{prefix}s"
    ids = [r.xadd(stream, {"n": i}, id=f"{i + 1}-0") for i in range(300)]
    trim = trimmer(redis_url, stream, "g")
    assert trim() == 0  # no group: nothing is known to be read
    r.xgroup_create(stream, "g", id="0")
    assert trim() == 0 and r.xlen(stream) == 300  # nothing delivered yet
    r.xreadgroup("g", "c", {stream: ">"}, count=200)
    r.xack(stream, "g", *ids[1:150], *ids[151:200])
    assert trim() == 0 and r.xlen(stream) == 300  # the oldest entry is pending
    r.xack(stream, "g", ids[0])
    assert trim() == 100  # the first node: acknowledged, all of it
    assert set(ids[100:]) <= ids_left(r, stream)
    r.xreadgroup("g", "c", {stream: ">"}, count=60)
    r.xack(stream, "g", *ids[200:260])
    assert trim() == 0  # the second node holds a pending entry
    assert set(ids[100:]) <= ids_left(r, stream)
    r.xack(stream, "g", ids[150])
    assert trim() == 100 and set(ids[259:]) <= ids_left(r, stream)  # 260.. undelivered
    r.close()


def test_dead_letters_are_capped(redis_url: str, prefix: str) -> None:
    r, keys = redis.Redis.from_url(redis_url), Keys(prefix)

    async def main() -> None:
        ar = aioredis.Redis.from_url(redis_url)
        for i in range(250):
            entry = Entry(f"{i + 1}-0", {"id": f"q{i}"})
            await dead_letter(ar, keys.dead, keys.queries, "routers", entry, "parse", "bad", 10)
        await ar.aclose()

    asyncio.run(main())
    # Approximately: whole nodes of 100 go while at least 10 entries are left.
    assert 10 <= r.xlen(keys.dead) <= 110
    assert r.xrevrange(keys.dead, count=1)[0][1][b"id"] == b"q249"  # the newest stay
    r.close()


def test_a_router_caps_responses_and_feedback_and_trims_acknowledged_queries(
    redis_url: str,
    prefix: str,
    overruling: tuple[Dataset, RoutingConfig],
    replay: ReplayServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds, cfg = overruling
    keys, n = Keys(prefix), 250
    monkeypatch.setattr(workers.service.upkeep, "TRIM_EVERY_S", 0.1)
    s = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=50, claim_idle_ms=300,
                        embedder_process=False, responses_maxlen=10, feedback_maxlen=120)  # fmt: skip
    svc = Service(s, cfg, roles=("router",), env={"METALLM_REPLAY_URL": replay.url})

    async def main() -> None:
        r = aioredis.Redis.from_url(redis_url)
        for i in range(n):
            await r.xadd(keys.queries, {"id": f"q{i}", "text": ds.texts[i]})
            await r.xadd(keys.feedback, {"id": f"q{i}", "label": "Yes"})  # no learner reads
        await svc.start()
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop))
        answered = svc.router
        assert answered is not None
        deadline = asyncio.get_running_loop().time() + 120
        while answered.answered < n or await r.xlen(keys.queries) >= n:
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await svc.close()
        assert 10 <= await r.xlen(keys.responses) <= 110
        assert (
            await r.xlen(keys.queries) < n
            and (await r.xpending(keys.queries, "routers"))["pending"] == 0
        )
        assert 120 <= await r.xlen(keys.feedback) < n
        await r.aclose()

    asyncio.run(main())
