"""The router worker: queries stream → embed → decide → dispatch → responses stream.

Per batch: read (claimed stale entries first, then new ones), embed the batch at once,
decide every query, store the decision records, call the chosen arms concurrently, write
the responses and acknowledge — a query is acknowledged only after its response is
written. Batches overlap: the next one embeds while this one is decided and its calls are
out. A query id is sent to an LLM once (workers/service/ownership.py); the router renews
its claim on the entries it works on, so that others claim only a stopped router's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bandit.config import RoutingConfig
from bandit.policy import Decision, Policy
from workers.service import messages
from workers.service.dispatch import Redraw, build_dispatcher
from workers.service.embedding import RouterEmbedder
from workers.service.floors import FloorReader
from workers.service.memory import HeapTrimmer
from workers.service.messages import BadQuery, usable_id
from workers.service.metrics import Metrics
from workers.service.migration import conform
from workers.service.ownership import Ownership
from workers.service.pacing import PaceReader
from workers.service.providers import Provider
from workers.service.reconnect import REDIS_OUTAGE, RedisLink
from workers.service.records import Records, dead_response
from workers.service.settings import ROUTERS_GROUP, Keys, ServiceSettings
from workers.service.streams import (
    Entry,
    claim_stale,
    dead_letter,
    ensure_group,
    group_backlog,
    read_new,
)
from workers.service.upkeep import keep

log = logging.getLogger(__name__)
REPEAT_CHECK_S = 0.2  # how often repeated ids waiting for their first answer look again
T = TypeVar("T")


@dataclass(frozen=True)
class Query(messages.Query):
    """A query and the stream entry it came in."""

    entry: Entry


@dataclass(frozen=True)
class Embedding:
    """A batch whose embedding has started."""

    queries: list[Query]
    vectors: asyncio.Future[np.ndarray]
    started: float  # perf_counter when it was read


@dataclass(frozen=True)
class Batch:
    queries: list[Query]
    decisions: list[Decision]
    shared: list[str]  # each query's context as the policy saw it, for redraws
    started: float  # perf_counter when it was read
    p: float  # the price weight the batch was decided with


def parse_query(entry: Entry, settings: ServiceSettings, config: RoutingConfig) -> Query:
    """The query an entry holds, or BadQuery (workers/service/messages.py has the rules)."""
    q = messages.parse_query(entry.fields, settings, config.task)
    return Query(q.id, q.text, q.labels, q.meta, entry)


class Router:
    def __init__(
        self,
        settings: ServiceSettings,
        config: RoutingConfig,
        policy: Policy,
        embedder: RouterEmbedder,
        providers: dict[str, Provider],
        redis: aioredis.Redis,
        metrics: Metrics,
        link: RedisLink | None = None,
        pace: PaceReader | None = None,
    ) -> None:
        self.settings, self.config, self.policy = settings, config, policy
        self.link = link  # None: a failed write fails the batch (no reconnecting)
        self.embedder, self.r, self.m = embedder, redis, metrics
        self.keys = Keys(settings.prefix)
        self.pace = pace or PaceReader(redis, self.keys, config.policy.p, None, metrics)
        self.consumer = settings.consumer or f"router-{random.getrandbits(32):08x}"
        self.dispatcher = build_dispatcher(settings, config.arms, providers, metrics)
        self.floors, self.busy = FloorReader(redis, self.keys), asyncio.Lock()  # busy: see reload
        self._last_reload_check = 0.0
        self._last_claim = 0.0
        self.answered = 0
        # Entry ids this router is working on: XAUTOCLAIM also returns a consumer's own
        # entries once idle, and those must not be answered twice.
        self._working: set[str] = set()
        self._unanswered = 0  # queries decided whose responses are not written yet (finish)
        self._answered = asyncio.Event()  # set each time responses are written
        self._finishing: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None  # a finish task's, re-raised by run
        self._embedder_free_at = 0.0  # perf_counter when the embedder last finished a batch
        self._trimmer = HeapTrimmer()  # this process's heap; the embedder child trims its own
        self.ownership = Ownership(redis, self.keys, self.consumer, settings.claim_idle_ms)
        self.records = Records(redis, self.keys, settings, config.arms, metrics, self.ownership,
                               paced=self.pace.paced)  # fmt: skip
        self._last_repeat_check = 0.0
        self._abandoned: list[str] = []  # query ids whose calls the shutdown deadline cut
        self.adopt(policy)

    # -- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Keep one batch embedding ahead: while the embedder works on batch k+1, batch k is
        decided and recorded, and earlier batches' LLM calls are out. Read on while fewer
        than ``max_in_flight`` queries are decided and unanswered, however small the batches.
        On stop, finish the batches read (embedding or in flight) within
        ``shutdown_deadline_s``; what is left then stays pending for another router."""
        await ensure_group(self.r, self.keys.queries, ROUTERS_GROUP)
        log.info("router %s reading %s", self.consumer, self.keys.queries)
        embedding: deque[Embedding] = deque()
        kept = asyncio.Event()  # set when the entries need keeping no longer
        keeper = asyncio.create_task(
            keep(self.ownership, self._kept_ids, self.settings.feedback_maxlen, kept)
        )
        try:
            while not stop.is_set():
                async with self.busy:  # a config reload (reload.py) waits for an iteration
                    self._raise_failure()
                    await self.maybe_reload()
                    await self._settle_repeats()
                    # While a batch embeds, only take what is there already, so that a quiet
                    # stream does not hold it back.
                    entries = await self.read_batch(block=not embedding)
                    started = await self.start(entries) if entries else None
                    if started is not None:
                        embedding.append(started)
                    if len(embedding) > (1 if entries else 0):
                        self._finish_soon(await self.decide(embedding.popleft()))
                    await self._room()
        except REDIS_OUTAGE as exc:
            if self.link:
                self.link.lost(exc)  # now: the batches below wait for Redis to finish
            raise
        finally:
            try:
                await self._drain(embedding, time.monotonic() + self.settings.shutdown_deadline_s)
            finally:
                kept.set()
                await keeper
                with contextlib.suppress(RedisError, OSError):  # its key expires anyway
                    await self.ownership.release()

    def _kept_ids(self) -> set[str]:
        """The entries this router holds: in progress, or repeats waiting for an answer."""
        return self._working | self.ownership.waiting.keys()

    async def _drain(self, embedding: deque[Embedding], deadline: float) -> None:
        """Finish what was read until ``deadline`` (monotonic seconds), then cancel the calls
        still out and mark their decisions abandoned: their entries stay pending, and the
        router that claims them calls again, as these calls never returned."""
        while embedding and time.monotonic() < deadline:
            started = embedding.popleft()
            try:
                await asyncio.wait_for(asyncio.shield(started.vectors), deadline - time.monotonic())
                self._finish_soon(await self.decide(started))
            except TimeoutError:
                break
            except Exception as exc:  # left pending: another router claims it
                log.error("batch failed during shutdown: %s", exc)
        for started in embedding:  # never decided: no record, claimed like any entry
            started.vectors.cancel()
            self._working.difference_update(q.entry.id for q in started.queries)
        late: set[asyncio.Task[None]] = set()
        if self._finishing:
            _, late = await asyncio.wait(
                set(self._finishing), timeout=max(0.0, deadline - time.monotonic())
            )
        for task in late:
            task.cancel()
        results = await asyncio.gather(*self._finishing, *late, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("batch failed during shutdown: %s", result)
        if self._abandoned:
            log.warning("router %s: shutdown deadline (%g s) cut %d LLM calls short; their "
                        "queries are left pending for another router", self.consumer,
                        self.settings.shutdown_deadline_s, len(self._abandoned))  # fmt: skip
            await self.ownership.mark_abandoned(self._abandoned)

    async def _settle_repeats(self) -> None:
        if time.monotonic() - self._last_repeat_check >= REPEAT_CHECK_S:
            self._last_repeat_check = time.monotonic()
            await self.ownership.settle_waiting(
                self.settings.repeat_wait_s, self.settings.responses_maxlen
            )

    async def calls_back(self) -> None:
        """Wait until the calls of every batch decided so far are back (a config reload)."""
        while self._finishing:
            await asyncio.wait(set(self._finishing))

    def _finish_soon(self, batch: Batch) -> None:
        task = asyncio.create_task(self.finish(batch))
        self._finishing.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._finishing.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            self._answered.set()  # wake the loop so that it raises

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _room(self) -> None:
        """Wait until fewer than ``max_in_flight`` queries are decided and unanswered."""
        while self._unanswered >= self.settings.max_in_flight and self._failure is None:
            self._answered.clear()
            await self._answered.wait()

    async def read_batch(self, block: bool = True) -> list[Entry]:
        """Stale entries claimed first, then new ones; ``block=False`` does not wait for new
        entries."""
        s = self.settings
        entries: list[Entry] = []
        now = time.monotonic()
        if now - self._last_claim >= s.claim_idle_ms / 2000:
            self._last_claim = now
            entries = await claim_stale(self.r, self.keys.queries, ROUTERS_GROUP, self.consumer,
                                        s.claim_idle_ms, s.batch_size, self._kept_ids(),
                                        self.ownership.running)  # fmt: skip
        if len(entries) < s.batch_size:
            entries += await read_new(self.r, self.keys.queries, ROUTERS_GROUP, self.consumer,
                                      s.batch_size - len(entries), s.block_ms if block else None)  # fmt: skip
        return entries

    async def start(self, entries: list[Entry]) -> Embedding | None:
        """Dead-letter what cannot be answered and start embedding the rest."""
        t0 = time.perf_counter()
        self.m.batch_size.observe(len(entries))
        queries: list[Query] = []
        for e in entries:
            if e.deliveries > self.settings.max_deliveries:
                await self._dead(
                    e,
                    "deliveries",
                    f"delivered {e.deliveries} times (max {self.settings.max_deliveries})",
                )
                continue
            if e.decode_error:
                await self._dead(e, "decode", e.decode_error)
                continue
            try:
                queries.append(parse_query(e, self.settings, self.config))
            except BadQuery as exc:
                await self._dead(e, "parse", str(exc))
        if not queries:
            return None
        self._working.update(q.entry.id for q in queries)
        vectors = asyncio.ensure_future(self._embed([q.text for q in queries]))
        await asyncio.sleep(0)  # hand the batch to the embedder now
        return Embedding(queries, vectors, t0)

    async def _embed(self, texts: list[str]) -> np.ndarray:
        submitted = time.perf_counter()
        vectors = await self.embedder.embed(texts)
        # Stage "embed" is the embedder's time on this batch: from when it was handed over,
        # or from when the batch before it was done, as the embedder takes them in order.
        done = time.perf_counter()
        self.m.stage.labels("embed").observe(done - max(submitted, self._embedder_free_at))
        self._embedder_free_at = done
        return vectors

    async def decide(self, started: Embedding) -> Batch:
        """Decide every query of an embedded batch and store the decision records."""
        vectors = await started.vectors
        if self._trimmer.due():
            await asyncio.to_thread(self._trimmer.trim)
        queries = started.queries
        p, floor = await self.pace.current(), await self.floors.current(self.policy.arm_names)
        with self.m.stage.labels("decide").time():
            shared = self.policy.features.shared_batch(vectors, [q.text for q in queries])
            healthy = self.dispatcher.breakers.available()
            # With no arm healthy, decide over all: the dispatcher waits for one to be back.
            decisions = self.policy.decide_lines(
                shared, p=p, available=healthy if healthy.any() else None, floor=floor
            )
        held = await self._persist(lambda _: self.records.store(self.policy, queries, decisions, shared, p),
                                   "storing decisions")  # fmt: skip
        mine = [i for i, h in enumerate(held) if h is None]
        for q, h in zip(queries, held, strict=True):
            if h is not None:
                self._working.discard(q.entry.id)
                await self.ownership.settle(
                    q.entry.id, q.id, q.meta, h, self.settings.responses_maxlen
                )
        self._unanswered += len(mine)
        return Batch([queries[i] for i in mine], [decisions[i] for i in mine],
                     [shared[i] for i in mine], started.started, p)  # fmt: skip

    def _redraw(self, shared: str, p: float) -> Redraw:
        """A new decision for one query over the arms of a mask, after its arm failed."""
        return lambda available: self.policy.decide_lines([shared], p=p, available=available)[0]

    async def finish(self, batch: Batch) -> None:
        """Call the arms; write each response and acknowledge its query as soon as its
        answer is in, in one transaction with the others of the batch answered by then, so
        that a slow call does not hold back the rest of its batch."""
        t0 = time.perf_counter()
        redraw = partial(self._redraw, p=batch.p)
        calls = {
            asyncio.create_task(self.dispatcher.answer(q.text, d, redraw(line))): (q, d)
            for q, d, line in zip(batch.queries, batch.decisions, batch.shared, strict=True)
        }
        pending = set(calls)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if not pending:
                    self.m.stage.labels("dispatch").observe(time.perf_counter() - t0)
                ready = [(*calls[t], t.result()) for t in done]
                # Through a Redis outage: these answers are paid for, and another router
                # claiming them would pay again.
                await self._persist(
                    partial(self.records.respond, self.policy, ready, batch.p), "writing responses"
                )
                self._unanswered -= len(ready)
                self._answered.set()
                elapsed = time.perf_counter() - batch.started
                for q, _, _ in ready:
                    self._working.discard(q.entry.id)
                    self.m.latency.observe(elapsed)
                self.answered += len(ready)
        except asyncio.CancelledError:  # the shutdown deadline: these calls never returned
            self._abandoned += [calls[t][0].id for t in pending if not t.done()]
            raise
        finally:
            for t in pending:  # only when writing failed: these stay pending for a claim
                t.cancel()
            unwritten = [q for q, _ in calls.values() if q.entry.id in self._working]
            self._unanswered -= len(unwritten)
            self._answered.set()
            self._working.difference_update(q.entry.id for q in unwritten)

    # -- steps ---------------------------------------------------------------------------
    async def _persist(self, write: Callable[[bool], Awaitable[T]], what: str) -> T:
        """``write`` once, or through Redis outages until it succeeds (see RedisLink)."""
        if self.link is None:
            return await write(False)
        return await self.link.persist(write, what)

    async def _dead(self, entry: Entry, stage: str, error: str) -> None:
        """Dead-letter an entry and, when it has an id a client can wait for, answer it with
        the reason, in one transaction."""
        qid = usable_id(entry.fields)
        s = self.settings
        response = (
            (self.keys.responses, dead_response(qid, error), s.responses_maxlen) if qid else None
        )
        await dead_letter(self.r, self.keys.dead, self.keys.queries, ROUTERS_GROUP, entry, stage,
                          error, maxlen=s.dead_maxlen, response=response)  # fmt: skip
        self.m.dead_letters.labels(stage).inc()

    # -- model snapshots -----------------------------------------------------------------
    async def note_published(self) -> None:
        """Export when the learner published the model this router holds (the time it was
        taken, for a snapshot that predates the published_at key)."""
        raw: Any = await self.r.get(self.keys.model_published)
        try:
            self.m.model_published.set(float(raw) if raw is not None else time.time())
        except ValueError:
            self.m.model_published.set(time.time())

    async def maybe_reload(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_reload_check < self.settings.reload_check_s:
            return False
        self._last_reload_check = now
        lag, pending = await group_backlog(self.r, self.keys.queries, ROUTERS_GROUP)
        if lag is not None:
            self.m.stream_lag.labels("queries").set(lag)
        self.m.pending.labels("queries").set(pending)
        raw = await self.r.get(self.keys.model_version)
        if raw is None or int(raw) <= self.policy.version:
            return False
        data = await self.r.get(self.keys.model_bytes)
        if not data:
            return False
        blob: Any = data
        policy = await asyncio.to_thread(Policy.from_bytes, bytes(blob))
        if policy.version <= self.policy.version:
            return False
        policy = await asyncio.to_thread(conform, policy, self.config.arms,
                                         f"router {self.consumer}: the published model")  # fmt: skip
        self.adopt(policy)
        await self.note_published()
        return True

    def adopt(self, policy: Policy) -> None:
        """Route with ``policy`` from now on, drawing arms from a random stream of its own:
        replicas and successive snapshots would otherwise explore in lockstep. The seed is
        logged so that a run can be replayed."""
        policy.reseed(random.SystemRandom().getrandbits(63))
        self.policy = policy
        self.m.model_version.set(policy.version)
        log.info("router %s routes with model version %d, sampling seed %d",
                 self.consumer, policy.version, policy.sampling_seed)  # fmt: skip
