"""Off-policy evaluation in the live service, against a real Redis: the router logs each
arm's predicted correctness, the learner's estimates are committed with its model (they
survive a kill and never count a label twice), shadow candidates are added, refused,
evaluated and promoted, and ``metallm report`` prints them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bandit.config import RoutingConfig, builtin_config
from bandit.datasets import Dataset
from bandit.ope import OffPolicyEvaluator
from bandit.policy import Policy
from tests.test_learner_commit import group_state, wait_until
from workers.cli import main
from workers.harness.replay_server import ReplayServer
from workers.service.app import Service, fresh_policy, warm_started_policy
from workers.service.evaluation import LiveEvaluation, OPEKeys, ope_config
from workers.service.learner import Learner
from workers.service.metrics import Metrics
from workers.service.settings import Keys, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
CFG = builtin_config("overruling")


def lines(policy: Policy, n: int, seed: int = 0) -> list[str]:
    v = np.random.default_rng(seed).normal(size=(n, policy.dim))
    return policy.features.shared_batch(v / np.linalg.norm(v, axis=1, keepdims=True))


def store(r: redis.Redis, keys: Keys, settings: ServiceSettings, policy: Policy, ids: list[str],
          shared: list[str], right: int, seed: int = 0) -> dict[str, tuple[int, float]]:  # fmt: skip
    """Decision records as the router writes them, answered: the arm drawn from a pmf with
    0.5 on one arm and the rest spread evenly; arm ``right`` answers "Yes", the others "No".
    Returns each id's (arm, logged probability)."""
    rng = np.random.default_rng(seed)
    n_arms, costs_usd = policy.n_arms, CFG.arms.fixed_costs_usd()
    now, drawn = time.time(), {}
    pipe = r.pipeline(transaction=False)
    for qid, line in zip(ids, shared, strict=True):
        pmf = np.full(n_arms, 0.5 / (n_arms - 1))
        pmf[rng.integers(n_arms)] = 0.5
        arm = int(rng.choice(n_arms, p=pmf))
        drawn[qid] = (arm, float(pmf[arm]))
        predicted = rng.uniform(0.3, 0.9, n_arms)
        pipe.hset(keys.decision(qid), mapping={
            "shared": line, "arm": arm, "arm_name": policy.arm_names[arm], "prob": repr(float(pmf[arm])),
            "pmf": json.dumps(pmf.tolist()), "predicted": json.dumps(predicted.tolist()),
            "cost": repr(float(policy.costs[arm])), "model_version": 0, "p": "0.0",
            "label": "Yes" if arm == right else "No", "failed": 0, "fallback": 0,
            "cost_usd": repr(float(costs_usd[arm])),
        })  # fmt: skip
        pipe.expire(keys.decision(qid), settings.decision_ttl_s())
        pipe.zadd(keys.awaiting, {qid: now + settings.reward_wait_s})
    pipe.execute()
    return drawn


def brute_force(drawn: dict[str, tuple[int, float]], right: int, target: int) -> float:
    """SNIPS accuracy of "always ``target``" from the logged draws: Σ w·a / Σ w."""
    w = np.array([(a == target) / p for a, p in drawn.values()])
    a = np.array([float(arm == right) for arm, _ in drawn.values()])
    return float((w * a).sum() / w.sum())


def state(r: redis.Redis, keys: Keys) -> OffPolicyEvaluator:
    return OffPolicyEvaluator.from_state(json.loads(r.get(OPEKeys(keys.prefix).state)))


def cli(*argv: str) -> int:
    return main([*argv])


# -- the learner's estimates across kills ------------------------------------------------
def start_learner(redis_url: str, prefix: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "METALLM_BLOCK_MS": "50",
           "METALLM_CLAIM_IDLE_MS": "1000", "METALLM_SNAPSHOT_EVERY_UPDATES": "50",
           "METALLM_SNAPSHOT_EVERY_S": "0.2"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "learn", "--dataset", "overruling", "--redis-url",
         redis_url, "--prefix", prefix], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def feed(r: redis.Redis, keys: Keys, entries: list[dict[str, str]], per_s: float) -> None:
    for start in range(0, len(entries), 10):
        pipe = r.pipeline(transaction=False)
        for f in entries[start : start + 10]:
            pipe.xadd(keys.feedback, f)
        pipe.execute()
        time.sleep(10 / per_s)


