"""The learner: feedback stream → join the decision record → reward → VW update → snapshots.

Feedback is idempotent: ``learned:{id}`` is set once (SET NX) before a label trains the
policy, so a second label for the same id never trains twice. Decisions whose label does
not come within the reward wait are learned with ``default_reward`` when one is set
(as Azure Personalizer does), or dropped and counted as expired.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bandit.policy import Policy
from bandit.reward import is_correct
from workers.service.messages import BadFeedback, Feedback, check_feedback_label, parse_feedback
from workers.service.metrics import Metrics
from workers.service.settings import LEARNERS_GROUP, Keys, ServiceSettings
from workers.service.streams import (
    Entry,
    claim_stale,
    clip,
    dead_fields,
    ensure_group,
    group_backlog,
    read_new,
)

log = logging.getLogger(__name__)
EXPIRY_BATCH = 500
# Feedback entries read per step: one Lua join and one XACK per batch, so bigger batches
# cost less per update (128 → 512 took the learner from 7.5k to 10k updates/s).
FEEDBACK_BATCH = 512
# What learning needs of a decision record (the router writes more, for replay and audit).
RECORD_FIELDS = ("shared", "arm", "arm_name", "prob", "cost", "label", "fallback", "failed")
# KEYS: the awaiting set, then per id its decision record and its learned marker;
# ARGV: the marker's TTL, then the ids. Per id: {1 if this label is the first, record fields}.
JOIN_SCRIPT = """
local fields = {@FIELDS@}
local out = {}
for i = 2, #ARGV do
  local rec = redis.call('HMGET', KEYS[2 * i - 2], unpack(fields))
  local first = 0
  if rec[@LABEL@] then
    if redis.call('SET', KEYS[2 * i - 1], '1', 'NX', 'EX', ARGV[1]) then first = 1 end
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
  out[i - 1] = {first, rec}
