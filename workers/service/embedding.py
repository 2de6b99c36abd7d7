"""Where the router's embedder runs: in a process of its own (the default) or in a thread.

Inside the router's process the model's threads and the event loop (HTTP clients,
Redis, the policy) take turns on the GIL: a batch embeds 1.5× slower there than alone
(scripts/bench_service.py, stage ``embed``). ``EmbedderProcess`` runs the model in a spawned
child process, so the event loop keeps its interpreter to itself; texts go in and vectors
come back through a pipe (about 200 KB for 128 queries). ``EmbedderThread`` is the same
interface in-process (``embedder_process = false``), for small machines and tests.

The child hands its freed heap back to the OS every few seconds (see ``workers.service.memory``),
as the router does for its own process; both load the model in ``start`` so that a router is not ready
before it can embed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

import numpy as np

from bandit.embedder import Embedder, EmbedderConfig
from bandit.errors import EmbedderError
from workers.service.memory import HeapTrimmer

log = logging.getLogger(__name__)
PARENT_CHECK_S = 1.0  # how often the child checks that the router is still alive


class RouterEmbedder(Protocol):
    async def start(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def close(self) -> None: ...


class EmbedderThread:
    """The embedder in the router's process, called from a worker thread of its own (batches
    handed over together are embedded one after the other, in order)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    async def start(self) -> None:
        await self.embed(["warm up the model"])

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.embedder.embed, list(texts))

    async def close(self) -> None:
        await asyncio.to_thread(self._thread.shutdown, True)


class EmbedderProcess:
    """The embedder in a spawned child process (one batch at a time; batches handed over
    together wait their turn in order).

    The child exits when the router dies, even by SIGKILL (it watches its parent), and
    ignores SIGINT, so that a Ctrl-C reaches only the router, which finishes its batch.
    A child that dies (killed, out of memory) is replaced once; each batch it held is
    embedded again by the new child."""

    def __init__(self, config: EmbedderConfig, threads: int = 0) -> None:
        self.config, self.threads = config, threads
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The child's process id (None before ``start``)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return next(iter(procs), None)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(self.config, self.threads, os.getpid()),
        )

    async def start(self) -> None:
        if self._pool is None:
            self._pool = self._new_pool()
        await self._call(["warm up the model"])
        log.info(
            "embedder process %s ready, %d threads per batch", self.pid, await self.threads_in_use()
        )

    async def threads_in_use(self) -> int:
        """Threads the child's model runs a batch on."""
        assert self._pool is not None, "EmbedderProcess.start() was not awaited"
        return await asyncio.get_running_loop().run_in_executor(self._pool, _child_threads)

    async def _call(self, texts: list[str]) -> np.ndarray:
        assert self._pool is not None, "EmbedderProcess.start() was not awaited"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _child_embed, texts)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._pool is None:
            await self.start()
        batch = list(texts)
        pool = self._pool
        try:
            return await self._call(batch)
        except BrokenProcessPool:
            # Every batch handed to the dead child fails; the first to see it starts a new one.
            if self._pool is pool:
                log.error("the embedder process died; starting a new one and embedding again")
                self.restarts += 1
                self._pool = self._new_pool()
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
            try:
                return await self._call(batch)
            except BrokenProcessPool as exc:
                raise EmbedderError(
                    "the embedder process died twice in a row (out of memory? see its log)"
                ) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True)


def router_embedder(config: EmbedderConfig, in_process: bool, threads: int = 0) -> RouterEmbedder:
    """The router's embedder: a child process when ``in_process`` is false; ``threads``
    threads per batch (0: the backend's default, one per core)."""
    if in_process:
        return EmbedderThread(Embedder(config, threads))
    return EmbedderProcess(config, threads)


# -- the child process -----------------------------------------------------------------
_child: tuple[Embedder, HeapTrimmer] | None = None


def _child_init(config: EmbedderConfig, threads: int, parent_pid: int) -> None:
    global _child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _child = (Embedder(config, threads), HeapTrimmer())


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _child_threads() -> int:
    assert _child is not None, "the embedder process was not initialised"
    return _child[0].threads_in_use()


def _child_embed(texts: list[str]) -> np.ndarray:
    assert _child is not None, "the embedder process was not initialised"
    embedder, trimmer = _child
    vectors = embedder.embed(texts)
    if trimmer.due():
        trimmer.trim()
    return vectors
