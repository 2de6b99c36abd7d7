"""The learner: feedback stream → join the decision record → reward → VW update → commit.

Learning is exactly once. The learner learns feedback entries as they come but neither
acknowledges them nor marks their ids learned until a commit (``publish``): one Redis
transaction that writes the model (bytes, version, publish time), sets the ``learned:{id}``
marker of every id learned or defaulted since the previous commit, takes those ids out of
the awaiting set, writes the dead letters and acknowledges every feedback entry handled
since then. A learner killed at any instant restarts from the last commit: it loads that
model, re-reads its own unacknowledged entries (it reads under a stable consumer name) and
learns them again, while the markers committed with the model turn away labels it holds.
Between commits the ids learned are kept in memory, so a second label is a duplicate then
too.

Decisions whose label does not come within the reward wait are learned with
``default_reward`` when one is set (as Azure Personalizer does), or dropped and counted as
expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bandit.errors import UnknownArmError
from bandit.policy import Policy
from bandit.reward import is_correct
from bandit.reward import reward as reward_of
from workers.service.decision_log import LOG_FIELDS, DecisionLog
from workers.service.drift_watch import DRIFT_OFF, DriftHooks
from workers.service.evaluation import OPE_OFF, Evaluation
from workers.service.floors import FLOORS_OFF, Floors
from workers.service.messages import BadFeedback, Feedback, check_feedback_label, parse_feedback
from workers.service.metrics import Metrics
from workers.service.migration import arm_index
from workers.service.settings import DEFAULT_LEARNER_CONSUMER, LEARNERS_GROUP, Keys, ServiceSettings
from workers.service.streams import (
    Entry,
    claim_stale,
    clip,
    dead_fields,
    ensure_group,
    group_backlog,
    read_new,
    read_own_pending,
    text,
)

log = logging.getLogger(__name__)
EXPIRY_BATCH = 500
# Feedback entries read per step: one join script call per batch, so bigger batches cost
# less per update (128 → 512 took the learner from 7.5k to 10k updates/s).
FEEDBACK_BATCH = 512
# A commit is due, whatever the cadence, once this many entries or ids wait for it: what
# is held in memory (and re-read after a crash) stays bounded when nothing is learned.
COMMIT_MAX_HELD = 20_000
# What learning and (from pmf on) off-policy evaluation need of a decision record.
RECORD_FIELDS = ("shared", "arm", "arm_name", "prob", "cost", "label", "fallback", "failed",
                 "labels", "pmf", "predicted", "cost_usd", "p", *LOG_FIELDS)  # fmt: skip
# Updates learned between yields to the event loop, so the read-ahead (and, in serve, the
# router) run while a batch learns.
LEARN_CHUNK = 64


def _lua(name: str) -> str:
    """A server-side script kept beside this module."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _decode_record(raw: list[Any]) -> dict[str, str]:
    """A decision record's ``RECORD_FIELDS`` as HMGET returns them, without the missing ones."""
    return {f: text(v) for f, v in zip(RECORD_FIELDS, raw, strict=True) if v is not None}


def _learnable(record: dict[str, str]) -> bool:
    """Whether a decision can teach the policy: it exists, and the answering arm was drawn
    from the logged pmf. A failed call teaches nothing; an arm drawn again after the first
    failed (``redrawn``) carries its own draw's probability and is learned. ``fallback`` is
    what routers before the circuit breakers wrote for an arm taken without a draw."""
    return bool(record) and record.get("failed") != "1" and record.get("fallback") != "1"


@dataclass
class _Joined:
    """Feedback entries joined with their decision records, not yet learned: each entry's
    outcome so far (None: to learn), (entry index, record, correctness) to learn, and the
    ids whose learned marker the commit after this batch sets."""

    entries: list[Entry]
    outcomes: list[str | None]
    learn: list[tuple[int, dict[str, str], float]]
    mark: list[str] = field(default_factory=list)
    # by entry index, the (stage, reason) of the invalid ones, to dead-letter
    invalid: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass
class _Uncommitted:
    """What the next commit writes besides the model: markers, awaiting-set removals, dead
    letters and acknowledgements of everything handled since the previous commit."""

    markers: list[str] = field(default_factory=list)
    settled: set[str] = field(default_factory=set)  # ids that leave the awaiting set
    dead: list[dict[Any, Any]] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)

    def held(self) -> int:
        """The most entries or ids of one kind the commit writes."""
        return max(len(self.markers), len(self.settled), len(self.acks))

    def merge(self, later: _Uncommitted) -> None:
        self.markers += later.markers
        self.settled |= later.settled
        self.dead += later.dead
        self.acks += later.acks


