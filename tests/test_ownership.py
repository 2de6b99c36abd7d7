"""A query is paid for once: routers keep the entries they work on, a query id already
decided is never sent to an LLM again, and a shutdown deadline leaves the rest pending and
marked abandoned. Against a real Redis, the real Router and the replay LLM server, whose
request counter says how many LLM calls were made."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
import redis.asyncio as aioredis

from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from tests.test_service import responses, wait_for
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.app import Service
from workers.service.settings import Keys, ServiceSettings

Body = Callable[[list[Service], aioredis.Redis], Awaitable[None]]
Setup = Callable[[aioredis.Redis], Awaitable[object]]


def settings(redis_url: str, prefix: str, **kw: object) -> ServiceSettings:
    base = dict(redis_url=redis_url, prefix=prefix, block_ms=50, reload_check_s=0.05,
                claim_idle_ms=300, backoff_base_s=0.01, backoff_cap_s=0.05,
                embedder_process=False)  # fmt: skip
    base.update(kw)
    return ServiceSettings(**base)  # type: ignore[arg-type]


@contextmanager
def replay_server(overruling: tuple[Dataset, RoutingConfig], **faults: float) -> Iterator[ReplayServer]:  # fmt: skip
    srv = ReplayServer(ReplayBook(*overruling), Faults(**faults)).start()  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.stop()


def routers(n: int, s: ServiceSettings, cfg: RoutingConfig, url: str) -> list[Service]:
    return [Service(s, cfg, roles=("router",), env={"METALLM_REPLAY_URL": url}) for _ in range(n)]


def run(services: list[Service], body: Body, setup: Setup | None = None) -> None:
    """Run ``setup`` (before any router reads), start the routers, run ``body`` and stop
    them (a warm stop)."""

    async def main() -> None:
        if setup is not None:
            r = aioredis.Redis.from_url(services[0].settings.redis_url)
            await setup(r)
            await r.aclose()
        stop = asyncio.Event()
        for svc in services:
            await svc.start()
        tasks = [asyncio.create_task(svc.run(stop)) for svc in services]
        try:
            await body(services, services[0].redis)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for svc in services:
                await svc.close()

    asyncio.run(main())


def at_least(r: aioredis.Redis, stream: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return int(await r.xlen(stream)) >= n

    return check


def test_two_routers_slower_than_claim_idle_pay_for_each_query_once(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys, n = Keys(prefix), 24

    async def body(svcs: list[Service], r: aioredis.Redis) -> None:
        for i in range(n):
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await wait_for(at_least(r, keys.responses, n))
        await asyncio.sleep(1.0)  # three claim_idle_ms: time for a duplicate to show
        got = await responses(r, keys)
        assert sorted(x["id"] for x in got) == sorted(ds.ids[:n])  # each exactly once
        assert all(x["error"] == "" and "repeated" not in x for x in got)
        assert (await r.xpending(keys.queries, "routers"))["pending"] == 0

    # LLM calls take 1.2 s, four times claim_idle_ms (0.3 s).
    with replay_server(overruling, latency_ms=1200) as llm:
        run(routers(2, settings(redis_url, prefix), cfg, llm.url), body)
        assert llm.requests == n and llm.errors == 0  # one call per query


def test_renewals_count_no_delivery_and_a_poison_entry_is_still_dead_lettered(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys, n = Keys(prefix), 6

    async def setup(r: aioredis.Redis) -> None:
        await r.xgroup_create(keys.queries, "routers", id="0", mkstream=True)
        # A poison entry a dead router held and that has been claimed twice already.
        await r.xadd(keys.queries, {"id": "poison", "text": ds.texts[0]})
        await r.xreadgroup("routers", "ghost", {keys.queries: ">"}, count=1)
        [(poison, _)] = await r.xrange(keys.queries)
        await r.xclaim(keys.queries, "routers", "ghost", 0, [poison])  # delivery 2

    async def body(svcs: list[Service], r: aioredis.Redis) -> None:
        for i in range(n):
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await wait_for(at_least(r, keys.dead, 1))
        [(_, dead)] = await r.xrange(keys.dead)
        assert dead[b"stage"] == b"deliveries" and dead[b"deliveries"] == b"3"

        async def in_flight() -> bool:
            return len(await r.xpending_range(keys.queries, "routers", "-", "+", 100)) == n

        await wait_for(in_flight)
        await asyncio.sleep(1.0)  # ten renewals of the calls out (1.5 s each)
        pending = await r.xpending_range(keys.queries, "routers", "-", "+", 100)
        assert [p["times_delivered"] for p in pending] == [1] * n
        await wait_for(at_least(r, keys.responses, n))

    with replay_server(overruling, latency_ms=1500) as llm:
        run(routers(1, settings(redis_url, prefix, max_deliveries=2), cfg, llm.url), body, setup)
        assert llm.requests == n  # none for the poison entry


@pytest.mark.parametrize("while_in_flight", [False, True])
def test_a_repeated_id_gets_the_recorded_response_and_makes_no_call(
    while_in_flight: bool, redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    query = {"id": ds.ids[3], "text": ds.texts[3]}

    async def body(svcs: list[Service], r: aioredis.Redis) -> None:
        await r.xadd(keys.queries, {**query, "meta": json.dumps({"n": 1})})
        if not while_in_flight:
            await wait_for(at_least(r, keys.responses, 1))
        await r.xadd(keys.queries, {**query, "meta": json.dumps({"n": 2})})
        await wait_for(at_least(r, keys.responses, 2))
        await asyncio.sleep(0.5)
        first, second = await responses(r, keys)
        assert "repeated" not in first and second["repeated"] == "1"
        assert json.loads(first["meta"]) == {"n": 1} and json.loads(second["meta"]) == {"n": 2}
        same = ("id", "arm", "answer", "label", "prob", "explored", "cost_usd", "model_version")
        assert {k: second[k] for k in same} == {k: first[k] for k in same}
        assert first["error"] == "" and first["answer"]
        assert (await r.xpending(keys.queries, "routers"))["pending"] == 0

    with replay_server(overruling, latency_ms=800 if while_in_flight else 0) as llm:
        run(routers(1, settings(redis_url, prefix), cfg, llm.url), body)
        assert llm.requests == 1  # one LLM call, two responses


async def orphan(r: aioredis.Redis, keys: Keys, ds: Dataset, **record: str) -> bytes:
    """A query that a router called ``ghost`` read and decided, then stopped."""
    await r.xgroup_create(keys.queries, "routers", id="0", mkstream=True)
    await r.xadd(keys.queries, {"id": ds.ids[5], "text": ds.texts[5], "meta": "{}"})
    [[_, [(entry, _)]]] = await r.xreadgroup("routers", "ghost", {keys.queries: ">"}, count=1)
    await r.hset(keys.decision(ds.ids[5]), mapping={
        "entry": entry, "owner": "ghost", "arm": 1, "arm_name": "gpt-4o", "prob": "0.7",
        "model_version": 3, "explored": 0, "shared": "x", "cost": "0.5", **record,
    })  # fmt: skip
    return bytes(entry)


def test_a_dead_owner_with_its_call_out_gets_an_error_and_no_second_call(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)

    async def setup(r: aioredis.Redis) -> None:
        await orphan(r, keys, ds)
        await r.set(keys.router_alive("ghost"), "1", px=60_000)

    async def body(svcs: list[Service], r: aioredis.Redis) -> None:
        await asyncio.sleep(1.5)  # five claim_idle_ms: the owner is alive, so it is left be
        assert await r.xlen(keys.responses) == 0
        [held] = await r.xpending_range(keys.queries, "routers", "-", "+", 10)
        assert (held["consumer"], held["times_delivered"]) == (b"ghost", 1)  # not even claimed
        await r.delete(keys.router_alive("ghost"))  # now it is gone
        await wait_for(at_least(r, keys.responses, 1))
        [got] = await responses(r, keys)
        assert got["id"] == ds.ids[5] and "router 'ghost' stopped" in got["error"]
        assert "not sent again" in got["error"] and "repeated" not in got
        assert (got["arm"], got["prob"], got["model_version"], got["answer"]) == (
            "gpt-4o",
            "0.7",
            "3",
            "",
        )
        record = await r.hgetall(keys.decision(ds.ids[5]))
        assert record[b"failed"] == b"1" and record[b"label"] == b""  # the learner skips it
        assert (await r.xpending(keys.queries, "routers"))["pending"] == 0

    with replay_server(overruling) as llm:
        run(routers(1, settings(redis_url, prefix), cfg, llm.url), body, setup)
        assert llm.requests == 0


def test_an_abandoned_call_is_made_again_by_the_claimer(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)

    async def body(svcs: list[Service], r: aioredis.Redis) -> None:
        await wait_for(at_least(r, keys.responses, 1))
        [got] = await responses(r, keys)
        assert got["error"] == "" and got["answer"] and "repeated" not in got
        record = await r.hgetall(keys.decision(ds.ids[5]))
        assert b"abandoned" not in record and record[b"owner"] != b"ghost"
        assert record[b"prob"].decode() == got["prob"]  # the logged prob is the one answered

    with replay_server(overruling) as llm:
        run(routers(1, settings(redis_url, prefix), cfg, llm.url), body,
            lambda r: orphan(r, keys, ds, abandoned="1"))  # fmt: skip
        assert llm.requests == 1


def test_the_shutdown_deadline_leaves_the_calls_out_pending_and_abandoned(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys, n = Keys(prefix), 5

    async def stop_mid_call(svcs: list[Service], r: aioredis.Redis) -> None:
        for i in range(n):
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})

        async def out() -> bool:
            return all([await r.hexists(keys.decision(ds.ids[i]), "prob") for i in range(n)])

        await wait_for(out)
        await asyncio.sleep(0.2)  # the calls (20 s) are out

    s = settings(redis_url, prefix, shutdown_deadline_s=0.5)
    with replay_server(overruling, latency_ms=20_000) as llm:
        run(routers(1, s, cfg, llm.url), stop_mid_call)
        assert llm.requests == n

    r = redis.Redis.from_url(redis_url)
    assert r.xlen(keys.responses) == 0
    assert r.xpending(keys.queries, "routers")["pending"] == n
    assert [r.hget(keys.decision(ds.ids[i]), "abandoned") for i in range(n)] == [b"1"] * n
    r.close()

    async def after_stop(svcs: list[Service], r: aioredis.Redis) -> None:
        await wait_for(at_least(r, keys.responses, n))  # claimed and called again
        got = await responses(r, keys)
        assert sorted(x["id"] for x in got) == sorted(ds.ids[:n])
        assert all(x["error"] == "" for x in got)

    with replay_server(overruling) as llm:
        run(routers(1, s, cfg, llm.url), after_stop)
        assert llm.requests == n


def test_an_entry_claimed_while_its_owner_answered_it_is_only_acknowledged(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    """The owner wrote the response with the record's, in one transaction: a claimer that
    finds the record answered for its own entry adds no second response."""
    ds, cfg = overruling
    keys = Keys(prefix)
    answered = json.dumps({"id": ds.ids[5], "arm": "gpt-4o", "answer": "Yes", "error": ""})

    async def body(svcs: list[Service], r: aioredis.Redis) -> None:
        async def acknowledged() -> bool:
            return int((await r.xpending(keys.queries, "routers"))["pending"]) == 0

        await wait_for(acknowledged)
        await asyncio.sleep(0.3)
        assert await r.xlen(keys.responses) == 0

    with replay_server(overruling) as llm:
        run(routers(1, settings(redis_url, prefix), cfg, llm.url), body,
            lambda r: orphan(r, keys, ds, response=answered))  # fmt: skip
        assert llm.requests == 0


def test_a_lost_reply_keeps_ownership_but_a_restart_under_the_same_name_does_not(
    redis_url: str, prefix: str
) -> None:
    """A decision write re-sent after its reply was lost with Redis is the same process's:
    it keeps the id. A router restarted under the same consumer name is another process: its
    predecessor's record stays the predecessor's (that call may have been paid)."""
    from workers.service.ownership import Holder, Ownership

    async def take(own: Ownership, r: aioredis.Redis) -> Holder | None:
        async with r.pipeline(transaction=False) as pipe:
            await own.take(pipe, "q1", "1-0", 60, {"arm": 0})
            (reply,) = await pipe.execute()
        return Holder.from_reply(reply)

    async def main() -> None:
        r = aioredis.from_url(redis_url)
        keys = Keys(prefix)
        try:
            first = Ownership(r, keys, "router-0", 3000)
            assert await take(first, r) is None  # new
            assert await take(first, r) is None  # the same write again: still its own
            restarted = Ownership(r, keys, "router-0", 3000)
            held = await take(restarted, r)
            assert held is not None and held.owner == first.owner and held.entry == "1-0"
            assert not await restarted.alive(held.owner)  # its predecessor is gone
        finally:
            await r.aclose()

    asyncio.run(main())
