"""Feedback idempotence, expiry, at-least-once delivery and graceful shutdown, against a
real Redis, the replay LLM server and real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.app import Service
from workers.service.settings import Keys, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def slow_replay(overruling: tuple[Dataset, RoutingConfig]) -> Iterator[ReplayServer]:
    srv = ReplayServer(ReplayBook(*overruling), Faults(latency_ms=1500)).start()
    yield srv
    srv.stop()


def fast_settings(redis_url: str, prefix: str, **kw: object) -> ServiceSettings:
    base = dict(redis_url=redis_url, prefix=prefix, block_ms=50, reload_check_s=0.05, snapshot_every_s=0.2,
                claim_idle_ms=500)  # fmt: skip
    base.update(kw)
    return ServiceSettings(**base)  # type: ignore[arg-type]


def learner_round(redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], feedback: list[dict[str, str]],
                  answered: int = 3, settle_s: float = 1.0, **kw: object) -> Service:  # fmt: skip
    """Answer ``answered`` queries with router+learner, send ``feedback``, let it settle."""
    ds, cfg = overruling
    keys = Keys(prefix)
    r = redis.Redis.from_url(redis_url)
    with _replay(ds, cfg) as replay:
        svc = Service(
            fast_settings(redis_url, prefix, **kw), cfg, env={"METALLM_REPLAY_URL": replay.url}
        )

        async def main() -> None:
            stop = asyncio.Event()
            await svc.start()
            task = asyncio.create_task(svc.run(stop))
            for i in range(answered):
                r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
            deadline = time.monotonic() + 60
            while r.xlen(keys.responses) < answered:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            for f in feedback:
                r.xadd(keys.feedback, f)
            await asyncio.sleep(settle_s)
            stop.set()
            await task
            await svc.close()

        asyncio.run(main())
    return svc


class _replay:
    def __init__(self, ds: Dataset, cfg: RoutingConfig) -> None:
        self.srv = ReplayServer(ReplayBook(ds, cfg))

    def __enter__(self) -> ReplayServer:
        return self.srv.start()

    def __exit__(self, *exc: object) -> None:
        self.srv.stop()


def test_duplicate_and_unknown_feedback_never_train(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, _ = overruling
    fb = [{"id": ds.ids[0], "label": ds.labels[0]}, {"id": ds.ids[0], "label": ds.labels[0]},
          {"id": ds.ids[1], "reward": "0.5"}, {"id": "never-asked", "label": "Yes"},
          {"id": ds.ids[2], "reward": "7"}]  # fmt: skip
    svc = learner_round(redis_url, prefix, overruling, fb)
    assert svc.learner is not None
    out = svc.learner.outcomes
    assert (out["joined"], out["duplicate"], out["unknown"], out["invalid"]) == (2, 1, 1, 1)
    assert svc.learner.updates == 2
    r = redis.Redis.from_url(redis_url)
    dead = [f for _, f in r.xrange(Keys(prefix).dead)]
    assert len(dead) == 1 and dead[0][b"stage"] == b"feedback"


def test_the_batch_read_ahead_is_learned_and_acknowledged_on_stop(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from prometheus_client import CollectorRegistry
    from redis import asyncio as aioredis

    import workers.service.learner
    from bandit.config import builtin_config
    from workers.service.app import fresh_policy
    from workers.service.learner import Learner
    from workers.service.metrics import Metrics

    monkeypatch.setattr(workers.service.learner, "FEEDBACK_BATCH", 4)
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    policy = fresh_policy(builtin_config("overruling"))
    vectors = np.random.default_rng(0).normal(size=(7, policy.dim))
    for i, line in enumerate(
        policy.features.shared_batch(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    ):
        r.hset(keys.decision(f"q{i}"), mapping={"shared": line, "arm": i % policy.n_arms, "prob": "0.9",
                                               "cost": "0.5", "label": "Yes", "fallback": 0, "failed": 0})  # fmt: skip
        r.xadd(keys.feedback, {"id": f"q{i}", "label": "Yes" if i % 2 else "No"})

    async def main() -> tuple[int, int, int, int]:
        ar = aioredis.Redis.from_url(redis_url)
        learner = Learner(
            fast_settings(redis_url, prefix, snapshot_every_s=600),
            policy,
            ar,
            Metrics(CollectorRegistry()),
        )
        stop = asyncio.Event()
        stop.set()
        await learner.run(stop)  # creates the group and publishes; no step
        await learner.step()  # learns the first 4 and reads and joins the other 3 ahead
        # Nothing is acknowledged before the commit: all 7 are still pending.
        after_step = (learner.updates, int(r.xpending(keys.feedback, "learners")["pending"]))
        await learner.run(stop)  # stops at once: what was read ahead is learned on the way out
        await ar.aclose()
        return (*after_step, learner.updates, int(r.xpending(keys.feedback, "learners")["pending"]))

    assert asyncio.run(main()) == (4, 7, 7, 0)
    assert r.get(keys.model_version) == b"7"  # the snapshot on stop holds all of them


@pytest.mark.parametrize(
    ("default_reward", "outcome", "updates"), [(None, "expired", 0), (0.0, "defaulted", 3)]
)
def test_labels_that_never_come(default_reward: float | None, outcome: str, updates: int, redis_url: str,
                                prefix: str, overruling: tuple[Dataset, RoutingConfig]) -> None:  # fmt: skip
    svc = learner_round(
        redis_url,
        prefix,
        overruling,
        [],
        reward_wait_s=0.3,
        settle_s=1.5,
        default_reward=default_reward,
    )
    assert svc.learner is not None
    assert svc.learner.outcomes[outcome] == 3
    assert svc.learner.updates == updates


def worker(
    command: str, redis_url: str, prefix: str, replay_url: str, *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "METALLM_REPLAY_URL": replay_url, "METALLM_CLAIM_IDLE_MS": "1000",
           "METALLM_BLOCK_MS": "50", "METALLM_BATCH_SIZE": "8", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", command, "--dataset", "overruling", "--redis-url", redis_url,
         "--prefix", prefix, *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_until(check, timeout_s: float = 90, proc: subprocess.Popen[bytes] | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"worker exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def pending(r: redis.Redis, keys: Keys) -> int:
    try:
        return int(r.xpending(keys.queries, "routers")["pending"])
    except redis.ResponseError:  # the worker has not created its group yet
        return 0


def submit(r: redis.Redis, keys: Keys, ds: Dataset, n: int) -> None:
    for i in range(n):
        r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})


def test_a_killed_router_loses_nothing(redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig],
                                       slow_replay: ReplayServer) -> None:  # fmt: skip
    ds, _ = overruling
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    n = 20
    submit(r, keys, ds, n)
    first = worker("route", redis_url, prefix, slow_replay.url, "--consumer", "doomed")
    try:
        wait_until(lambda: pending(r, keys) > 0, proc=first)
        embedder_children = children(first.pid)
        assert embedder_children  # the router embeds in a child process by default
        first.send_signal(signal.SIGKILL)  # in the middle of a batch: LLM calls take 1.5 s
        first.wait(timeout=10)
        assert r.xlen(keys.responses) == 0
        wait_until(lambda: not any(alive(pid) for pid in embedder_children), timeout_s=10)
        second = worker("route", redis_url, prefix, slow_replay.url, "--consumer", "survivor")
        try:
            wait_until(lambda: r.xlen(keys.responses) >= n, proc=second)
        finally:
            second.terminate()
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    ids = [f[b"id"].decode() for _, f in r.xrange(keys.responses)]
    assert sorted(ids) == sorted(ds.ids[:n])  # every query answered, each exactly once
    assert r.xpending(keys.queries, "routers")["pending"] == 0


def test_sigterm_finishes_the_batch_in_flight(redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig],
                                              slow_replay: ReplayServer, tmp_path: Path) -> None:  # fmt: skip
    ds, _ = overruling
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    n = 20
    submit(r, keys, ds, n)
    proc = worker("serve", redis_url, prefix, slow_replay.url, "--model-dir", str(tmp_path))
    wait_until(lambda: pending(r, keys) > 0, proc=proc)
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    answered = r.xlen(keys.responses)
    assert (
        answered >= 1 and pending(r, keys) == 0
    )  # the batch in flight was answered and acknowledged
    groups = {g["name"].decode(): g for g in r.xinfo_groups(keys.queries)}
    undelivered = (
        n - groups["routers"]["entries-read"]
        if groups["routers"].get("entries-read") is not None
        else None
    )
    if undelivered is not None:
        assert answered + undelivered == n  # nothing read was dropped; the rest waits in the stream
    assert (
        tmp_path / "policy.bin"
    ).stat().st_mtime >= signalled  # the model was saved on the way out


def test_a_second_sigterm_exits_at_once(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = overruling
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    very_slow = ReplayServer(ReplayBook(ds, cfg), Faults(latency_ms=20_000)).start()
    try:
        submit(r, keys, ds, 8)
        proc = worker("serve", redis_url, prefix, very_slow.url)
        wait_until(lambda: pending(r, keys) > 0, proc=proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # the first one waits for the LLM calls in flight
        t0 = time.monotonic()
        embedder_children = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 1 and time.monotonic() - t0 < 5
        wait_until(lambda: not any(alive(pid) for pid in embedder_children), timeout_s=10)
        assert (
            r.xlen(keys.responses) == 0 and pending(r, keys) > 0
        )  # left for another router to claim
    finally:
        very_slow.stop()