def test_the_estimates_survive_a_killed_learner_and_count_each_label_once(
    redis_url: str, prefix: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix)
    policy = fresh_policy(CFG)
    n, right = 1200, 2
    ids = [f"q{i}" for i in range(n)]
    drawn = store(r, keys, settings, policy, ids, lines(policy, n), right, seed)
    feedback = [{"id": q, "label": "Yes"} for q in ids]
    feedback += [{"id": q, "label": "Yes"} for q in rng.sample(ids, n // 5)]  # duplicates
    rng.shuffle(feedback)
    kills = []

    def started(proc: subprocess.Popen[bytes], since: bytes | None) -> None:
        """Up: its start-up commit stamps a new publish time."""
        wait_until(lambda: r.get(keys.model_published) != since, proc)

    for part in range(4):  # killed at a random moment while labels stream in
        chunk = feedback[part * len(feedback) // 4 : (part + 1) * len(feedback) // 4]
        since = r.get(keys.model_published)
        proc = start_learner(redis_url, prefix)
        started(proc, since)
        flow = threading.Thread(target=feed, args=(r, keys, chunk, 400.0))
        flow.start()
        time.sleep(rng.uniform(0.1, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills.append(group_state(r, keys))
        flow.join()
    since = r.get(keys.model_published)
    proc = start_learner(redis_url, prefix)
    started(proc, since)
    wait_until(lambda: group_state(r, keys) == (len(feedback), 0), proc, timeout_s=120)
    proc.send_signal(signal.SIGTERM)
    why = f"seed {seed}, group after each kill {kills}"
    assert proc.wait(timeout=30) == 0, why

    ev = state(r, keys)
    assert ev.labels == n, why  # a lost label makes it fewer, a repeated one more
    live = ev.estimate("live")
    assert live.labels == n and live.acc.value == pytest.approx(
        np.mean([a == right for a, _ in drawn.values()])
    ), why
    for j, arm in enumerate(CFG.arms.names):
        assert ev.estimate(f"always:{arm}").acc.value == pytest.approx(
            brute_force(drawn, right, j)
        ), why
    assert ev.estimate(f"always:{CFG.arms.names[right]}").acc.value == 1.0
    assert ev.estimate("greedy:p=0").labels == n  # P̂ was logged: greedy-at-p is estimated


# -- shadows, promotion and the report, with a learner in this process -------------------
def candidate(best: int, path: Path, seed: int = 0) -> Path:
    """A snapshot trained with full information where arm ``best`` is always right and
    the others never: it picks ``best`` in every context."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(200, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    correct = np.zeros((200, len(CFG.arms)))
    correct[:, best] = 1.0
    cost = np.tile(CFG.arms.normalised_costs(), (200, 1))
    policy = warm_started_policy(CFG, v, ["x"] * 200, correct, cost)
    path.write_bytes(policy.to_bytes())
    return path


def learner_with_ope(redis_url: str, settings: ServiceSettings, policy: Policy,
                     registry: CollectorRegistry) -> tuple[Learner, aioredis.Redis]:  # fmt: skip
    ar = aioredis.Redis.from_url(redis_url)
    ope = LiveEvaluation(ope_config(CFG.arms), CFG.arms.normalised_costs(), ar, settings.prefix)
    return Learner(settings, policy, ar, Metrics(registry), ope), ar


async def learn_all(learner: Learner, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while learner.outcomes["joined"] < n:
        assert time.monotonic() < deadline, f"timed out: {dict(learner.outcomes)}"
        await learner.step()
    await learner.publish()


def test_promote_refuses_a_worse_candidate_and_takes_a_better_one(
    redis_url: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20,
                               snapshot_every_updates=10_000, snapshot_every_s=600)  # fmt: skip
    policy = fresh_policy(CFG)
    costs = CFG.arms.fixed_costs_usd()
    cheap, dear = int(np.argmin(costs)), int(np.argmax(costs))
    common = ("--redis-url", redis_url, "--prefix", prefix)
    assert cli("shadow", "add", str(candidate(cheap, tmp_path / "good.bin")), "--name", "good",
               "--dataset", "overruling", *common) == 0  # fmt: skip
    assert cli("shadow", "add", str(candidate(dear, tmp_path / "bad.bin")), "--name", "bad",
               "--dataset", "overruling", *common) == 0  # fmt: skip
    n = 600
    ids = [f"q{i}" for i in range(n)]
    # The cheapest arm is the one that is right: "good" picks it, "bad" the dearest.
    store(r, keys, settings, policy, ids, lines(policy, n), right=cheap)
    registry = CollectorRegistry()

    async def learn() -> Learner:
        one, ar = learner_with_ope(redis_url, settings, policy, registry)
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)  # the group, the first commit, the candidates
        await one.ope.sync(force=True)  # type: ignore[union-attr]
        for q in ids:
            await ar.xadd(keys.feedback, {"id": q, "label": "Yes"})
        await learn_all(one, n)
        await ar.aclose()
        return one

    one = asyncio.run(learn())
    ev = state(r, keys)
    assert ev.shadows == ["bad", "good"] and ev.estimate("shadow:good").labels == n
    assert ev.estimate("shadow:good").acc.value == 1.0
    assert ev.estimate("shadow:bad").acc.value == 0.0
    one.ope.export(one.m, force=True)  # type: ignore[union-attr]  # (at most every 5 s)
    labels = {"policy": "shadow:good", "bound": "estimate", "scope": "cumulative"}
    assert registry.get_sample_value("metallm_ope_accuracy", labels) == 1.0
    capsys.readouterr()

    assert cli("shadow", "promote", "bad", *common) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "lower bound 0.0%" in err and "--force" in err
    assert not r.exists(OPEKeys(prefix).promote)

    assert cli("shadow", "promote", "good", "--wait-s", "0", *common) == 0
    assert "requested" in capsys.readouterr().out
    version_before = int(r.get(keys.model_version))

    async def adopt() -> Learner:
        ar = aioredis.Redis.from_url(redis_url)
        one.r = ar
        one.ope.r = ar  # type: ignore[union-attr]
        one.ope._last_sync = 0.0  # type: ignore[union-attr]
        await one.step()  # looks for the request and commits the candidate
        await ar.aclose()
        return one

    with caplog.at_level(logging.INFO):
        asyncio.run(adopt())
    assert "'good' promoted" in caplog.text and "forced" not in caplog.text
    promoted = Policy.from_bytes(r.get(keys.model_bytes))
    assert promoted.version == int(r.get(keys.model_version)) > version_before
    assert promoted.decide_lines(lines(promoted, 5, seed=9), greedy=True)[0].arm == cheap
    assert r.smembers(OPEKeys(prefix).shadows) == {b"bad"}
    assert not r.exists(OPEKeys(prefix).promote, OPEKeys(prefix).shadow("good"))
    assert state(r, keys).shadows == ["bad"]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli("shadow", "promote", "bad", "--force", "--wait-s", "0", *common) == 0
    assert "--force" in caplog.text


def test_report_prints_the_table_and_the_savings(
    redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20)
    policy = fresh_policy(CFG)
    n, right = 400, int(np.argmin(CFG.arms.fixed_costs_usd()))
    ids = [f"q{i}" for i in range(n)]
    store(r, keys, settings, policy, ids, lines(policy, n), right)
    for q in ids:
        r.xadd(keys.feedback, {"id": q, "label": "Yes"})

    async def learn() -> None:
        one, ar = learner_with_ope(redis_url, settings, policy, CollectorRegistry())
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)
        await learn_all(one, n)
        await ar.aclose()

    asyncio.run(learn())
    common = ("--redis-url", redis_url, "--prefix", prefix)
    assert cli("report", *common) == 0
    out = capsys.readouterr().out
    assert f"over {n} labelled decisions" in out
    table = out.splitlines()[2:]
    headline = next(line for line in table if line.startswith("router: "))
    rows = {line.split()[0]: line for line in table[: table.index(headline)]}
    assert {"live", "greedy:p=0", *(f"always:{a}" for a in CFG.arms.names)} <= set(rows)
    best = CFG.arms.names[right]
    assert rows[f"always:{best}"].split()[1:3] == ["100.0", "%"]
    assert f"always:{best}: 100.0 %" in headline
    assert "saved" in headline or "more" in headline

    assert cli("report", "--json", "--scope", "window", *common) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scope"] == "window" and doc["headline"]["best_arm"] == f"always:{best}"
    live = next(p for p in doc["policies"] if p["policy"] == "live")
    assert live["labels"] == n and 0 < live["acc"]["value"] < 1


def test_report_without_a_learner_says_so(
    redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("report", "--redis-url", redis_url, "--prefix", prefix) == 2
    assert "no off-policy estimates" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        (builtin_config("arc").arms, r"other arms than the config: missing \[.*'gpt-4'"),
        ("reversed", "same arms in another order"),
    ],
)
def test_shadow_add_refuses_a_snapshot_of_other_arms(
    arms: object, message: str, redis_url: str, prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    names = tuple(reversed(CFG.arms.names)) if arms == "reversed" else arms.names  # type: ignore[attr-defined]
    policy = Policy(CFG.policy, names, np.linspace(0.1, 1, len(names)), 384)
    path = tmp_path / "policy.bin"
    path.write_bytes(policy.to_bytes())
    code = cli("shadow", "add", str(path), "--name", "other", "--dataset", "overruling",
               "--redis-url", redis_url, "--prefix", prefix)  # fmt: skip
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not redis.Redis.from_url(redis_url).exists(OPEKeys(prefix).shadows)


def test_a_state_of_other_arms_is_refused_and_default_rewards_are_not_outcomes(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    arc = builtin_config("arc")
    other = OffPolicyEvaluator(ope_config(arc.arms), arc.arms.normalised_costs())
    r.set(OPEKeys(prefix).state, json.dumps(other.to_state()))
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20,
                               reward_wait_s=0.2, default_reward=0.0)  # fmt: skip
    policy = fresh_policy(CFG)
    n = 10
    store(r, keys, settings, policy, [f"q{i}" for i in range(n)], lines(policy, n), right=0)
    time.sleep(0.3)

    async def main_() -> Learner:
        one, ar = learner_with_ope(redis_url, settings, policy, CollectorRegistry())
        stop = asyncio.Event()
        stop.set()
        with caplog.at_level(logging.WARNING):
            await one.run(stop)
        deadline = time.monotonic() + 30
        while one.outcomes["defaulted"] < n:
            assert time.monotonic() < deadline
            await one.step()
        await one.publish()
        await ar.aclose()
        return one

    one = asyncio.run(main_())
    assert "starts fresh" in caplog.text and "other arms" in caplog.text
    assert one.policy.version == n  # the defaults were learned by the policy …
    ev = state(r, keys)
    assert ev.config.arm_names == CFG.arms.names and ev.labels == 0  # … not by the estimates


# -- the router logs P̂ --------------------------------------------------------------------
def test_the_router_logs_each_arms_predicted_correctness_and_the_learner_estimates(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer
) -> None:
    ds, cfg = overruling
    keys = Keys(prefix)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=50,
                               snapshot_every_updates=5, snapshot_every_s=0.2)  # fmt: skip
    svc = Service(settings, cfg, env={"METALLM_REPLAY_URL": replay.url})
    rows = list(range(30))

    async def main_() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        r = svc.redis
        try:
            for i in rows:
                await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
            deadline = time.monotonic() + 120
            while await r.xlen(keys.responses) < len(rows):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            for i in rows:
                await r.xadd(keys.feedback, {"id": ds.ids[i], "label": ds.labels[i]})
            while svc.learner is None or svc.learner.outcomes["joined"] < len(rows):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            await svc.close()

    asyncio.run(main_())
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    costs, p = cfg.arms.normalised_costs(), cfg.policy.p
    right = []
    for i in rows:
        rec = r.hgetall(keys.decision(ds.ids[i]))
        predicted, pmf = np.array(json.loads(rec["predicted"])), np.array(json.loads(rec["pmf"]))
        assert predicted.shape == (len(cfg.arms),) and np.all((predicted >= 0) & (predicted <= 1))
        # ε-greedy puts the most mass on the greedy arm: argmax P̂ − p·c
        assert int(np.argmax(pmf)) == int(np.argmax(predicted - p * costs))
        right.append(rec["label"] == ds.labels[i])
    ev = state(r, keys)  # type: ignore[arg-type]
    assert ev.labels == len(rows) and ev.estimate("live").acc.value == pytest.approx(np.mean(right))


def test_the_logged_predicted_correctness_does_not_depend_on_the_batchs_p() -> None:
    """Under a budget the batch's p is the pacer's, not the config's: P̂ must come out the same."""
    from bandit.embedder import EMBEDDING_DIM
    from bandit.policy import Policy
    from workers.service.records import drawn

    policy = Policy(CFG.policy, CFG.arms.names, CFG.arms.normalised_costs(), EMBEDDING_DIM)
    v = np.random.default_rng(0).normal(size=(1, EMBEDDING_DIM))
    lines = policy.features.shared_batch(v / np.linalg.norm(v))
    for p in (0.0, 0.3):
        (d,) = policy.decide_lines(lines, p=p)
        got = np.array(json.loads(drawn(policy, d, p)["predicted"]))
        np.testing.assert_allclose(got, policy.correctness(lines)[0])
