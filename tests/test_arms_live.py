"""Changing the arms live: a config reload (in process, and SIGHUP to a real worker)
migrates the policy, gives a new arm its exploration floor and drops a retired one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bandit.config import RoutingConfig, load_config
from bandit.datasets import Dataset
from bandit.floors import FloorConfig
from tests.test_delivery import wait_until
from tests.test_learner_commit import learner, shared_lines, steps_until, store_decisions
from tests.test_service import _count, responses, run_with_service, settings, wait_for
from workers.harness.replay_server import ReplayServer
from workers.service.app import Service
from workers.service.learner import Learner
from workers.service.settings import Keys

ROOT = Path(__file__).resolve().parent.parent
KEPT = ("gpt-3.5-turbo", "text-davinci-002")


def write_config(path: Path, arms: Sequence[str], prices: dict[str, float] | None = None) -> Path:
    """The built-in overruling config with only ``arms`` (in that order); ``prices``:
    typical_tokens_in per arm, to re-price it."""
    data = tomllib.loads((resources.files("bandit") / "configs" / "overruling.toml").read_text())
    by_name = {a["name"]: a for a in data["arms"]}
    lines = ['[task]\nname = "overruling"\nlabels = ["Yes", "No"]\n', "[drift]\nenabled = false\n"]
    lines.append("[policy]")  # drift boosts would add floors of their own: not tested here
    lines += [f"{k} = {json.dumps(v)}" for k, v in data["policy"].items()]
    for name in arms:
        arm = {
            **by_name[name],
            **({"typical_tokens_in": prices[name]} if prices and name in prices else {}),
        }
        lines.append("\n[[arms]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in arm.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def predictions(policy: Any, arms: Sequence[str], lines: list[str]) -> np.ndarray:
    """P̂(correct) of ``arms``, shape (n, len(arms))."""
    got = policy.correctness(lines)
    return got[:, [policy.arm_names.index(a) for a in arms]]


async def send(r: aioredis.Redis, keys: Keys, ds: Dataset, rows: range, tag: str) -> None:
    for i in rows:
        await r.xadd(keys.queries, {"id": f"{tag}-{ds.ids[i]}", "text": ds.texts[i]})


def test_reload_adds_an_arm_with_its_floor_and_retires_one(
    tmp_path: Path, redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig],
    replay: ReplayServer,
) -> None:  # fmt: skip
    ds, _ = overruling
    path = write_config(tmp_path / "arms.toml", [*KEPT, "xlarge"])
    keys = Keys(prefix)
    s = settings(redis_url, prefix, floor_share=0.2, floor_labels=4)
    svc = Service(s, load_config(path), env={"METALLM_REPLAY_URL": replay.url},
                  config_path=str(path))  # fmt: skip

    async def body(svc: Service, r: aioredis.Redis) -> None:
        assert svc.router is not None and svc.learner is not None
        # learn a little first, so that kept arms have predictions of their own
        await send(r, keys, ds, range(30), "a")
        await wait_for(lambda: _count(r, keys.responses, 30))
        for x in await responses(r, keys):
            await r.xadd(
                keys.feedback, {"id": x["id"], "label": ds.labels[int(x["id"].split("-")[-1])]}
            )
        await wait_for(lambda: _async(svc.router.policy.version >= 30))
        lines = shared_lines(svc.router.policy, 20)
        before = predictions(svc.router.policy, KEPT, lines)
        learner_before = predictions(svc.learner.policy, KEPT, lines)

        write_config(path, [*KEPT, "gpt-4"])  # xlarge retired, gpt-4 added
        assert await svc.reloader.reload()
        for policy in (svc.router.policy, svc.learner.policy):
            assert policy.arm_names == (*KEPT, "gpt-4")
        np.testing.assert_array_equal(predictions(svc.router.policy, KEPT, lines), before)
        np.testing.assert_array_equal(predictions(svc.learner.policy, KEPT, lines), learner_before)
        assert {k.decode(): float(v) for k, v in (await r.hgetall(keys.explore_floor)).items()} == {
            "gpt-4": 0.2
        }

        await send(r, keys, ds, range(30, 130), "b")
        await wait_for(lambda: _count(r, keys.responses, 130))
        after = [x for x in await responses(r, keys) if x["id"].startswith("b-")]
        assert {x["arm"] for x in after} <= {*KEPT, "gpt-4"}  # the retired arm gets nothing
        assert sum(x["arm"] == "gpt-4" for x in after) >= 4
        for x in after:  # the logged probability is the floored pmf's
            record = await r.hgetall(keys.decision(x["id"]))
            pmf = json.loads(record[b"pmf"])
            assert pmf[2] >= 0.2 - 1e-12
            assert float(record[b"prob"]) == pytest.approx(pmf[(*KEPT, "gpt-4").index(x["arm"])])

        # labels of gpt-4 end its floor; the routers then decide without it
        for x in after:
            await r.xadd(
                keys.feedback, {"id": x["id"], "label": ds.labels[int(x["id"].split("-")[-1])]}
            )
        await wait_for(lambda: _async(not svc.learner.floors.floors()))  # type: ignore[union-attr]
        await wait_for(lambda: _async(svc.router.policy.version >= svc.learner.published_version))
        await wait_for(lambda: _no_floor(r, keys))
        await send(r, keys, ds, range(130, 150), "c")
        await wait_for(lambda: _count(r, keys.responses, 150))
        for x in [x for x in await responses(r, keys) if x["id"].startswith("c-")]:
            pmf = json.loads((await r.hgetall(keys.decision(x["id"])))[b"pmf"])
            assert min(pmf) < 0.2  # ε-greedy alone: 0.1 / 3 off the greedy arm

        # a price change alone: the arm's normalised cost, hence what p weighs, changes
        cheap = svc.router.policy.costs[0]
        write_config(path, [*KEPT, "gpt-4"], prices={"gpt-3.5-turbo": 59694 * 4})
        assert await svc.reloader.reload()
        assert svc.router.policy.costs[0] == pytest.approx(cheap * 4)
        line = lines[:1]
        at_0 = svc.router.policy.decide_lines(line, p=0.0, greedy=True)[0].scores
        at_1 = svc.router.policy.decide_lines(line, p=1.0, greedy=True)[0].scores
        np.testing.assert_allclose(at_0 - at_1, svc.router.policy.costs)
        # a bad file is refused and the running config kept
        path.write_text("[[arms]]\nname = 'x'\n")
        assert not await svc.reloader.reload()
        assert svc.router.policy.arm_names == (*KEPT, "gpt-4")

    run_with_service(svc, body)


async def _async(value: bool) -> bool:
    return value


async def _no_floor(r: aioredis.Redis, keys: Keys) -> bool:
    return not await r.exists(keys.explore_floor)


def test_a_label_for_an_arm_the_learner_does_not_have_is_counted_not_crashed(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    from bandit.config import builtin_config
    from workers.service.app import fresh_policy

    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    s = settings(redis_url, prefix)
    routers = fresh_policy(builtin_config("overruling"))  # the router's arms: all twelve
    mine = routers.with_arms(routers.arm_names[:6], routers.costs[:6])  # the learner's: six
    # decision i drew arm i % 12: q6 … q11 name arms this learner does not have
    ids = [f"q{i}" for i in range(12)]
    store_decisions(r, keys, s, routers, ids, shared_lines(routers, 12))
    for q in ids:
        r.xadd(keys.feedback, {"id": q, "label": "Yes"})

    async def main() -> None:
        one, ar = learner(redis_url, s, mine)
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)  # makes the group
        await steps_until(one, lambda: sum(one.outcomes.values()) == 12)
        await one.publish()
        await ar.aclose()
        assert (one.outcomes["joined"], one.outcomes["unknown_arm"]) == (6, 6)

    asyncio.run(main())
    dead = r.xrange(keys.dead)
    assert len(dead) == 6 and all(b"not in the learner's config" in f[b"error"] for _, f in dead)


def test_sighup_reloads_a_running_worker(
    tmp_path: Path, redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig],
    replay: ReplayServer,
) -> None:  # fmt: skip
    ds, _ = overruling
    path = write_config(tmp_path / "arms.toml", [*KEPT, "xlarge"])
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METALLM_REPLAY_URL": replay.url,
           "HF_HUB_OFFLINE": "1", "METALLM_BLOCK_MS": "50", "METALLM_RELOAD_CHECK_S": "0.1",
           "METALLM_SNAPSHOT_EVERY_S": "0.2", "METALLM_FLOOR_SHARE": "0.3"}  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "serve", "--config", str(path), "--redis-url", redis_url,
         "--prefix", prefix, "--embed-in-process"], cwd=ROOT, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        for i in range(10):
            r.xadd(keys.queries, {"id": f"a-{i}", "text": ds.texts[i]})
        wait_until(lambda: r.xlen(keys.responses) >= 10, proc=proc, timeout_s=120)
        write_config(path, [*KEPT, "gpt-4"])
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: r.hget(keys.explore_floor, "gpt-4") is not None, proc=proc)
        for i in range(10, 70):
            r.xadd(keys.queries, {"id": f"b-{i}", "text": ds.texts[i]})
        wait_until(lambda: r.xlen(keys.responses) >= 70, proc=proc)
        arms = [
            f[b"arm"].decode() for _, f in r.xrange(keys.responses) if f[b"id"].startswith(b"b-")
        ]
        assert "gpt-4" in arms and "xlarge" not in arms
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "added ['gpt-4']; removed ['xlarge']" in text, text[-3000:]


def test_the_learner_ends_a_floor_at_its_spend_cap_and_commits_it(
    redis_url: str, prefix: str
) -> None:
    from bandit.config import builtin_config
    from workers.service.app import fresh_policy
    from workers.service.floors import LearnerFloors
    from workers.service.metrics import Metrics
    from workers.service.settings import ServiceSettings

    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    s = settings(redis_url, prefix, floor_share=0.1, floor_labels=100, floor_max_spend_usd=0.0025)
    assert isinstance(s, ServiceSettings)
    policy = fresh_policy(builtin_config("overruling"))
    ids = [f"q{i}" for i in range(36)]  # decision i drew arm i % 12: gpt-4 thrice
    store_decisions(r, keys, s, policy, ids, shared_lines(policy, 36))  # 0.001 USD each
    for q in ids:
        r.xadd(keys.feedback, {"id": q, "label": "Yes"})

    async def main() -> None:
        ar = aioredis.Redis.from_url(redis_url)
        floors = LearnerFloors(
            s.floor_config(), policy.arm_names, ar, keys, Metrics(CollectorRegistry())
        )
        await floors.restore(added=["gpt-4"])
        one = Learner(s, policy, ar, Metrics(CollectorRegistry()), floors=floors)
        await one.publish()
        assert await ar.hget(keys.explore_floor, "gpt-4") == b"0.1"
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)
        await steps_until(one, lambda: sum(one.outcomes.values()) == 36)
        assert floors.floors() == {}  # 3 labels × 0.001 USD ≥ 0.0025 USD
        await one.publish()
        assert not await ar.exists(keys.explore_floor)
        restored = LearnerFloors(
            s.floor_config(), policy.arm_names, ar, keys, Metrics(CollectorRegistry())
        )
        await restored.restore()
        assert restored.floors() == {}  # the ended floor stays ended after a restart
        await ar.aclose()

    asyncio.run(main())


def test_a_drift_detection_raises_the_arms_floor(redis_url: str, prefix: str) -> None:
    from bandit.config import builtin_config
    from workers.service.floors import LearnerFloors
    from workers.service.metrics import Metrics

    cfg = builtin_config("overruling")
    called: list[str] = []
    svc = Service(settings(redis_url, prefix), cfg, on_drift=called.append)
    r = aioredis.Redis.from_url(redis_url)
    floors = LearnerFloors(
        FloorConfig(), cfg.arms.names, r, Keys(prefix), Metrics(CollectorRegistry())
    )
    svc._drifted(floors, "xlarge")
    assert floors.floors() == {"xlarge": cfg.drift.boost_share} and called == ["xlarge"]
