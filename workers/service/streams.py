"""Redis Streams plumbing: consumer groups, batched reads, claiming stale entries, dead letters."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id and its fields (decoded to str)."""

    id: str
    fields: dict[str, str]
    deliveries: int = 1


def _decode(fields: Any) -> dict[str, str]:
    """Entry fields as a str dict; redis-py gives a dict, a raw reply a flat [k, v, …] list."""
    if isinstance(fields, list | tuple):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in fields.items()
    }


def _id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) if missing; reading starts at the
    beginning, so entries written before the first worker starts are not lost."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def read_new(
    r: aioredis.Redis, stream: str, group: str, consumer: str, count: int, block_ms: int | None
) -> list[Entry]:
    """Up to ``count`` entries not yet delivered to ``group``, waiting up to ``block_ms`` for
    the first (None: not at all)."""
    reply: Any = await r.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    out: list[Entry] = []
    for _, entries in reply or []:
        out += [Entry(_id(eid), _decode(f)) for eid, f in entries if f is not None]
    return out


async def read_own_pending(
    r: aioredis.Redis, stream: str, group: str, consumer: str, after: str, count: int
) -> tuple[list[Entry], str | None]:
    """Up to ``count`` of ``consumer``'s own entries that were delivered and not acknowledged,
    with ids after ``after`` ("0" for all), and the id to read on from (None: none is left).
    Entries deleted from the stream meanwhile are skipped."""
    reply: Any = await r.xreadgroup(group, consumer, {stream: after}, count=count)
    raw = [e for _, entries in reply or [] for e in entries]
    if not raw:
        return [], None
    return [Entry(_id(eid), _decode(f)) for eid, f in raw if f], _id(raw[-1][0])


def parse_autoclaim(reply: Sequence[Any]) -> tuple[str, list[tuple[str, dict[str, str]]]]:
    """XAUTOCLAIM's reply: Redis 6.2 gives [next, entries]; Redis 7 adds a third element,
    the ids that were deleted meanwhile. Entries deleted under 6.2 come back as (id, None)."""
    next_id = _id(reply[0])
    claimed = [(_id(eid), _decode(f)) for eid, f in reply[1] if f]
    return next_id, claimed


async def claim_stale(
    r: aioredis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
) -> list[Entry]:
    """Take over entries another consumer read but did not acknowledge for ``min_idle_ms``,
    with how often each has been delivered (claiming counts as a delivery)."""
    raw = await r.execute_command(
        "XAUTOCLAIM", stream, group, consumer, min_idle_ms, "0-0", "COUNT", count
    )
    _, claimed = parse_autoclaim(raw)
    if not claimed:
        return []
    pending = await r.xpending_range(
        stream, group, min=claimed[0][0], max=claimed[-1][0], count=len(claimed) * 2
    )
    deliveries = {_id(p["message_id"]): int(p["times_delivered"]) for p in pending}
    return [Entry(eid, f, deliveries.get(eid, 1)) for eid, f in claimed]


async def dead_letter(
    r: aioredis.Redis,
    dead_stream: str,
    stream: str,
    group: str,
    entry: Entry,
    stage: str,
    error: str,
) -> None:
    """Move an entry to the dead-letter stream with the reason, and acknowledge it."""
    fields: dict[Any, Any] = {
        **entry.fields,
        "stage": stage,
        "error": error[:2000],
        "deliveries": str(entry.deliveries),
    }
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(dead_stream, fields)
        pipe.xack(stream, group, entry.id)
        await pipe.execute()
    log.warning("dead letter %s from %s at %s: %s", entry.id, stream, stage, error)


async def group_backlog(r: aioredis.Redis, stream: str, group: str) -> tuple[int | None, int]:
    """(lag, pending) of ``group`` on ``stream``: entries not yet delivered to the group
    (None on Redis < 7, which does not report it) and entries delivered but not acknowledged."""
    try:
        groups: Any = await r.xinfo_groups(stream)
    except ResponseError:
        return None, 0
    for g in groups:
        if _id(g.get("name")) == group:
            lag = g.get("lag")
            return (int(lag) if lag is not None else None), int(g.get("pending", 0))
    return None, 0
