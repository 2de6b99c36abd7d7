"""The replay server's admin routes, used by scripts/chaos.py: faults changed while it
serves, and successful answers counted per recorded query text."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from workers.harness.replay_server import ReplayBook, ReplayServer
from workers.service.providers.base import ProviderError
from workers.service.providers.openai import OpenAIProvider


@pytest.fixture
def server(arc: tuple[Dataset, RoutingConfig]) -> Iterator[ReplayServer]:
    srv = ReplayServer(ReplayBook(*arc)).start()
    yield srv
    srv.stop()


def call(url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ask(url: str, model: str, prompt: str) -> str:
    async def go() -> str:
        p = OpenAIProvider(model, api_key="sk-local", base_url=f"{url}/v1", timeout_s=5)
        try:
            return (await p.complete(prompt)).text
        finally:
            await p.close()

    return asyncio.run(go())


def test_stats_count_successful_answers_per_recorded_text(
    server: ReplayServer, arc: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = arc
    arm = cfg.arms.arms[0]
    text = str(ds.texts[3])
    prompt = arm.prompt_template.replace("{text}", text)
    ask(server.url, arm.model_id, prompt)
    ask(server.url, cfg.arms.arms[1].model_id, text)  # no template: still the same text
    status, stats = call(f"{server.url}/admin/stats")
    assert status == 200
    assert stats["answers"] == {text: 2}
    assert stats["requests"] == 2 and stats["errors"] == 0 and stats["unknown"] == 0


def test_faults_change_at_run_time_and_failures_are_not_counted_as_answers(
    server: ReplayServer, arc: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = arc
    arm = cfg.arms.arms[0]
    status, faults = call(f"{server.url}/admin/faults", {"error_rate": 1.0})
    assert status == 200 and faults["error_rate"] == 1.0 and faults["latency_ms"] == 0.0
    with pytest.raises(ProviderError):
        ask(server.url, arm.model_id, str(ds.texts[5]))
    call(f"{server.url}/admin/faults", {"error_rate": 0.0, "latency_ms": 10})
    ask(server.url, arm.model_id, str(ds.texts[5]))
    _, stats = call(f"{server.url}/admin/stats")
    assert stats["answers"] == {str(ds.texts[5]): 1}
    assert stats["faults"]["latency_ms"] == 10.0 and stats["errors"] >= 1


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"error_rate": 2}, "error rate"),
        ({"latency_ms": -1}, "latency"),
        ({"jitter": 1}, "unknown fault"),
        ({"latency_ms": "slow"}, "numbers"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_faults_are_rejected_and_leave_the_faults_as_they_were(
    server: ReplayServer, body: Any, match: str
) -> None:
    status, reply = call(f"{server.url}/admin/faults", body)
    assert status == 400
    assert match in reply["error"]["message"]
    assert server.faults.error_rate == 0.0 and server.faults.latency_ms == 0.0
