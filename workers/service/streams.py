"""Redis Streams plumbing: consumer groups, batched reads, claiming stale entries, dead letters."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


# Dead letters and error responses carry the reason whole up to this many characters, then
# cut at a word boundary: reasons quote bad values, and a bad value can be megabytes.
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id, the fields that decoded as UTF-8, and the rest.

    A stream entry is data from outside, never trusted: a field whose name or value is not
    valid UTF-8 does not make reading fail (the batch would never be acknowledged and every
    worker would crash on it in turn). It is kept in ``undecodable``, name and value
    backslash-escaped (so that a dead-letter copy is writable and readable as text), and
    ``decode_error`` says which fields they were; the worker dead-letters the entry."""

    id: str
    fields: dict[str, str]
    deliveries: int = 1
    undecodable: dict[str, str] = field(default_factory=dict)
    decode_error: str = ""


def _text(raw: Any) -> str:
    """``raw`` as text: bytes decoded as UTF-8 (UnicodeDecodeError when they are not)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _escaped(raw: Any) -> str:
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def _entry(eid: str, raw: Any) -> Entry:
    """An Entry from a reply's fields: redis-py gives a dict, a raw reply a flat [k, v, …] list."""
    if isinstance(raw, list | tuple):
        raw = dict(zip(raw[::2], raw[1::2], strict=False))
    fields: dict[str, str] = {}
    undecodable: dict[str, str] = {}
    errors: list[str] = []
    for k, v in raw.items():
        try:
            name = _text(k)
        except UnicodeDecodeError as exc:
            undecodable[_escaped(k)] = _escaped(v)
            errors.append(f"a field name is not valid UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            fields[name] = _text(v)
        except UnicodeDecodeError as exc:
            undecodable[name] = _escaped(v)
            errors.append(
                f"field {clip(name, 80)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            )
    return Entry(eid, fields, 1, undecodable, "; ".join(errors))


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` whole when it has at most ``limit`` characters, else cut at the last word
    boundary before the limit (mid-word only when a single word is longer), with how much
    was left off."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    head = (text[:cut] if cut > limit // 2 else text[:limit]).rstrip()
    return f"{head} … ({len(text) - len(head):,} more characters)"


def _id(raw: Any) -> str:
    return _escaped(raw)  # entry ids and Redis' own replies are ASCII


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
        out += [_entry(_id(eid), f) for eid, f in entries if f is not None]
    return out


def parse_autoclaim(reply: Sequence[Any]) -> tuple[str, list[Entry]]:
    """XAUTOCLAIM's reply: Redis 6.2 gives [next, entries]; Redis 7 adds a third element,
    the ids that were deleted meanwhile. Entries deleted under 6.2 come back as (id, None)."""
    next_id = _id(reply[0])
    claimed = [_entry(_id(eid), f) for eid, f in reply[1] if f]
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
        stream, group, min=claimed[0].id, max=claimed[-1].id, count=len(claimed) * 2
    )
    deliveries = {_id(p["message_id"]): int(p["times_delivered"]) for p in pending}
    return [replace(e, deliveries=deliveries.get(e.id, 1)) for e in claimed]


def dead_fields(entry: Entry, stage: str, error: str) -> dict[Any, Any]:
    """A dead letter's fields: the entry's own (undecodable ones backslash-escaped), the
    stage that refused it, the reason and how often it was delivered."""
    return {
        **entry.fields,
        **entry.undecodable,
        "stage": stage,
        "error": clip(error),
        "deliveries": str(entry.deliveries),
    }


async def dead_letter(
    r: aioredis.Redis,
    dead_stream: str,
    stream: str,
    group: str,
    entry: Entry,
    stage: str,
    error: str,
    response: tuple[str, dict[Any, Any]] | None = None,
) -> None:
    """Move an entry to the dead-letter stream with the reason, and acknowledge it; with
    ``response`` (a stream and its fields), also write that, in the same transaction, so
    that whoever waits for an answer to the entry gets one exactly when it is dead."""
    fields = dead_fields(entry, stage, error)
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(dead_stream, fields)
        if response is not None:
            pipe.xadd(*response)
        pipe.xack(stream, group, entry.id)
        await pipe.execute()
    log.warning("dead letter %s from %s at %s: %s", entry.id, stream, stage, clip(error, 300))


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
