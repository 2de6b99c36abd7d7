"""The router and learner against a real Redis and the replay LLM server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import redis.asyncio as aioredis

from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.app import Service
from workers.service.settings import Keys, ServiceSettings


def settings(redis_url: str, prefix: str, **kw: object) -> ServiceSettings:
    base = dict(redis_url=redis_url, prefix=prefix, block_ms=50, reload_check_s=0.05,
                snapshot_every_updates=5, snapshot_every_s=0.2, claim_idle_ms=300,
                backoff_base_s=0.01, backoff_cap_s=0.05)  # fmt: skip
    base.update(kw)
    return ServiceSettings(**base)  # type: ignore[arg-type]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def responses(r: aioredis.Redis, keys: Keys) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in f.items()} for _, f in await r.xrange(keys.responses)
    ]


def run_with_service(
    svc: Service, body: Callable[[Service, aioredis.Redis], Awaitable[None]]
) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        try:
            await body(svc, svc.redis)
        finally:
            stop.set()
            await task
            await svc.close()

    asyncio.run(main())


def test_query_response_label_update_snapshot_reload(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    svc = Service(settings(redis_url, prefix), cfg, env={"METALLM_REPLAY_URL": replay.url})
    rows = list(range(40))

    async def body(svc: Service, r: aioredis.Redis) -> None:
        for i in rows:
            await r.xadd(
                keys.queries, {"id": ds.ids[i], "text": ds.texts[i], "meta": json.dumps({"n": i})}
            )
        await wait_for(lambda: _count(r, keys.responses, len(rows)))
        got = await responses(r, keys)
        assert sorted(x["id"] for x in got) == sorted(ds.ids[rows])
        for x in got:
            i = int(x["id"].split("-")[1])
            j = ds.arms.index(x["arm"])
            assert x["answer"] == ds.answers[i, j] and x["error"] == ""
            assert x["label"] in ("Yes", "No")
            assert float(x["cost_usd"]) == pytest.approx(ds.cost_usd[i, j], abs=1e-8)
            assert 0 < float(x["prob"]) <= 1 and x["meta"] == json.dumps({"n": i})
        assert svc.router is not None and svc.learner is not None
        version_before = svc.router.policy.version
        pmf_before = svc.router.policy.decide(np.ones((1, 384), dtype=np.float32) / 20, ["x"])[
            0
        ].scores
        for i in rows:
            await r.xadd(keys.feedback, {"id": ds.ids[i], "label": ds.labels[i]})
        await wait_for(lambda: _async(svc.learner.policy.version >= version_before + len(rows)))
        await wait_for(lambda: _async(svc.router.policy.version >= version_before + len(rows)))
        pmf_after = svc.router.policy.decide(np.ones((1, 384), dtype=np.float32) / 20, ["x"])[
            0
        ].scores
        assert not np.allclose(pmf_before, pmf_after)
        assert int(await r.get(keys.model_version)) == svc.router.policy.version
        assert await r.xlen(keys.dead) == 0

    run_with_service(svc, body)


async def _count(r: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await r.xlen(stream)) >= n


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"text": "no id"}, "missing or empty field 'id'"),
        ({"id": "q-empty", "text": "   "}, "empty field 'text'"),
        ({"id": "q-labels", "text": "hi", "labels": "[not json"}, "'labels' is not JSON"),
        ({"id": "q-labels2", "text": "hi", "labels": '{"a": 1}'}, "non-empty JSON list"),
        ({"id": "q-task", "text": "hi", "task": "translation"}, "unknown task 'translation'"),
        ({"id": "q-meta", "text": "hi", "meta": "{oops"}, "'meta' is not JSON"),
    ],
)
def test_malformed_queries_go_to_dead_letters_and_the_worker_keeps_serving(
    fields: dict[str, str], reason: str, redis_url: str, prefix: str,
    overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer,
) -> None:  # fmt: skip
    ds, cfg = overruling
    keys = Keys(prefix)
    svc = Service(
        settings(redis_url, prefix), cfg, roles=("router",), env={"METALLM_REPLAY_URL": replay.url}
    )

    async def body(svc: Service, r: aioredis.Redis) -> None:
        await r.xadd(keys.queries, fields)
        await r.xadd(keys.queries, {"id": ds.ids[0], "text": ds.texts[0]})
        # The bad query with an id is answered too, with the reason as its error.
        await wait_for(lambda: _count(r, keys.responses, 1 + ("id" in fields)))
        dead = [
            {k.decode(): v.decode() for k, v in f.items()} for _, f in await r.xrange(keys.dead)
        ]
        assert len(dead) == 1 and dead[0]["stage"] == "parse" and reason in dead[0]["error"]
        assert {k: v for k, v in dead[0].items() if k in fields} == fields
        by_id = {x["id"]: x for x in await responses(r, keys)}
        assert by_id[ds.ids[0]]["error"] == ""
        if "id" in fields:
            refused = by_id[fields["id"]]
            assert refused["error"] == dead[0]["error"] and refused["arm"] == ""
            assert set(refused) == set(by_id[ds.ids[0]])  # the fields every response has
        pending = await r.xpending(keys.queries, "routers")
        assert pending["pending"] == 0

    run_with_service(svc, body)


def test_provider_failures_are_retried_then_fall_back(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    flaky = ReplayServer(ReplayBook(ds, cfg), Faults(error_rate=0.5, seed=1)).start()
    svc = Service(settings(redis_url, prefix, max_attempts=2), cfg, roles=("router",),
                  env={"METALLM_REPLAY_URL": flaky.url})  # fmt: skip
    n = 30

    async def body(svc: Service, r: aioredis.Redis) -> None:
        for i in range(n):
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await wait_for(lambda: _count(r, keys.responses, n))
        got = await responses(r, keys)
        assert len({x["id"] for x in got}) == n
        assert all(x["error"] == "" and x["answer"] for x in got)  # every query answered
        assert any(x["fallback"] == "1" for x in got)
        errors = svc.metrics.registry.get_sample_value
        assert sum(errors("metallm_provider_errors_total", {"arm": a, "kind": "server"}) or 0
                   for a in cfg.arms.names) == flaky.errors > 0  # fmt: skip

    try:
        run_with_service(svc, body)
    finally:
        flaky.stop()


def test_a_router_exports_when_the_learner_published_its_model(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    """Model age on a router's dashboard is the age of the model, not of the router's copy."""
    _, cfg = overruling
    keys = Keys(prefix)

    async def main() -> None:
        learner = Service(settings(redis_url, prefix), cfg, roles=("learner",))
        await learner.start()
        published = float(await learner.redis.get(keys.model_published))
        await asyncio.sleep(0.5)
        router = Service(settings(redis_url, prefix), cfg, roles=("router",),
                         env={"METALLM_REPLAY_URL": replay.url})  # fmt: skip
        await router.start()
        try:
            got = router.registry.get_sample_value("metallm_model_published_timestamp_seconds")
            assert got == pytest.approx(published, abs=1e-6)
            assert time.time() - got >= 0.5
            assert learner.registry.get_sample_value(
                "metallm_model_published_timestamp_seconds"
            ) == pytest.approx(published, abs=1e-6)
        finally:
            await router.close()
            await learner.close()

    asyncio.run(main())


def test_a_slow_answer_does_not_hold_back_the_rest_of_its_batch(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    uneven = ReplayServer(ReplayBook(ds, cfg), Faults(latency_ms=700, latency_sd_ms=400)).start()
    svc = Service(settings(redis_url, prefix), cfg, env={"METALLM_REPLAY_URL": uneven.url})
    n = 16

    async def body(svc: Service, r: aioredis.Redis) -> None:
        await wait_for(lambda: _count(r, keys.responses, n))
        assert svc.router is not None and svc.router.answered == n

    async def enqueue() -> None:
        r = aioredis.Redis.from_url(redis_url)
        for i in range(n):  # all there before the router starts: one batch
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await r.aclose()

    try:
        asyncio.run(enqueue())
        run_with_service(svc, body)
    finally:
        uneven.stop()

    async def written_ms() -> list[int]:
        r = aioredis.Redis.from_url(redis_url)
        try:
            return [int(eid.split(b"-")[0]) for eid, _ in await r.xrange(keys.responses)]
        finally:
            await r.aclose()

    written = asyncio.run(written_ms())
    # Each response is written when its own answer is in, not with the batch's slowest.
    assert max(written) - min(written) > 300


def test_queries_do_not_wait_in_the_stream_behind_small_batches(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    slow = ReplayServer(ReplayBook(ds, cfg), Faults(latency_ms=800)).start()
    svc = Service(settings(redis_url, prefix, batch_size=8, max_in_flight=16), cfg,
                  env={"METALLM_REPLAY_URL": slow.url})  # fmt: skip
    n = 12

    async def body(svc: Service, r: aioredis.Redis) -> None:
        for i in range(n):  # slower than the router reads: batches of one
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
            await asyncio.sleep(0.1)
        await wait_for(lambda: _count(r, keys.responses, n))
        waits = []
        for eid, f in await r.xrange(keys.queries):
            decided = float(await r.hget(keys.decision(f[b"id"].decode()), "decided_at"))
            waits.append(decided - int(eid.split(b"-")[0]) / 1000)
        # 12 calls out at most, under max_in_flight: none waits for a call to end (0.8 s)
        # before it is read and decided, as with a bound on batches in flight.
        assert max(waits) < 0.5

    try:
        run_with_service(svc, body)
    finally:
        slow.stop()
