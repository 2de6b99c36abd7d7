"""Budget pacing in the live service: settings, and routers and a learner sharing one p on a
real Redis (workers/service/pacing.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import tomllib
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis

from bandit.config import RoutingConfig, builtin_config, parse_config
from bandit.datasets import Dataset
from bandit.errors import ConfigError
from tests.test_service import responses, settings, wait_for
from workers.cli import build_parser
from workers.cli.options import service_settings
from workers.harness.replay_server import ReplayServer
from workers.service.app import Service
from workers.service.pacing import SPEND_BUCKET_S, budget_settings
from workers.service.settings import Keys, ServiceSettings


def config_with(budget: dict[str, Any], mode: str = "decoupled", gpt4_price: float = 1.0) -> RoutingConfig:  # fmt: skip
    """overruling's built-in config with a [budget] table, a mode, and gpt-4's price scaled."""
    data = tomllib.loads((resources.files("bandit") / "configs" / "overruling.toml").read_text())
    data["budget"] = budget
    data["policy"]["mode"] = mode
    if mode == "paper":
        data["policy"]["loss"] = "squared"
    for arm in data["arms"]:
        if arm["name"] == "gpt-4":
            arm["price_per_1k_input_usd"] *= gpt4_price
    return parse_config(data, "test")


# -- settings ------------------------------------------------------------------------------
def test_targets_come_from_options_env_or_the_budget_table() -> None:
    cfg = config_with({"usd_per_10k_queries": 30.0, "step": 0.1, "update_every_s": 2.0})
    b = budget_settings(ServiceSettings(), cfg)
    assert b is not None
    assert (b.pacing.usd_per_10k_queries, b.pacing.step, b.update_every_s) == (30.0, 0.1, 2.0)
    env = {"METALLM_BUDGET_USD_PER_10K": "40", "METALLM_BUDGET_USD_PER_HOUR": "2.5"}
    s = ServiceSettings.from_env(env)
    assert (s.budget_usd_per_10k, s.budget_usd_per_hour) == (40.0, 2.5)
    b = budget_settings(s, cfg)
    assert b is not None and (b.pacing.usd_per_10k_queries, b.pacing.usd_per_hour) == (40.0, 2.5)
    args = build_parser().parse_args(["serve", "--dataset", "overruling", "--budget-usd-per-10k", "25"])  # fmt: skip
    s = service_settings(args, env, cfg)
    assert (s.budget_usd_per_10k, s.budget_usd_per_hour) == (25.0, 2.5)
    assert budget_settings(ServiceSettings(), builtin_config("overruling")) is None
    # a table without a target paces nothing
    assert budget_settings(ServiceSettings(), config_with({"step": 0.1})) is None


@pytest.mark.parametrize(
    ("budget", "kw", "match"),
    [
        (
            {"usd_per_10k_queries": 30.0, "gain": 1},
            {},
            r"\[budget\]: unknown field\(s\) \['gain'\]",
        ),
        ({"usd_per_10k_queries": -3.0}, {}, r"budget.usd_per_10k_queries = -3.0 must be"),
        ({"usd_per_10k_queries": 30.0, "window_s": 1}, {}, r"budget.window_s = 1 must be ≥ 10"),
        ({"usd_per_10k_queries": 30.0, "update_every_s": 0}, {}, r"update_every_s = 0 must be > 0"),
        ({}, {"budget_usd_per_10k": -1.0}, r"budget_usd_per_10k = -1.0 must be ≥ 0 USD"),
    ],
)
def test_bad_budgets_are_refused(budget: dict[str, Any], kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        budget_settings(ServiceSettings(**kw), config_with(budget))


def test_a_budget_in_paper_mode_is_refused_before_the_service_starts(
    redis_url: str, prefix: str
) -> None:
    paper = config_with({}, mode="paper")
    assert budget_settings(ServiceSettings(), paper) is None  # no budget: paper mode is fine
    svc = Service(settings(redis_url, prefix, budget_usd_per_10k=30.0), paper, roles=("learner",))
    with pytest.raises(ConfigError, match="paper mode learns p into the weights"):
        asyncio.run(svc.start())


# -- the live service ----------------------------------------------------------------------
# p_init differs from the config's p (0.05), so that the p logged is seen to be the
# controller's; a long update interval leaves the updates to the test.
BUDGET = {"usd_per_10k_queries": 30.0, "p_init": 0.2, "warmup_queries": 0,
          "update_every_s": 3600.0}  # fmt: skip


def test_two_routers_and_a_learner_share_one_p_that_survives_a_restart(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    ds, _ = overruling
    cfg = config_with(BUDGET)
    keys = Keys(prefix)
    kw = dict(batch_size=4, embedder_process=False)
    learner = Service(settings(redis_url, prefix), cfg, roles=("learner",))
    routers = [Service(settings(redis_url, prefix, consumer=f"r{k}", **kw), cfg, roles=("router",),
                       env={"METALLM_REPLAY_URL": replay.url}) for k in range(2)]  # fmt: skip

    async def ask(r: aioredis.Redis, rows: range) -> list[dict[str, str]]:
        before = int(await r.xlen(keys.responses))
        for i in rows:
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})

        async def answered() -> bool:
            return int(await r.xlen(keys.responses)) >= before + len(rows)

        await wait_for(answered)
        got = (await responses(r, keys))[before:]
        assert sorted(x["id"] for x in got) == sorted(ds.ids[list(rows)])
        return got

    async def p_logged(r: aioredis.Redis, got: list[dict[str, str]]) -> set[float]:
        record_p = [await r.hget(keys.decision(x["id"]), "p") for x in got]
        return {float(x["p"]) for x in got} | {float(p) for p in record_p}

    async def main() -> tuple[float, dict[str, Any]]:
        stop = asyncio.Event()
        await learner.start()
        for svc in routers:
            await svc.start()
        tasks = [asyncio.create_task(svc.run(stop)) for svc in (learner, *routers)]
        r = learner.redis
        try:
            pacer = learner.pacer
            assert pacer is not None and all(svc.pacer is None for svc in routers)
            await wait_for(lambda: _is(pacer.controller.observed_queries == 0))
            got = await ask(r, range(0, 40))
            assert await p_logged(r, got) == {0.2}
            assert all(svc.router is not None and svc.router.answered > 0 for svc in routers)
            # The spend of the answers is in the buckets, counted once.
            spent = sum(float(x["cost_usd"]) for x in got)
            p1 = await pacer.update()
            assert pacer.controller.observed_queries == 40
            assert pacer.spend_per_10k == pytest.approx(spent / 40 * 1e4)
            assert p1 != 0.2 and float(await r.get(keys.budget_p)) == p1
            got = await ask(r, range(40, 80))
            assert await p_logged(r, got) == {p1}
            p2 = await pacer.update()
            assert pacer.controller.observed_queries == 80
            return p2, pacer.controller.to_state()
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for svc in (*routers, learner):
                await svc.close()

    p2, state = asyncio.run(main())

    async def restart(config: RoutingConfig) -> dict[str, Any]:
        again = Service(settings(redis_url, prefix), config, roles=("learner",))
        await again.start()
        try:
            assert again.pacer is not None
            # An update with nothing new spent changes nothing: no bucket is counted twice.
            await again.pacer.update()
            return again.pacer.controller.to_state()
        finally:
            await again.close()

    resumed = asyncio.run(restart(cfg))
    assert resumed["p"] == pytest.approx(p2) and resumed["observed_queries"] == 80
    # gpt-4, the dearest arm, costs twice as much: p is rescaled to keep the USD price of
    # accuracy, and what the controller learned is kept.
    repriced = asyncio.run(restart(config_with(BUDGET, gpt4_price=2.0)))
    assert repriced["p"] == pytest.approx(2 * p2) and repriced["observed_queries"] == 80
    assert repriced["dearest_usd"] == pytest.approx(2 * state["dearest_usd"])


async def _is(value: bool) -> bool:
    return value


def test_spend_buckets_are_read_over_the_window_only(redis_url: str, prefix: str) -> None:
    """Spend older than the window is not counted; spend seen before is not counted again."""
    cfg = config_with({"usd_per_10k_queries": 30.0, "window_s": 60.0, "warmup_queries": 0})
    keys = Keys(prefix)
    svc = Service(settings(redis_url, prefix), cfg, roles=("learner",))

    async def main() -> None:
        await svc.start()
        try:
            pacer, r = svc.pacer, svc.redis
            assert pacer is not None
            now = 1_000_000 * SPEND_BUCKET_S
            old, recent = keys.spend_bucket(now // SPEND_BUCKET_S - 20), keys.spend_bucket(now // SPEND_BUCKET_S - 1)  # fmt: skip
            await r.hset(old, mapping={"usd": "5.0", "queries": "10"})
            await r.hset(recent, mapping={"usd": "0.01", "queries": "4"})
            await pacer.update(now_s=float(now))
            assert pacer.controller.observed_queries == 4
            assert pacer.spend_per_10k == pytest.approx(0.01 / 4 * 1e4)
            await r.hincrbyfloat(recent, "usd", 0.02)
            await r.hincrby(recent, "queries", 2)
            await pacer.update(now_s=float(now + 1))
            assert pacer.controller.observed_queries == 6
            assert pacer.spend_per_10k == pytest.approx(0.03 / 6 * 1e4)
        finally:
            await svc.close()

    asyncio.run(main())


def test_without_a_budget_p_is_the_configs_and_no_spend_is_counted(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    ds, cfg = overruling
    cfg = dataclasses.replace(cfg, policy=cfg.policy.replace(p=0.07))
    keys = Keys(prefix)
    svc = Service(settings(redis_url, prefix, embedder_process=False), cfg,
                  env={"METALLM_REPLAY_URL": replay.url})  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        r = svc.redis
        try:
            assert svc.pacer is None
            for i in range(8):
                await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})

            async def answered() -> bool:
                return int(await r.xlen(keys.responses)) >= 8

            await wait_for(answered)
            assert {x["p"] for x in await responses(r, keys)} == {"0.07"}
            assert await r.keys(f"{prefix}spend:*") == [] and await r.get(keys.budget_p) is None
        finally:
            stop.set()
            await task
            await svc.close()

    asyncio.run(main())