class Learner:
    def __init__(self, settings: ServiceSettings, policy: Policy, redis: aioredis.Redis,
                 metrics: Metrics, ope: Evaluation = OPE_OFF, drift: DriftHooks = DRIFT_OFF,
                 floors: Floors = FLOORS_OFF) -> None:  # fmt: skip
        self.settings, self.policy, self.r, self.m, self.ope = settings, policy, redis, metrics, ope
        self.drift = drift  # per-arm drift detectors on the labels (workers/service/drift_watch.py)
        self.floors, self.busy = floors, asyncio.Lock()  # busy: a config reload waits for a step
        self.keys = Keys(settings.prefix)
        self.consumer = settings.consumer or DEFAULT_LEARNER_CONSUMER
        self._since_publish = 0
        self._last_publish = time.monotonic()
        self._last_claim = 0.0
        self.published_version = -1
        self.outcomes: Counter[str] = Counter()  # feedback outcomes, as in metallm_feedback_total
        self.updates = 0
        self._join = redis.register_script(_lua("join.lua"))
        self._commit_ids = redis.register_script(_lua("commit.lua"))
        self._per_arm: dict[str, tuple[Any, Any, Any]] = {}
        self.decisions = DecisionLog(settings, self.keys)  # joined decisions, for export
        self._next: _Joined | None = None  # the batch read and joined ahead
        # Since the last commit: ids learned, defaulted or judged (a later label for them is
        # a duplicate), feedback entries read (not acknowledged yet), and what to commit.
        self._seen: set[str] = set()
        self._reading: set[str] = set()
        self._uncommitted = _Uncommitted()
        self._own_pending: str | None = "0"  # where re-reading our unacknowledged entries is
        metrics.model_version.set(policy.version)

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_group(self.r, self.keys.feedback, LEARNERS_GROUP)
        await self.ope.ensure_restored()
        if await self.r.get(self.keys.model_version) is None:
            await self.publish()  # routers start from the same model the learner has
        while not stop.is_set():
            async with self.busy:
                await self.step()
        if self._next is not None:  # read and joined ahead: learn and commit it too
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
        await self.maybe_promote()
        await self.maybe_publish()
        lag, pending = await group_backlog(self.r, self.keys.feedback, LEARNERS_GROUP)
        if lag is not None:
            self.m.stream_lag.labels("feedback").set(lag)
        self.m.pending.labels("feedback").set(pending)
        return len(batch.entries)

    async def _fetch(self, block: bool) -> _Joined:
        """The next feedback entries, joined with their decision records: first this
        consumer's own unacknowledged ones (after a restart, those a killed run learned but
        did not commit), then stale ones of other consumers, then new ones. ``block=False``
        does not wait for new entries."""
        s, stream = self.settings, self.keys.feedback
        entries: list[Entry] = []
        if self._own_pending is not None:
            entries, self._own_pending = await read_own_pending(
                self.r, stream, LEARNERS_GROUP, self.consumer, self._own_pending, FEEDBACK_BATCH
            )
        if self._own_pending is None and not entries:
            if time.monotonic() - self._last_claim >= s.claim_idle_ms / 2000:
                self._last_claim = time.monotonic()
                entries = await claim_stale(self.r, stream, LEARNERS_GROUP, self.consumer,
                                            s.claim_idle_ms, FEEDBACK_BATCH)  # fmt: skip
            entries += await read_new(self.r, stream, LEARNERS_GROUP, self.consumer,
                                      FEEDBACK_BATCH, s.block_ms if block else None)  # fmt: skip
        # XAUTOCLAIM also hands back our own entries that wait for the commit longer than
        # claim_idle_ms: they are being handled already.
        entries = [e for e in entries if e.id not in self._reading]
        self._reading.update(e.id for e in entries)
        return await self._join_records(entries)

    async def _join_records(self, entries: list[Entry]) -> _Joined:
        """Each entry's outcome, or what it teaches, with one Redis round trip per batch."""
        batch = _Joined(entries, [None] * len(entries), [])
        parsed: list[tuple[int, Feedback]] = []
        for k, e in enumerate(entries):
            try:
                if e.decode_error:
                    batch.invalid[k] = ("decode", e.decode_error)
                else:
                    parsed.append((k, parse_feedback(e.fields, self.settings)))
            except BadFeedback as exc:
                batch.invalid[k] = ("feedback", str(exc))
        for k in batch.invalid:
            batch.outcomes[k] = "invalid"
        if not parsed:
            return batch
        reply = await self._read_records([fb.id for _, fb in parsed])
        for (k, fb), (marked, raw) in zip(parsed, reply, strict=True):
            qid, record = fb.id, _decode_record(raw)
            if "label" not in record:
                batch.outcomes[k] = "unknown"  # never decided, expired, or not answered yet
                continue
            try:
                # Before the duplicate check: a label outside the set does not use up the
                # query's one chance to learn its true label.
                check_feedback_label(fb, record.get("labels"))
            except BadFeedback as exc:
                batch.invalid[k] = ("feedback", str(exc))
                batch.outcomes[k] = "invalid"
                continue
            if marked or qid in self._seen:
                batch.outcomes[k] = "duplicate"
            else:
                self._seen.add(qid)
                batch.mark.append(qid)
                if not _learnable(record):
                    batch.outcomes[k] = "not_learnable"
                else:
                    correct = (fb.reward if fb.reward is not None
                               else is_correct(record["label"], fb.label or ""))  # fmt: skip
                    self.decisions.note(record, qid, fb.label)
                    batch.learn.append((k, record, correct))
        return batch

    async def _read_records(self, ids: list[str]) -> list[tuple[int, list[Any]]]:
        """Per id: (1 if its learned marker is set, else 0; its record's ``RECORD_FIELDS``)."""
        keys: list[str] = []
        for qid in ids:
            keys += [self.keys.decision(qid), self.keys.learned(qid)]
        reply: Any = await self._join(keys=keys, args=list(RECORD_FIELDS))
        return [(int(marked), raw) for marked, raw in reply]

    async def _apply(self, batch: _Joined) -> None:
        """Learn a joined batch and hand its markers, dead letters and acknowledgements to
        the next commit; count each entry's outcome."""
        for n, (k, record, correct) in enumerate(batch.learn):
            if n and n % LEARN_CHUNK == 0:
                await asyncio.sleep(0)  # let the read-ahead and the router's tasks run
            try:
                self._learn(record, correct)
            except (KeyError, ValueError) as exc:  # a record no router wrote; PolicyError too
                batch.outcomes[k] = "unknown_arm" if isinstance(exc, UnknownArmError) else "invalid"
                batch.invalid[k] = ("feedback", f"its decision record cannot be learned: {exc!r}")
                continue
            self.ope.observe(record, correct)  # labels only: a default reward is no outcome
            self.decisions.add(record, correct, self.policy.arm_names)
            self.drift.observe(record, correct)
            batch.outcomes[k] = "joined"
        todo = self._uncommitted
        todo.markers += batch.mark
        todo.settled.update(batch.mark)
        for k, (e, outcome) in enumerate(zip(batch.entries, batch.outcomes, strict=True)):
            if k in batch.invalid:
                stage, reason = batch.invalid[k]
                todo.dead.append(dead_fields(e, stage, reason))
                log.warning("dead letter %s from %s at %s: %s", e.id, self.keys.feedback, stage,
                            clip(reason, 300))  # fmt: skip
            todo.acks.append(e.id)
            self._count(outcome or "unknown")

    def _learn(self, record: dict[str, str], correct: float) -> None:
        arm, cost = arm_index(self.policy, record), float(record["cost"])
        self.policy.learn_line(record["shared"], arm, float(record["prob"]), correct, cost)
        self.floors.labelled(record)
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
        reward.observe(reward_of(correct, cost, self.policy.config.p))
        self._since_publish += 1

    async def expire_due(self) -> None:
        """Decisions whose reward wait is over: default reward, or counted as expired. They
        leave the awaiting set at the next commit (a defaulted one with its marker), so a
        learner killed before it still finds them due."""
        todo = self._uncommitted
        # Due ids this learner holds (learned or settled, not committed yet) stay in the set
        # until the commit: read past them.
        held = len(self._seen) + len(todo.settled)
        due = await self.r.zrangebyscore(
            self.keys.awaiting, "-inf", time.time(), start=0, num=EXPIRY_BATCH + held
        )
        ids = [q for q in map(text, due) if q not in self._seen and q not in todo.settled]
        ids = ids[:EXPIRY_BATCH]
        if not ids:
            return
        default = self.settings.default_reward
        for qid, (marked, raw) in zip(ids, await self._read_records(ids), strict=True):
            todo.settled.add(qid)
            record = _decode_record(raw)
            if default is not None and not marked and _learnable(record):
                try:
                    self._learn(record, default)
                except (KeyError, ValueError) as exc:
                    log.warning("decision %s cannot be learned: %r", qid, exc)
                    self._count("expired")
                    continue
                self._seen.add(qid)
                todo.markers.append(qid)
                self._count("defaulted")
            else:
                self._count("expired")

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.m.feedback.labels(outcome).inc()

    async def maybe_promote(self) -> None:
        """Commit what this model learned, then publish the candidate asked for (if any)."""
        if await self.ope.promotion_due():
            await self.publish(model=self.policy.version != self.published_version)
            self.policy = self.ope.promote(self.policy) or self.policy
            await self.publish(model=self.policy.version != self.published_version)

    async def maybe_publish(self) -> None:
        s, held = self.settings, self._uncommitted.held()
        due = (
            self._since_publish >= s.snapshot_every_updates
            or held >= COMMIT_MAX_HELD
            or (
                (self._since_publish or held)
                and time.monotonic() - self._last_publish >= s.snapshot_every_s
            )
        )
        if due:  # a commit of acknowledgements alone leaves the model as it is
            await self.publish(model=self.policy.version != self.published_version)

    async def publish(self, model: bool = True) -> None:
        """Commit: in one Redis transaction, the model snapshot (bytes, version and publish
        time; ``model=False`` leaves them as they are) with the markers, awaiting-set removals, dead letters and
        acknowledgements of everything learned or handled since the last commit. Then the
        snapshot goes to disk (a cache: see ``newest_snapshot``)."""
        await self.ope.ensure_restored()  # never overwrite the committed estimates
        await self.drift.ensure_restored()
        version, now = self.policy.version, time.time()
        data = self.policy.to_bytes() if model else None
        todo, self._uncommitted = self._uncommitted, _Uncommitted()
        try:
            await self._commit(todo, data, now)
        except BaseException:
            todo.merge(self._uncommitted)  # not committed: the next commit writes it all
            self._uncommitted = todo
            raise
        self.ope.committed(self.m)
        self.decisions.committed()
        self._seen.difference_update(todo.markers)
        self._reading.difference_update(todo.acks)
        self._since_publish = 0
        self._last_publish = time.monotonic()
        for fields in todo.dead:
            self.m.dead_letters.labels(fields["stage"]).inc()
        if data is None:
            return
        if self.settings.model_dir:
            save_snapshot(Path(self.settings.model_dir), data)
        self.published_version = version
        self.m.model_version.set(version)
        self.m.model_published.set(now)
        log.info("published model version %d (%d bytes)", version, len(data))

    async def _commit(self, todo: _Uncommitted, data: bytes | None, now: float) -> None:
        k, ttl = self.keys, self.settings.marker_ttl_s()
        async with self.r.pipeline(transaction=True) as pipe:
            if data is not None:
                pipe.set(k.model_bytes, data)
                pipe.set(k.model_version, self.policy.version)
                pipe.set(k.model_published, repr(now))
            self.ope.queue_commit(pipe)
            self.decisions.queue_commit(pipe)
            self.floors.queue_commit(pipe)
            self.drift.queue_commit(pipe)
            if todo.markers or todo.settled:
                markers = [k.learned(qid) for qid in todo.markers]
                # Queued in the transaction (awaiting it sends nothing yet).
                await self._commit_ids(
                    keys=[k.awaiting, *markers], args=[ttl, *todo.settled], client=pipe
                )
            for fields in todo.dead:
                pipe.xadd(k.dead, fields, maxlen=self.settings.dead_maxlen, approximate=True)
            if todo.acks:
                pipe.xack(k.feedback, LEARNERS_GROUP, *todo.acks)
            await pipe.execute()


SNAPSHOT_FILE = "policy.bin"


def save_snapshot(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{SNAPSHOT_FILE}.tmp"
    tmp.write_bytes(data)
    tmp.replace(folder / SNAPSHOT_FILE)
    return folder / SNAPSHOT_FILE


async def newest_snapshot(r: aioredis.Redis, keys: Keys, model_dir: str) -> Policy | None:
    """The snapshot committed in Redis; the copy on disk only when Redis has none; or None.

    Redis wins even over a newer disk copy: its snapshot was committed with the markers and
    the feedback position, so a learner that starts from it re-learns exactly what came
    after. A Redis that lost its data (restarted without persistence) has lost the feedback
    stream, the decision records and the markers with it: the learner then starts from the
    disk copy, and only feedback for decisions made after that can teach it."""
    data: Any = await r.get(keys.model_bytes)
    if data:
        return Policy.from_bytes(bytes(data))
    path = Path(model_dir) / SNAPSHOT_FILE if model_dir else None
    if path is not None and path.is_file():
        log.warning("no model in Redis: starting from the disk copy %s", path)
        return Policy.from_bytes(path.read_bytes())
    return None
