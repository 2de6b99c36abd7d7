"""A producer for demos and load: stream a recorded data set's queries into the queries
stream at a given rate and, a delay after each answer, its true label into the feedback
stream, as an application would. Used by ``metallm demo`` and ``metallm produce``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bandit.datasets import Dataset
from bandit.errors import ConfigError
from workers.service.settings import Keys

log = logging.getLogger(__name__)
FOLLOW_BLOCK_MS = 100
BAD_QUERY_TEXT = ""  # a query without text: the router dead-letters it (stage "parse")


@dataclass(frozen=True)
class ProducerOptions:
    """``rate_qps``: queries per second (None: all at once); ``rounds``: passes over the rows
    (0: forever; ids of later rounds get a ``#round`` suffix); ``bad_queries``: queries
    without text spread over the first round (each also gets a label, which the learner
    counts as unknown), to show the dead-letter and feedback paths working."""

    rate_qps: float | None = None
    label_delay_s: float = 1.0
    rounds: int = 1
    bad_queries: int = 0

    def __post_init__(self) -> None:
        if self.rate_qps is not None and not self.rate_qps > 0:
            raise ConfigError(f"rate = {self.rate_qps} must be > 0 queries per second")
        if self.label_delay_s < 0:
            raise ConfigError(f"label delay = {self.label_delay_s} must be ≥ 0 seconds")
        if self.rounds < 0:
            raise ConfigError(f"rounds = {self.rounds} must be ≥ 0 (0 = forever)")
        if self.rounds == 0 and self.rate_qps is None:
            raise ConfigError("rounds = 0 (forever) needs a rate in queries per second")
        if self.bad_queries < 0:
            raise ConfigError(f"bad queries = {self.bad_queries} must be ≥ 0")


@dataclass
class ProducerStats:
    sent: int = 0
    answered: int = 0
    labels_sent: int = 0
    done_sending: bool = False


async def produce(
    r: aioredis.Redis,
    keys: Keys,
    ds: Dataset,
    rows: np.ndarray,
    opts: ProducerOptions,
    stop: asyncio.Event,
    stats: ProducerStats | None = None,
) -> ProducerStats:
    """Send the queries of ``rows`` (indices into ``ds``) and their labels; return when every
    query sent has been answered and labelled, or when ``stop`` is set."""
    stats = stats or ProducerStats()
    labels: dict[str, str] = {}
    last: Any = await r.xrevrange(keys.responses, count=1)
    start_id = last[0][0].decode() if last else "0-0"
    # The sender is stopped by a flag, never cancelled inside a Redis call.
    halt = asyncio.Event()
    sender = asyncio.create_task(_send(r, keys, ds, rows, opts, halt, stats, labels))
    try:
        await _follow(r, keys, opts, stop, stats, labels, start_id)
    finally:
        halt.set()
        await asyncio.gather(sender, return_exceptions=True)
    return stats


async def _send(r: aioredis.Redis, keys: Keys, ds: Dataset, rows: np.ndarray, opts: ProducerOptions,
                stop: asyncio.Event, stats: ProducerStats, labels: dict[str, str]) -> None:  # fmt: skip
    # Bad queries are spread evenly over the first round, so they show over time.
    bad_after = {(k + 1) * len(rows) // (opts.bad_queries + 1): k for k in range(opts.bad_queries)}
    t0 = time.monotonic()
    rnd = sent = 0
    while not stop.is_set() and (opts.rounds == 0 or rnd < opts.rounds):
        suffix = f"#{rnd}" if rnd else ""
        async with r.pipeline(transaction=False) as pipe:
            for n, i in enumerate(rows):
                if opts.rate_qps is not None:
                    # Paced against the start, so that a slow XADD does not lower the rate.
                    wait = t0 + sent / opts.rate_qps - time.monotonic()
                    if wait > 0:
                        await pipe.execute()
                        await asyncio.sleep(wait)
                    if stop.is_set():
                        break
                if rnd == 0 and n in bad_after:
                    bad = f"bad-{bad_after[n]}"
                    pipe.xadd(keys.queries, {"id": bad, "text": BAD_QUERY_TEXT})
                    pipe.xadd(keys.feedback, {"id": bad, "label": "none"})
                qid = f"{ds.ids[i]}{suffix}"
                labels[qid] = str(ds.labels[i])
                pipe.xadd(keys.queries, {"id": qid, "text": str(ds.texts[i])})
                sent += 1
            await pipe.execute()
        stats.sent = sent
        rnd += 1
    stats.sent = sent
    stats.done_sending = True


async def _follow(r: aioredis.Redis, keys: Keys, opts: ProducerOptions, stop: asyncio.Event,
                  stats: ProducerStats, labels: dict[str, str], last_id: str) -> None:  # fmt: skip
    """Read the responses and send each answered query's label ``label_delay_s`` later."""
    due: list[tuple[float, str]] = []
    scheduled: set[str] = set()  # ids whose label is due; ids leave both maps once labelled
    while not stop.is_set():
        reply: Any = await r.xread({keys.responses: last_id}, count=500, block=FOLLOW_BLOCK_MS)
        for _, entries in reply or []:
            for eid, f in entries:
                last_id = eid.decode()
                qid = f[b"id"].decode()
                if qid in labels and qid not in scheduled:
                    scheduled.add(qid)
                    stats.answered += 1
                    due.append((time.monotonic() + opts.label_delay_s, qid))
        now = time.monotonic()
        ready = [qid for t, qid in due if t <= now]
        due = [(t, qid) for t, qid in due if t > now]
        if ready:
            async with r.pipeline(transaction=False) as pipe:
                for qid in ready:
                    pipe.xadd(keys.feedback, {"id": qid, "label": labels.pop(qid)})
                    scheduled.discard(qid)
                await pipe.execute()
            stats.labels_sent += len(ready)
        if stats.done_sending and not due and stats.labels_sent >= stats.sent:
            return
