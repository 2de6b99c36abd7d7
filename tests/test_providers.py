"""The openai and bedrock providers, with the real clients, against the replay LLM server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bandit.config import RoutingConfig, builtin_config
from bandit.datasets import Dataset, load_dataset
from workers.harness.demo import free_port
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.providers.base import ProviderError
from workers.service.providers.bedrock import BedrockProvider
from workers.service.providers.openai import OpenAIProvider

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
ROWS = (0, 7, 1400)


@pytest.fixture(scope="module")
def server(arc: tuple[Dataset, RoutingConfig]) -> Iterator[ReplayServer]:
    srv = ReplayServer(ReplayBook(*arc)).start()
    yield srv
    srv.stop()


def openai_provider(url: str, model: str) -> OpenAIProvider:
    return OpenAIProvider(model, api_key="sk-local-test", base_url=f"{url}/v1", timeout_s=5)


def bedrock_provider(url: str, model: str) -> BedrockProvider:
    return BedrockProvider(
        model, region="us-east-1", access_key_id="AKIDLOCALTEST", secret_access_key="local-secret",
        endpoint_url=url, timeout_s=5,
    )  # fmt: skip


def openai_on_httpx(url: str, model: str) -> OpenAIProvider:
    return OpenAIProvider(model, api_key="sk-local-test", base_url=f"{url}/v1", timeout_s=5,
                          transport="httpx")  # fmt: skip


# openai runs on the aiohttp transport by default; "openai-httpx" is the client's own.
PROVIDERS = {
    "openai": openai_provider,
    "openai-httpx": openai_on_httpx,
    "bedrock": bedrock_provider,
}


async def ask(provider, prompt: str):  # type: ignore[no-untyped-def]
    try:
        return await provider.complete(prompt)
    finally:
        await provider.close()


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
@pytest.mark.parametrize("arm_name", ["gpt-4-1106-preview", "meta/llama-2-70b-chat"])
def test_answers_usage_and_cost_match_the_recording(
    kind: str, arm_name: str, arc: tuple[Dataset, RoutingConfig], server: ReplayServer
) -> None:
    ds, cfg = arc
    arm = cfg.arms.arm(arm_name)
    j = ds.arms.index(arm_name)
    for i in ROWS:
        prompt = arm.render(ds.texts[i])
        c = asyncio.run(ask(PROVIDERS[kind](server.url, arm.model_id), prompt))
        assert c.text == ds.answers[i, j]
        assert c.tokens_in > 0 and c.tokens_out >= 1
        assert arm.cost_usd(c.tokens_in, c.tokens_out) == pytest.approx(ds.cost_usd[i, j], abs=1e-8)


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_unknown_model_and_unknown_query_are_client_errors(kind: str, server: ReplayServer) -> None:
    with pytest.raises(ProviderError, match="unknown model 'gpt-5'") as err:
        asyncio.run(ask(PROVIDERS[kind](server.url, "gpt-5"), "hello"))
    assert err.value.kind == "client" and not err.value.retryable
    with pytest.raises(ProviderError, match="no recorded answer") as err:
        asyncio.run(ask(PROVIDERS[kind](server.url, "claude-v1"), "a question nobody asked"))
    assert not err.value.retryable


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_injected_failures_are_retryable_server_errors(
    kind: str, arc: tuple[Dataset, RoutingConfig]
) -> None:
    ds, cfg = arc
    failing = ReplayServer(ReplayBook(ds, cfg), Faults(error_rate=1.0)).start()
    try:
        with pytest.raises(ProviderError) as err:
            asyncio.run(ask(PROVIDERS[kind](failing.url, "claude-v1"), ds.texts[0]))
        assert err.value.retryable and err.value.kind == "server" and err.value.status == 503
        assert failing.errors == failing.requests == 1
    finally:
        failing.stop()


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_nothing_listening_is_a_retryable_connection_error(kind: str) -> None:
    port = free_port()
    with pytest.raises(ProviderError) as err:
        asyncio.run(ask(PROVIDERS[kind](f"http://127.0.0.1:{port}", "m"), "hi"))
    assert err.value.kind == "connection" and err.value.retryable


def test_an_answer_slower_than_the_timeout_is_a_retryable_timeout(
    arc: tuple[Dataset, RoutingConfig],
) -> None:
    ds, cfg = arc
    slow = ReplayServer(ReplayBook(ds, cfg), Faults(latency_ms=3000)).start()
    try:
        provider = OpenAIProvider("claude-v1", api_key="sk-local-test", base_url=f"{slow.url}/v1",
                                  timeout_s=0.3)  # fmt: skip
        t0 = time.perf_counter()
        with pytest.raises(ProviderError) as err:
            asyncio.run(ask(provider, ds.texts[0]))
        assert err.value.kind == "timeout" and err.value.retryable
        assert time.perf_counter() - t0 < 2.5
    finally:
        slow.stop()


def test_a_client_that_hangs_up_is_no_traceback_and_the_server_goes_on(
    arc: tuple[Dataset, RoutingConfig], capfd: pytest.CaptureFixture[str]
) -> None:
    import socket
    import struct

    ds, cfg = arc
    srv = ReplayServer(ReplayBook(ds, cfg), Faults(latency_ms=300)).start()
    try:
        host, port = srv.url.removeprefix("http://").split(":")
        body = b'{"model": "claude-v1", "messages": [{"role": "user", "content": "hi"}]}'
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.8)  # the handler answers into a reset connection
        answer = asyncio.run(ask(openai_provider(srv.url, "claude-v1"), ds.texts[0]))
        assert answer.tokens_in > 0
    finally:
        srv.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err


def test_injected_latency_is_applied(arc: tuple[Dataset, RoutingConfig]) -> None:
    ds, cfg = arc
    slow = ReplayServer(ReplayBook(ds, cfg), Faults(latency_ms=200)).start()
    try:
        arm = cfg.arms.arm("claude-v1")
        t0 = time.perf_counter()
        asyncio.run(
            ask(
                openai_provider(slow.url, arm.model_id),
                arm.render(ds.texts[0]),
            )
        )
        assert time.perf_counter() - t0 >= 0.2
    finally:
        slow.stop()


def test_replay_llm_command_serves_until_stopped(data_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "replay-llm", "--dataset", "overruling",
         "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert b"gpt-4" in r.read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "replay-llm did not come up in 30 s"
                time.sleep(0.2)
        ds = load_dataset("overruling", data_dir)
        arm = builtin_config("overruling").arms.arm("gpt-3.5-turbo")
        c = asyncio.run(ask(openai_provider(f"http://127.0.0.1:{port}", arm.model_id),
                            arm.render(ds.texts[3])))  # fmt: skip
        assert c.text == ds.answers[3, ds.arms.index("gpt-3.5-turbo")]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_the_openai_transport_is_chosen_by_the_environment(
    arc: tuple[Dataset, RoutingConfig], server: ReplayServer
) -> None:
    from bandit.errors import ConfigError
    from workers.service.providers import build_providers

    _, cfg = arc
    env = {"METALLM_REPLAY_URL": server.url}
    for transport in ("", "httpx", "aiohttp"):
        providers = build_providers(cfg.arms, {**env, "METALLM_OPENAI_TRANSPORT": transport})
        http = next(iter(providers.values()))._client._client  # type: ignore[attr-defined]
        on_aiohttp = "Aiohttp" in type(http._transport).__name__
        assert on_aiohttp == (transport != "httpx")
    with pytest.raises(
        ConfigError, match="METALLM_OPENAI_TRANSPORT=curl must be one of aiohttp, httpx"
    ):
        build_providers(cfg.arms, {**env, "METALLM_OPENAI_TRANSPORT": "curl"})
