"""The learner's commit, against a real Redis: exactly-once learning across kills (of a real
learner process), default rewards followed by late labels, the markers' lifetime, and the
reward the learner learns and exports."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bandit.config import builtin_config
from bandit.policy import Policy
from workers.service.app import fresh_policy
from workers.service.learner import Learner
from workers.service.metrics import Metrics
from workers.service.settings import LEARNERS_GROUP, Keys, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


def shared_lines(policy: Policy, n: int, seed: int = 0) -> list[str]:
    """Shared feature lines of ``n`` random unit vectors, as the router builds them."""
    v = np.random.default_rng(seed).normal(size=(n, policy.dim))
    return policy.features.shared_batch(v / np.linalg.norm(v, axis=1, keepdims=True))


def store_decisions(r: redis.Redis, keys: Keys, settings: ServiceSettings, policy: Policy,
                    ids: list[str], lines: list[str], answered: Callable[[int], bool] = lambda i: True,
                    fallback: Callable[[int], bool] = lambda i: False) -> None:  # fmt: skip
    """Decision records as the router writes them: at decision time (``_store_decisions``,
    with the TTL) and, for the answered ones, at answer time (``_write_responses``: the
    parsed label, and the id in the awaiting set)."""
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for i, (qid, line) in enumerate(zip(ids, lines, strict=True)):
        arm = i % policy.n_arms
        pmf = np.full(policy.n_arms, 0.1 / (policy.n_arms - 1))
        pmf[arm] = 0.9
        key = keys.decision(qid)
        pipe.hset(key, mapping={
            "shared": line, "arm": arm, "arm_name": policy.arm_names[arm], "prob": "0.9",
            "pmf": json.dumps(pmf.tolist()), "cost": repr(float(policy.costs[arm])),
            "model_version": 0, "p": "0.0", "labels": json.dumps(["Yes", "No"]), "decided_at": repr(now),
        })  # fmt: skip
        pipe.expire(key, settings.decision_ttl_s())
        if answered(i):
            pipe.hset(key, mapping={"label": "Yes", "answered_by": policy.arm_names[arm],
                                    "fallback": int(fallback(i)), "failed": 0, "cost_usd": "0.001"})  # fmt: skip
            pipe.zadd(keys.awaiting, {qid: now + settings.reward_wait_s})
    pipe.execute()


def learner_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "METALLM_BLOCK_MS": "50",
            "METALLM_CLAIM_IDLE_MS": "1000", "METALLM_SNAPSHOT_EVERY_UPDATES": "200",
            "METALLM_SNAPSHOT_EVERY_S": "0.3", **extra}  # fmt: skip


def start_learner(redis_url: str, prefix: str, model_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "learn", "--dataset", "overruling", "--redis-url", redis_url,
         "--prefix", prefix, "--model-dir", str(model_dir)],
        cwd=ROOT, env=learner_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def group_state(r: redis.Redis, keys: Keys) -> tuple[int, int]:
    """(entries the learners' group has read, entries pending), (0, 0) before it exists."""
    try:
        groups = r.xinfo_groups(keys.feedback)
    except redis.ResponseError:
        return 0, 0
    for g in groups:
        if g["name"] == LEARNERS_GROUP.encode():
            return int(g.get("entries-read") or 0), int(g["pending"])
    return 0, 0


def version(r: redis.Redis, keys: Keys) -> int:
    raw = r.get(keys.model_version)
    return int(raw) if raw is not None else -1


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float = 60,
               poll_s: float = 0.005) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"learner exited early ({proc.returncode}): {err[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll_s)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def feed(r: redis.Redis, keys: Keys, entries: list[dict[str, str]], per_s: float) -> None:
    """XADD ``entries`` to the feedback stream at about ``per_s`` entries a second."""
    chunk = 20
    for start in range(0, len(entries), chunk):
        pipe = r.pipeline(transaction=False)
        for f in entries[start : start + chunk]:
            pipe.xadd(keys.feedback, f)
        pipe.execute()
        time.sleep(chunk / per_s)


