"""Circuit breakers: an arm that keeps failing leaves the decision for a cool-down, a
failed query is drawn again over the healthy arms (and learned), and an outage of every
arm costs latency, not errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest
import redis.asyncio as aioredis

from bandit import exploration
from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from bandit.errors import ConfigError
from bandit.policy import Policy, PolicyConfig
from tests.test_service import _count, responses, run_with_service, settings, wait_for
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.app import Service
from workers.service.breaker import Breakers
from workers.service.settings import Keys


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_arm_opens_after_failures_in_a_row_and_is_back_after_the_cooldown() -> None:
    clock, changes = Clock(), []
    b = Breakers(("a", "b"), failures=3, cooldown_s=10, clock=clock,
                 on_change=lambda arm, is_open: changes.append((arm, is_open)))  # fmt: skip
    b.failed(0)
    b.failed(0)
    b.succeeded(0)  # a success resets the count
    b.failed(0)
    b.failed(0)
    assert b.available().tolist() == [True, True]
    b.failed(0)
    assert b.available().tolist() == [False, True] and changes == [("a", True)]
    assert b.next_in_s() == 0  # b is in
    b.failed(1), b.failed(1), b.failed(1)
    assert b.next_in_s() == pytest.approx(10)
    clock.now += 10
    assert b.available().tolist() == [True, True]  # half-open
    b.failed(0)  # one failure while half-open opens it again at once
    assert b.available().tolist() == [False, True]
    b.succeeded(1)  # a call that was out succeeds: closed
    assert changes[-1] == ("b", False)


def test_unavailable_arms_get_no_mass_and_the_rest_is_renormalised() -> None:
    scores = np.array([0.9, 0.2, 0.5, 0.1])
    mask = np.array([False, True, True, True])
    pmf = exploration.epsilon_greedy(scores, 0.3, mask)
    assert pmf[0] == 0 and pmf.sum() == pytest.approx(1)
    assert pmf[2] == pytest.approx(0.7 + 0.1) and pmf[1] == pytest.approx(0.1)
    soft = exploration.softmax(scores, 5.0, mask)
    assert soft[0] == 0 and soft.sum() == pytest.approx(1)
    assert exploration.restrict(np.array([0.97, 0.01, 0.01, 0.01]), mask) == pytest.approx(
        [0, 1 / 3, 1 / 3, 1 / 3]
    )
    with pytest.raises(ConfigError, match="non-empty mask"):
        exploration.epsilon_greedy(scores, 0.3, np.zeros(4, dtype=bool))


@pytest.mark.parametrize("cfg", [PolicyConfig(epsilon=0.3), PolicyConfig(explorer="softmax"),
                                 PolicyConfig(mode="paper", loss="squared", epsilon=0.3)])  # fmt: skip
def test_a_masked_decision_never_draws_a_masked_arm_and_logs_its_draw(cfg: PolicyConfig) -> None:
    policy = Policy(cfg, ("a", "b", "c"), np.array([1.0, 0.5, 0.1]), 8)
    x = np.random.default_rng(0).normal(size=(400, 8))
    lines = policy.features.shared_batch(x)
    for k in range(50):
        policy.learn_line(lines[k], k % 3, 1 / 3, float(k % 2), policy.costs[k % 3])
    mask = np.array([True, False, True])
    seen = np.zeros(3)
    for d in policy.decide_lines(lines, available=mask):
        assert d.arm != 1 and d.pmf[1] == 0
        assert d.prob == d.pmf[d.arm] and d.pmf.sum() == pytest.approx(1)
        seen[d.arm] += 1
    assert seen[0] > 0 and seen[2] > 0


def test_a_dead_arm_is_left_out_and_its_queries_are_answered_and_learned(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    dead = cfg.arms.names.index("gpt-4")
    arms = list(cfg.arms.arms)
    arms[dead] = dataclasses.replace(arms[dead], endpoint="http://127.0.0.1:9")  # refused
    cfg = dataclasses.replace(cfg, arms=dataclasses.replace(cfg.arms, arms=tuple(arms)),
                              policy=cfg.policy.replace(epsilon=0.5))  # fmt: skip
    svc = Service(settings(redis_url, prefix, max_attempts=1, breaker_failures=2,
                           breaker_cooldown_s=3600), cfg, env={"METALLM_REPLAY_URL": replay.url})  # fmt: skip
    n = 60

    async def body(svc: Service, r: aioredis.Redis) -> None:
        for i in range(n):
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await wait_for(lambda: _count(r, keys.responses, n))
        got = await responses(r, keys)
        assert all(x["error"] == "" and x["arm"] != "gpt-4" for x in got)
        redrawn = [x for x in got if x["fallback"] == "1"]
        assert redrawn, "the dead arm was drawn before its breaker opened"
        for x in redrawn:  # the record holds the draw that chose the answering arm
            rec = {
                k.decode(): v.decode() for k, v in (await r.hgetall(keys.decision(x["id"]))).items()
            }
            pmf = json.loads(rec["pmf"])
            assert rec["arm_name"] == x["arm"] and pmf[dead] == 0
            assert float(rec["prob"]) == pytest.approx(pmf[int(rec["arm"])])
        assert svc.registry.get_sample_value("metallm_arm_open", {"arm": "gpt-4"}) == 1
        assert svc.registry.get_sample_value("metallm_breaker_trips_total", {"arm": "gpt-4"}) == 1
        for x in redrawn:
            await r.xadd(keys.feedback, {"id": x["id"], "label": ds.label_set[0]})
        joined = svc.registry.get_sample_value
        await wait_for(
            lambda: _value(joined("metallm_feedback_total", {"outcome": "joined"}) == len(redrawn))
        )
        assert not joined("metallm_feedback_total", {"outcome": "not_learnable"})

    run_with_service(svc, body)


def test_an_outage_of_every_arm_is_latency_not_errors(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    down = ReplayServer(ReplayBook(ds, cfg), Faults(error_rate=1.0)).start()
    svc = Service(settings(redis_url, prefix, max_attempts=2, breaker_failures=2, breaker_cooldown_s=0.3,
                           no_arm_wait_s=30), cfg, roles=("router",), env={"METALLM_REPLAY_URL": down.url})  # fmt: skip
    n = 20

    async def body(svc: Service, r: aioredis.Redis) -> None:
        for i in range(n):
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await asyncio.sleep(1.5)  # every arm down for 1.5 s
        assert await r.xlen(keys.responses) == 0
        trips = sum(svc.registry.get_sample_value("metallm_breaker_trips_total", {"arm": a}) or 0
                    for a in cfg.arms.names)  # fmt: skip
        assert trips >= len(cfg.arms.names)  # every arm was taken out at least once
        down.faults = Faults()
        await wait_for(lambda: _count(r, keys.responses, n))
        got = await responses(r, keys)
        assert len({x["id"] for x in got}) == n and all(x["error"] == "" for x in got)

    try:
        run_with_service(svc, body)
    finally:
        down.stop()


def test_a_query_waits_for_a_healthy_arm_only_until_its_deadline(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    down = ReplayServer(ReplayBook(ds, cfg), Faults(error_rate=1.0)).start()
    svc = Service(settings(redis_url, prefix, max_attempts=1, breaker_failures=1, breaker_cooldown_s=0.2,
                           no_arm_wait_s=1.0), cfg, roles=("router",), env={"METALLM_REPLAY_URL": down.url})  # fmt: skip

    async def body(svc: Service, r: aioredis.Redis) -> None:
        await r.xadd(keys.queries, {"id": ds.ids[0], "text": ds.texts[0]})
        await wait_for(lambda: _count(r, keys.responses, 1), timeout_s=10)
        (x,) = await responses(r, keys)
        assert x["error"] and x["answer"] == "" and float(x["latency_ms"]) >= 1000

    try:
        run_with_service(svc, body)
    finally:
        down.stop()


async def _value(v: bool) -> bool:
    return v


def test_each_router_and_each_snapshot_it_loads_explores_with_its_own_seed(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    _, cfg = overruling
    keys = Keys(prefix)

    async def main() -> None:
        routers = [Service(settings(redis_url, prefix), cfg, roles=("router",),
                           env={"METALLM_REPLAY_URL": replay.url}) for _ in range(2)]  # fmt: skip
        for svc in routers:
            await svc.start()
        try:
            a, b = (svc.router for svc in routers)
            assert a is not None and b is not None
            assert a.policy.sampling_seed != b.policy.sampling_seed
            before = a.policy.sampling_seed
            newer = Policy.from_bytes(a.policy.to_bytes())
            newer.updates += 1
            await svc.redis.set(keys.model_bytes, newer.to_bytes())
            await svc.redis.set(keys.model_version, newer.version)
            assert await a.maybe_reload(force=True)
            assert a.policy.version == newer.version and a.policy.sampling_seed != before
        finally:
            for svc in routers:
                await svc.close()

    asyncio.run(main())