end
return out
""".replace("@FIELDS@", ", ".join(f"'{f}'" for f in RECORD_FIELDS)).replace(
    "@LABEL@", str(RECORD_FIELDS.index("label") + 1)
)
# Updates learned between yields to the event loop, so the read-ahead (and, in serve, the
# router) run while a batch learns.
LEARN_CHUNK = 64


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class _Joined:
    """Feedback entries joined with their decision records, not yet learned: each entry's
    outcome so far (None: to learn), (entry index, record, correctness) to learn, and by
    entry index the (stage, reason) of the invalid ones, to dead-letter."""

    entries: list[Entry]
    outcomes: list[str | None]
    learn: list[tuple[int, dict[str, str], float]]
    invalid: dict[int, tuple[str, str]] = field(default_factory=dict)


class Learner:
    def __init__(
        self, settings: ServiceSettings, policy: Policy, redis: aioredis.Redis, metrics: Metrics
    ) -> None:
        self.settings, self.policy, self.r, self.m = settings, policy, redis, metrics
        self.keys = Keys(settings.prefix)
        self.consumer = settings.consumer or f"learner-{random.getrandbits(32):08x}"
        self._since_publish = 0
        self._last_publish = time.monotonic()
        self._last_claim = 0.0
        self.published_version = -1
        self.outcomes: Counter[str] = Counter()  # feedback outcomes, as in metallm_feedback_total
        self.updates = 0
        self._join = redis.register_script(JOIN_SCRIPT)
        self._per_arm: dict[str, tuple[Any, Any, Any]] = {}
        self._next: _Joined | None = None  # the batch read and joined ahead
        metrics.model_version.set(policy.version)

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_group(self.r, self.keys.feedback, LEARNERS_GROUP)
        if await self.r.get(self.keys.model_version) is None:
            await self.publish()  # routers start from the same model the learner has
        while not stop.is_set():
            await self.step()
        if self._next is not None:  # read and joined ahead: learn and acknowledge it too
            await self._apply(self._next)
            self._next = None
        await self.publish()

    async def step(self) -> int:
        """Learn one batch of feedback; returns how many entries it held."""
        batch = self._next if self._next is not None else await self._fetch(block=True)
        self._next = None
        if batch.entries:
            # The next batch is read and joined while this one learns: the join runs in
            # Redis (a third of a step when it waited) while VW learns here.
            ahead = asyncio.create_task(self._fetch(block=False))
            try:
                await self._apply(batch)
            finally:
                joined = await ahead
                self._next = joined if joined.entries else None
        await self.expire_due()
        await self.maybe_publish()
        lag, pending = await group_backlog(self.r, self.keys.feedback, LEARNERS_GROUP)
        if lag is not None:
            self.m.stream_lag.labels("feedback").set(lag)
        self.m.pending.labels("feedback").set(pending)
        return len(batch.entries)

    async def _fetch(self, block: bool) -> _Joined:
        """The next feedback entries (stale ones claimed first), joined with their decision
        records. ``block=False`` does not wait for new entries."""
        s = self.settings
        entries: list[Entry] = []
        if time.monotonic() - self._last_claim >= s.claim_idle_ms / 2000:
            self._last_claim = time.monotonic()
            entries = await claim_stale(self.r, self.keys.feedback, LEARNERS_GROUP, self.consumer,
                                        s.claim_idle_ms, FEEDBACK_BATCH)  # fmt: skip
        entries += await read_new(self.r, self.keys.feedback, LEARNERS_GROUP, self.consumer,
                                  FEEDBACK_BATCH, s.block_ms if block else None)  # fmt: skip
        return await self._join_records(entries)

    async def _join_records(self, entries: list[Entry]) -> _Joined:
        """Each entry's outcome, or what it teaches, with two Redis round trips per batch
        (one when it holds no labels): the label sets, then the join."""
        batch = _Joined(entries, [None] * len(entries), [])
        feedback: dict[int, Feedback] = {}
        for k, e in enumerate(entries):
            if e.decode_error:
                batch.invalid[k] = ("decode", e.decode_error)
                continue
            try:
                feedback[k] = parse_feedback(e.fields, self.settings)
            except BadFeedback as exc:
                batch.invalid[k] = ("feedback", str(exc))
        await self._check_labels(feedback, batch)
        for k in batch.invalid:
            batch.outcomes[k] = "invalid"
        parsed = [(k, fb.id, fb.reward) for k, fb in feedback.items() if k not in batch.invalid]
        if not parsed:
            return batch
        # Each id's decision record and, for the answered ones, the learned:{id} marker
        # (SET NX) and its removal from the awaiting set.
        ttl = int(self.settings.reward_wait_s * 2) + 60
        keys = [self.keys.awaiting]
        for _, qid, _ in parsed:
            keys += [self.keys.decision(qid), self.keys.learned(qid)]
        reply = await self._join(keys=keys, args=[ttl, *(q for _, q, _ in parsed)])
        for (k, _, reward), (first, raw) in zip(parsed, reply, strict=True):
            record = {f: _s(v) for f, v in zip(RECORD_FIELDS, raw, strict=True) if v is not None}
            if not record or "label" not in record:
                batch.outcomes[k] = "unknown"  # never decided, expired, or not answered yet
            elif not first:
                batch.outcomes[k] = "duplicate"
            elif record.get("failed") == "1" or record.get("fallback") == "1":
                # The answering arm was not drawn from the logged pmf: no unbiased update.
                batch.outcomes[k] = "not_learnable"
            else:
                label = feedback[k].label or ""
                correct = reward if reward is not None else is_correct(record["label"], label)
                batch.learn.append((k, record, correct))
        return batch

    async def _check_labels(self, feedback: dict[int, Feedback], batch: _Joined) -> None:
        """Mark invalid the labels that are not in their query's label set. Read before the
        join, as the join sets the learned marker: a mistyped label must not use up the
        query's one chance to learn its true label."""
        labelled = [(k, fb) for k, fb in feedback.items() if fb.label is not None]
        if not labelled:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for _, fb in labelled:
                pipe.hget(self.keys.decision(fb.id), "labels")
            found = await pipe.execute()
        for (k, fb), raw in zip(labelled, found, strict=True):
            try:
                check_feedback_label(fb, None if raw is None else _s(raw))
            except BadFeedback as exc:
                batch.invalid[k] = ("feedback", str(exc))

    async def _apply(self, batch: _Joined) -> None:
        """Learn a joined batch, dead-letter its invalid entries, acknowledge them all and
        count each one's outcome."""
        for n, (k, record, correct) in enumerate(batch.learn):
            if n and n % LEARN_CHUNK == 0:
                await asyncio.sleep(0)  # let the read-ahead and the router's tasks run
            self._learn(record, correct)
            batch.outcomes[k] = "joined"
        async with self.r.pipeline(transaction=True) as pipe:
            for k, (stage, reason) in sorted(batch.invalid.items()):  # in stream order
                e = batch.entries[k]
                pipe.xadd(self.keys.dead, dead_fields(e, stage, reason))
                self.m.dead_letters.labels(stage).inc()
                log.warning("dead letter %s from %s at %s: %s", e.id, self.keys.feedback, stage,
                            clip(reason, 300))  # fmt: skip
            pipe.xack(self.keys.feedback, LEARNERS_GROUP, *(e.id for e in batch.entries))
            await pipe.execute()
        for o in batch.outcomes:
            self._count(o or "unknown")

    def _learn(self, record: dict[str, str], correct: float) -> None:
        arm, cost = int(record["arm"]), float(record["cost"])
        self.policy.learn_line(record["shared"], arm, float(record["prob"]), correct, cost)
        name = record.get("arm_name", str(arm))
        per_arm = self._per_arm.get(name)
        if per_arm is None:  # the labelled children, looked up once per arm
            per_arm = self._per_arm[name] = (self.m.labelled.labels(name), self.m.correct.labels(name),
                                             self.m.reward.labels(name))  # fmt: skip
        labelled, right, reward = per_arm
        self.m.updates.inc()
        self.updates += 1
        labelled.inc()
        right.inc(correct)
        reward.observe(correct - self.policy.config.p * cost)
        self._since_publish += 1

    async def expire_due(self) -> None:
        """Decisions whose reward wait is over: default reward, or counted as expired."""
        due = await self.r.zrangebyscore(
            self.keys.awaiting, "-inf", time.time(), start=0, num=EXPIRY_BATCH
        )
        for raw_id in due:
            qid = _s(raw_id)
            if not await self.r.zrem(self.keys.awaiting, qid):
                continue  # another learner took it
            default = self.settings.default_reward
            raw = await self.r.hmget(self.keys.decision(qid), RECORD_FIELDS)
            record = {f: _s(v) for f, v in zip(RECORD_FIELDS, raw, strict=True) if v is not None}
            learnable = record and record.get("failed") != "1" and record.get("fallback") != "1"
            if (
                default is not None
                and learnable
                and await self.r.set(self.keys.learned(qid), "1", nx=True, ex=60)
            ):
                self._learn(record, default)
                self._count("defaulted")
            else:
                self._count("expired")

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.m.feedback.labels(outcome).inc()

    async def maybe_publish(self) -> None:
        s = self.settings
        due = self._since_publish >= s.snapshot_every_updates or (
            self._since_publish and time.monotonic() - self._last_publish >= s.snapshot_every_s
        )
        if due:
            await self.publish()

    async def publish(self) -> None:
        """Snapshot to Redis (bytes, version and publish time, in one transaction) and to disk."""
        data = self.policy.to_bytes()
        version, now = self.policy.version, time.time()
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.model_bytes, data)
            pipe.set(self.keys.model_version, version)
            pipe.set(self.keys.model_published, repr(now))
            await pipe.execute()
        if self.settings.model_dir:
            save_snapshot(Path(self.settings.model_dir), data)
        self._since_publish = 0
        self._last_publish = time.monotonic()
        self.published_version = version
        self.m.model_version.set(version)
        self.m.model_published.set(now)
        log.info("published model version %d (%d bytes)", version, len(data))


SNAPSHOT_FILE = "policy.bin"


def save_snapshot(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SNAPSHOT_FILE}.tmp"
    tmp.write_bytes(data)
    tmp.replace(folder / SNAPSHOT_FILE)
    return folder / SNAPSHOT_FILE


async def newest_snapshot(r: aioredis.Redis, keys: Keys, model_dir: str) -> Policy | None:
    """The newest of the snapshot in Redis and the one on disk, or None."""
    found: list[Policy] = []
    data: Any = await r.get(keys.model_bytes)
    if data:
        found.append(Policy.from_bytes(bytes(data)))
    path = Path(model_dir) / SNAPSHOT_FILE if model_dir else None
    if path is not None and path.is_file():
        found.append(Policy.from_bytes(path.read_bytes()))
    return max(found, key=lambda p: p.version) if found else None