def test_a_learner_killed_at_any_moment_learns_each_label_exactly_once(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix)
    policy = fresh_policy(builtin_config("overruling"))
    n = 3000
    ids = [f"d{i}" for i in range(n)]
    # Every 20th decision fell back to another arm (not learnable), every 33rd was never
    # answered (its label is unknown); the rest are learnable.
    store_decisions(r, keys, settings, policy, ids, shared_lines(policy, n),
                    answered=lambda i: i % 33 != 5, fallback=lambda i: i % 20 == 3)  # fmt: skip
    learnable = {q for i, q in enumerate(ids) if i % 33 != 5 and i % 20 != 3}
    feedback = [{"id": q, "label": rng.choice(["Yes", "No"])} for q in ids]
    feedback += [{"id": q, "label": "Yes"} for q in rng.sample(ids, n // 10)]  # duplicates
    feedback += [{"id": f"never-{i}", "label": "No"} for i in range(20)]
    feedback += [{"id": f"d{i}", "reward": "7"} for i in range(10)]  # invalid: dead letters
    rng.shuffle(feedback)
    cuts = [0, 1000, 1500, 2000, 2400, 2800]
    backlog, steady_1, steady_2, snap_1, snap_2 = (
        feedback[i:j] for i, j in itertools.pairwise(cuts)
    )
    kills: list[str] = []

    def started(proc: subprocess.Popen[bytes], since: bytes | None) -> None:
        """Wait until the learner is up: its start-up commit stamps a new publish time."""
        wait_until(lambda: r.get(keys.model_published) != since, proc)

    # 1. A backlog: killed while it reads ahead and learns it, before or after a snapshot.
    feed(r, keys, backlog, per_s=1e6)
    proc = start_learner(redis_url, prefix, tmp_path)
    wait_until(lambda: group_state(r, keys)[1] > 0, proc)
    time.sleep(rng.uniform(0, 0.3))
    kill(proc)
    kills.append(f"backlog at version {version(r, keys)}, read {group_state(r, keys)}")

    # 2. Steady feedback, killed at a random moment of it; then 3. right around a snapshot:
    # the moment a new version shows in Redis, or a little after.
    for part, around_snapshot in (
        (steady_1, False),
        (steady_2, False),
        (snap_1, True),
        (snap_2, True),
    ):
        since = r.get(keys.model_published)
        proc = start_learner(redis_url, prefix, tmp_path)
        started(proc, since)
        seen = version(r, keys)
        flow = threading.Thread(target=feed, args=(r, keys, part, 500.0))
        flow.start()
        if around_snapshot:
            wait_until(lambda s=seen: version(r, keys) != s, proc, poll_s=0.0005)
            delay_s = rng.choice([0.0, rng.uniform(0.001, 0.02)])
        else:
            delay_s = rng.uniform(0.1, 0.9)
        time.sleep(delay_s)
        kill(proc)
        kills.append(f"{'snapshot' if around_snapshot else 'steady'} +{delay_s:.3f} s at "
                     f"version {version(r, keys)}, read {group_state(r, keys)}")  # fmt: skip
        flow.join()

    feed(r, keys, feedback[cuts[-1] :], per_s=1e6)
    why = f"seed {seed}, kills: {kills}"
    # 4. The last one runs until the stream is drained, then stops cleanly.
    proc = start_learner(redis_url, prefix, tmp_path)
    wait_until(lambda: group_state(r, keys) == (len(feedback), 0), proc, timeout_s=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, why

    assert version(r, keys) == len(learnable), why
    # Each learnable label's marker was committed with the model that holds it; a marker
    # without its update would mean a lost label, an update without a marker a second one.
    marked = {q for q in ids if r.exists(keys.learned(q))}
    assert learnable <= marked, why
    assert not r.zrange(keys.awaiting, 0, -1), why  # every answered id was labelled
    assert r.xlen(keys.dead) == 10, why  # each invalid entry dead-lettered once
    assert Policy.from_bytes(r.get(keys.model_bytes)).version == len(learnable), why


def learner(redis_url: str, settings: ServiceSettings, policy: Policy,
            registry: CollectorRegistry | None = None) -> tuple[Learner, aioredis.Redis]:  # fmt: skip
    ar = aioredis.Redis.from_url(redis_url)
    return Learner(settings, policy, ar, Metrics(registry or CollectorRegistry())), ar


async def steps_until(learner: Learner, check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out; outcomes {dict(learner.outcomes)}"
        await learner.step()


@pytest.mark.parametrize("when", ["before the commit", "after the commit", "after a kill"])
def test_a_default_reward_then_a_late_label_is_learned_once(
    when: str, redis_url: str, prefix: str
) -> None:
    """The default reward comes at the end of the wait; the real label after it."""
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20, reward_wait_s=0.2,
                               default_reward=0.0, snapshot_every_updates=1000,
                               snapshot_every_s=600)  # fmt: skip
    policy = fresh_policy(builtin_config("overruling"))
    n = 20
    ids = [f"q{i}" for i in range(n)]
    store_decisions(r, keys, settings, policy, ids, shared_lines(policy, n))

    async def main() -> None:
        first, ar = learner(redis_url, settings, policy)
        stop = asyncio.Event()
        stop.set()
        await first.run(stop)  # creates the group, commits version 0
        time.sleep(0.3)
        await steps_until(first, lambda: first.outcomes["defaulted"] == n)
        second = first
        if when == "after the commit":
            await first.publish()
        elif when == "after a kill":  # no commit: what it learned is lost with it
            await ar.aclose()
            committed = Policy.from_bytes(r.get(keys.model_bytes))
            second, ar = learner(redis_url, settings, committed)
        for q in ids:
            r.xadd(keys.feedback, {"id": q, "label": "Yes"})
        labelled = ("joined", "duplicate", "unknown")
        await steps_until(second, lambda: sum(second.outcomes[o] for o in labelled) == n)
        await second.run(stop)  # commits
        await ar.aclose()
        if when == "after a kill":  # the labels are learned in place of the lost defaults
            assert second.outcomes["joined"] == n
        else:
            assert (second.outcomes["defaulted"], second.outcomes["duplicate"]) == (n, n)
        # The markers outlive the records, so a label even later is a duplicate too.
        for q in ids:
            assert r.pttl(keys.learned(q)) >= r.pttl(keys.decision(q)) > 0

    asyncio.run(main())
    assert version(r, keys) == n
    assert not r.zrange(keys.awaiting, 0, -1)


@pytest.mark.parametrize("path", ["label", "default reward"])
def test_the_learned_marker_outlives_the_decision_record(
    path: str, redis_url: str, prefix: str
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    wait_s = 0.2 if path == "default reward" else 30.0
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20, reward_wait_s=wait_s,
                               default_reward=1.0)  # fmt: skip
    policy = fresh_policy(builtin_config("overruling"))
    store_decisions(r, keys, settings, policy, ["q0"], shared_lines(policy, 1))
    if path == "label":
        r.xadd(keys.feedback, {"id": "q0", "label": "No"})
    else:
        time.sleep(0.3)

    async def main() -> None:
        one, ar = learner(redis_url, settings, policy)
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)
        await steps_until(one, lambda: one.updates == 1)
        await one.run(stop)  # commits
        await ar.aclose()

    asyncio.run(main())
    assert r.ttl(keys.decision("q0")) > settings.reward_wait_s  # the router's TTL
    assert r.pttl(keys.learned("q0")) >= r.pttl(keys.decision("q0"))
    assert r.ttl(keys.learned("q0")) >= settings.decision_ttl_s()


def test_a_correct_cheap_answer_raises_its_correctness_and_the_reward_is_a_minus_pc(
    redis_url: str, prefix: str
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20)
    base = fresh_policy(builtin_config("overruling"))
    p = 0.5
    policy = base.with_config(base.config.replace(p=p, learning_rate=0.5))
    cheap = int(np.argmin(policy.costs))
    c = float(policy.costs[cheap])
    assert 0 < c < 1
    line = shared_lines(policy, 1, seed=3)[0]
    n = 10
    ids = [f"q{i}" for i in range(n)]
    # n decisions of the cheap arm in one context; its answer "Yes" is right for all but one.
    pipe = r.pipeline(transaction=False)
    for q in ids:
        pipe.hset(keys.decision(q), mapping={"shared": line, "arm": cheap, "arm_name": policy.arm_names[cheap],
                                             "prob": "0.9", "cost": repr(c), "label": "Yes", "fallback": 0,
                                             "failed": 0})  # fmt: skip
        pipe.xadd(keys.feedback, {"id": q, "label": "No" if q == "q0" else "Yes"})
    pipe.execute()
    before = float(policy.correctness([line])[0, cheap])
    registry = CollectorRegistry()

    async def main() -> None:
        one, ar = learner(redis_url, settings, policy, registry)
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)
        await steps_until(one, lambda: one.updates == n)
        await ar.aclose()

    asyncio.run(main())
    after = float(policy.correctness([line])[0, cheap])
    assert after > before + 0.05
    arm = {"arm": policy.arm_names[cheap]}
    assert registry.get_sample_value("metallm_reward_count", arm) == n
    # The reward a − p·c: (n − 1) right answers earn 1 − p·c each (the gain), the wrong one
    # loses p·c.
    gain = registry.get_sample_value("metallm_reward_gain_total", arm)
    assert gain == pytest.approx((n - 1) * (1 - p * c))
    assert registry.get_sample_value("metallm_reward_loss_total", arm) == pytest.approx(p * c)


def test_a_decision_record_that_cannot_be_learned_is_a_dead_letter(
    redis_url: str, prefix: str
) -> None:
    """A re-read entry that crashed the learner would crash it again after every restart."""
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20)
    policy = fresh_policy(builtin_config("overruling"))
    store_decisions(r, keys, settings, policy, ["q0", "q1"], shared_lines(policy, 2))
    r.hset(keys.decision("q0"), "prob", "not-a-probability")
    for q in ("q0", "q1"):
        r.xadd(keys.feedback, {"id": q, "label": "Yes"})

    async def main() -> None:
        one, ar = learner(redis_url, settings, policy)
        stop = asyncio.Event()
        stop.set()
        await one.run(stop)
        await steps_until(one, lambda: sum(one.outcomes.values()) == 2)
        await one.run(stop)
        await ar.aclose()
        assert (one.outcomes["invalid"], one.outcomes["joined"]) == (1, 1)

    asyncio.run(main())
    assert version(r, keys) == 1
    [(_, dead)] = r.xrange(keys.dead)
    assert dead[b"id"] == b"q0" and b"cannot be learned" in dead[b"error"]
    assert group_state(r, keys)[1] == 0
