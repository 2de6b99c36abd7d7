"""The router's embedder in a child process of its own (the real model, a real process)."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from bandit.embedder import Embedder, EmbedderConfig
from bandit.errors import EmbedderError
from workers.service.embedding import EmbedderProcess, EmbedderThread, router_embedder

TEXTS = ["the court overruled the precedent", "a wonderful film", "a wonderful film"]


def test_the_child_process_gives_the_vectors_of_the_model_in_process() -> None:
    config = EmbedderConfig(max_seq_length=128)

    async def run() -> tuple[np.ndarray, int | None, int | None]:
        child = EmbedderProcess(config)
        await child.start()
        try:
            return await child.embed(TEXTS), child.pid, os.getpid()
        finally:
            await child.close()

    vectors, pid, me = asyncio.run(run())
    assert pid is not None and pid != me
    expected = Embedder(config).embed(TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def _os_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_the_child_runs_the_model_on_the_threads_of_the_setting(backend: str) -> None:
    async def run(threads: int) -> tuple[int, int]:
        child = EmbedderProcess(EmbedderConfig(max_seq_length=128, backend=backend), threads)
        await child.start()
        try:
            assert child.pid is not None
            return await child.threads_in_use(), _os_threads(child.pid)
        finally:
            await child.close()

    (one, os_one), (four, os_four) = asyncio.run(run(1)), asyncio.run(run(4))
    assert (one, four) == (1, 4)
    assert os_four - os_one >= 3  # the model's thread pool really grew by three


def test_errors_of_the_model_reach_the_router_and_a_dead_child_is_replaced() -> None:
    async def run() -> None:
        child = EmbedderProcess(EmbedderConfig(max_seq_length=128))
        await child.start()
        try:
            with pytest.raises(EmbedderError, match="empty"):
                await child.embed(["fine", "   "])
            first = child.pid
            assert first is not None
            # Two batches handed over, the child killed under them (out of memory, say):
            # both are embedded again by one new child.
            long = [f"{t} " * 40 + str(i) for i, t in enumerate(TEXTS * 100)]
            both = asyncio.gather(child.embed(long), child.embed(TEXTS))
            await asyncio.sleep(0.05)
            os.kill(first, signal.SIGKILL)
            vectors_long, vectors = await both
            assert vectors_long.shape == (len(long), 384) and vectors.shape == (3, 384)
            assert child.restarts == 1
            assert child.pid not in (None, first)
        finally:
            await child.close()
        assert child.pid is None

    asyncio.run(run())


def test_the_setting_chooses_process_or_thread() -> None:
    config = EmbedderConfig()
    assert isinstance(router_embedder(config, in_process=False), EmbedderProcess)
    assert isinstance(router_embedder(config, in_process=True), EmbedderThread)
