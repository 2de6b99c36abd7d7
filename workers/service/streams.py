"""Redis Streams plumbing: consumer groups, batched reads, claiming stale entries, dead letters."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)
RENEW_CHUNK = 1000  # entry ids per XCLAIM


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


def text(raw: Any) -> str:
    """``raw`` (a Redis reply) as text: bytes decoded as UTF-8 (UnicodeDecodeError when
    they are not)."""
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
            name = text(k)
        except UnicodeDecodeError as exc:
            undecodable[_escaped(k)] = _escaped(v)
            errors.append(f"a field name is not valid UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            fields[name] = text(v)
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
    return [_entry(_id(eid), f) for eid, f in raw if f], _id(raw[-1][0])


def parse_autoclaim(reply: Sequence[Any]) -> tuple[str, list[Entry]]:
    """XAUTOCLAIM's reply: Redis 6.2 gives [next, entries]; Redis 7 adds a third element,
    the ids that were deleted meanwhile. Entries deleted under 6.2 come back as (id, None)."""
    next_id = _id(reply[0])
    claimed = [_entry(_id(eid), f) for eid, f in reply[1] if f]
    return next_id, claimed


async def claim_stale(
    r: aioredis.Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    count: int,
    working: Collection[str] = (),
    alive: Callable[[set[str]], Awaitable[set[str]]] | None = None,
) -> list[Entry]:
    """Take over entries read but not acknowledged for ``min_idle_ms``, with how often each
    has been delivered (claiming counts as a delivery). ``working``: ids this consumer is
    still working on, never claimed again (that would count a delivery that did not happen);
    its other idle entries, left by an earlier process under the same name, are claimed.
    ``alive``: which of the given other consumers are known to be running; their entries
    are left to them (None: all are taken to be gone)."""
    idle: Any = await r.xpending_range(stream, group, "-", "+", count, idle=min_idle_ms)
    owners = {_id(p["consumer"]) for p in idle} - {consumer}
    running = await alive(owners) if alive is not None and owners else set()
    counts = {
        _id(p["message_id"]): int(p["times_delivered"])
        for p in idle
        if _id(p["consumer"]) not in running
        and not (_id(p["consumer"]) == consumer and _id(p["message_id"]) in working)
    }
    if not counts:
        return []
    # XCLAIM checks the idle time again: an entry claimed or renewed meanwhile stays put.
    # Entries deleted from the stream are dropped from the pending list and not returned.
    ids: list[Any] = list(counts)
    claimed: Any = await r.xclaim(stream, group, consumer, min_idle_ms, ids)
    return [
        replace(_entry(_id(eid), f), deliveries=counts[_id(eid)] + 1) for eid, f in claimed if f
    ]


async def renew_claims(
    r: aioredis.Redis, stream: str, group: str, consumer: str, ids: Collection[str]
) -> None:
    """Reset the idle time of entries this consumer is working on, so that no one else
    claims them; JUSTID does not count a delivery."""
    batch: list[Any] = list(ids)
    for start in range(0, len(batch), RENEW_CHUNK):
        await r.xclaim(stream, group, consumer, 0, batch[start : start + RENEW_CHUNK], justid=True)


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
    maxlen: int | None = None,
    response: tuple[str, dict[Any, Any], int] | None = None,
) -> None:
    """Move an entry to the dead-letter stream (kept to about ``maxlen`` entries, None: no
    bound) with the reason, and acknowledge it; with ``response`` (a stream, its fields and
    its length cap), also write that, in the same transaction, so that whoever waits for an
    answer to the entry gets one exactly when it is dead."""
    fields = dead_fields(entry, stage, error)
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(dead_stream, fields, maxlen=maxlen, approximate=True)
        if response is not None:
            stream_name, response_fields, response_maxlen = response
            pipe.xadd(stream_name, response_fields, maxlen=response_maxlen, approximate=True)
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


def _older(a: str, b: str) -> str:
    """The older of two stream ids."""
    ka, kb = (tuple(int(x) for x in i.split("-")) for i in (a, b))
    return a if ka <= kb else b


async def trim_acknowledged(r: aioredis.Redis, stream: str, group: str) -> int:
    """Drop the entries of ``stream`` that ``group`` has acknowledged: everything older than
    both its oldest pending entry and the first entry not yet delivered to it (approximately:
    Redis trims whole nodes, so it keeps a few more). Nothing else reads these streams; with
    no such group nothing is trimmed. Returns how many entries went."""
    try:
        async with r.pipeline(transaction=True) as pipe:  # one view of the group
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, group)
            groups, pending = await pipe.execute()
    except ResponseError:  # no stream or no such group
        return 0
    info = next((g for g in groups if _id(g.get("name")) == group), None)
    if info is None:
        return 0
    # Entries after last-delivered-id are undelivered; keeping the last delivered one too
    # costs one entry and spares working out the id after it.
    keep_from = _id(info["last-delivered-id"])
    if int(pending.get("pending", 0)) and pending.get("min") is not None:
        keep_from = _older(keep_from, _id(pending["min"]))
    if keep_from == "0-0":
        return 0
    return int(await r.xtrim(stream, minid=keep_from, approximate=True))
