"""Decision ownership: a query id is sent to an LLM once, however often it is delivered.

The decision record (``Keys.decision(id)``) names the queries-stream entry and the router
that own the id. One Lua script (``ownership.lua``) writes the record only when there is
none, so two routers, or two entries with the same id, never both call. When the id is
held already:

- it has been answered: another entry with the id gets the response rebuilt from the
  record (``repeated=1``), with the logged ``prob``, so learning from it stays unbiased; the
  same entry, claimed while its owner was answering it, is only acknowledged, as the owner
  wrote its response in the transaction that wrote the record's;
- the same entry, claimed after its router stopped renewing it: if that router is gone
  (its liveness key expired), the call may have been paid and is not made again: the
  response is an error. If the record says the call was abandoned at a shutdown deadline
  (it never returned), the script hands the id over and the claimer calls;
- another entry with the same id while the first is unanswered: it waits, pending, until
  the first is answered, for at most ``repeat_wait_s``.

A router holds its entries by renewing its claim on them (XCLAIM JUSTID, which counts no
delivery) every third of ``claim_idle_ms``, and says it is alive with a key of that TTL.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from workers.service.settings import ROUTERS_GROUP, Keys
from workers.service.streams import renew_claims, text

log = logging.getLogger(__name__)

ABANDONED = "abandoned"  # record field: 1 when a shutdown deadline cut the call short


@functools.cache
def script_text() -> str:
    return resources.files("workers.service").joinpath("ownership.lua").read_text()


@dataclass(frozen=True)
class Holder:
    """Who holds a query id when it is not the caller: its response (JSON of the response
    fields) once answered, else the entry and router that own it and what they decided."""

    response: str = ""
    entry: str = ""
    owner: str = ""
    arm_name: str = ""
    prob: str = ""
    model_version: str = ""
    explored: str = ""

    @classmethod
    def from_reply(cls, reply: Any) -> Holder | None:
        """The script's reply; None when the caller now owns the id."""
        words = [text(w) for w in reply]
        if words[0] in ("new", "retake"):
            return None
        if words[0] == "answered":
            return cls(response=words[1], entry=words[2])
        return cls("", *words[1:7])


@dataclass(frozen=True)
class Repeat:
    """An entry whose id another entry is answering: it waits for that answer."""

    entry_id: str
    qid: str
    meta: str
    since: float  # time.monotonic() when it was first seen


def rebuilt(response: str, meta: str) -> dict[str, Any]:
    """A response rebuilt from a record's, for an entry that made no call of its own; the
    entry's own ``meta`` replaces the first one's."""
    fields: dict[str, Any] = {k: v for k, v in json.loads(response).items() if k != "meta"}
    if meta:
        fields["meta"] = meta
    fields["repeated"] = 1
    return fields


def unanswered(qid: str, holder: Holder, meta: str, error: str, repeated: bool) -> dict[str, Any]:
    """An error response for an id whose call was made but whose answer is lost: the arm,
    prob and model version are the record's."""
    fields: dict[str, Any] = {
        "id": qid, "arm": holder.arm_name, "answer": "", "label": "", "prob": holder.prob,
        "explored": holder.explored or 0, "fallback": 0, "cost_usd": "0.0", "tokens_in": 0,
        "tokens_out": 0, "latency_ms": 0.0, "model_version": holder.model_version, "error": error,
    }  # fmt: skip
    if meta:
        fields["meta"] = meta
    if repeated:
        fields["repeated"] = 1
    return fields


class Ownership:
    """This router's hold on its query ids and stream entries."""

    def __init__(self, r: aioredis.Redis, keys: Keys, consumer: str, claim_idle_ms: int) -> None:
        self.r, self.keys, self.consumer, self.claim_idle_ms = r, keys, consumer, claim_idle_ms
        # What the records this process writes name as their owner: the consumer name and a
        # token of this process, so that a router restarted under the same name does not
        # take a record of its predecessor's for its own (that call may have been paid).
        self.owner = f"{consumer}/{secrets.token_hex(4)}"
        self._take = r.register_script(script_text())
        self.waiting: dict[str, Repeat] = {}  # by entry id

    async def take(
        self, pipe: Any, qid: str, entry_id: str, ttl_s: int, record: Mapping[str, Any]
    ) -> None:
        """Queue on ``pipe`` the script that writes ``record`` as the id's decision record
        if it has none; its reply is for ``Holder.from_reply``."""
        args: list[Any] = [entry_id, self.owner, ttl_s]
        for k, v in record.items():
            args += [k, v]
        await self._take(keys=[self.keys.decision(qid)], args=args, client=pipe)

    async def renew(self, ids: Collection[str]) -> None:
        """Keep the entries this router works on, and say it is alive."""
        await self.r.set(self.keys.router_alive(self.consumer), "1", px=self.claim_idle_ms)
        if ids:
            await renew_claims(self.r, self.keys.queries, ROUTERS_GROUP, self.consumer, ids)

    async def release(self) -> None:
        """Say this router is gone (on a clean stop), so that claimers need not wait."""
        await self.r.delete(self.keys.router_alive(self.consumer))

    async def alive(self, owner: str) -> bool:
        """Whether ``owner`` (a record's: consumer/process token) is another router that
        still renews its claims (an earlier process under this router's name is gone)."""
        consumer = owner.rpartition("/")[0] or owner
        if consumer == self.consumer:
            return False
        return bool(await self.r.exists(self.keys.router_alive(consumer)))

    async def running(self, consumers: set[str]) -> set[str]:
        """Which of these other routers still renew their claims (for ``claim_stale``)."""
        names = sorted(consumers)
        async with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.router_alive(name))
            found = await pipe.execute()
        return {name for name, n in zip(names, found, strict=True) if n}

    async def respond(
        self,
        entry_id: str,
        fields: Mapping[str, Any],
        maxlen: int,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a response made without a call, update the id's record with ``record``,
        and acknowledge the entry, in one transaction."""
        async with self.r.pipeline(transaction=True) as pipe:
            out: dict[Any, Any] = dict(fields)
            pipe.xadd(self.keys.responses, out, maxlen=maxlen, approximate=True)
            if record:
                update: dict[Any, Any] = dict(record)
                pipe.hset(self.keys.decision(str(fields["id"])), mapping=update)
            pipe.xack(self.keys.queries, ROUTERS_GROUP, entry_id)
            await pipe.execute()

    async def settle(self, entry_id: str, qid: str, meta: str, h: Holder, maxlen: int) -> None:
        """Answer, or leave pending, an entry whose id another entry or router holds."""
        if h.response and h.entry == entry_id:
            # Claimed while its owner was still answering it: the owner wrote the record's
            # response to the stream in the transaction that acknowledged the entry.
            await self.r.xack(self.keys.queries, ROUTERS_GROUP, entry_id)
        elif h.response:  # answered already: the recorded response, never a second call
            await self.respond(entry_id, rebuilt(h.response, meta), maxlen)
        elif h.entry != entry_id:  # a repeated id while the first is out: wait for it
            self.waiting.setdefault(entry_id, Repeat(entry_id, qid, meta, time.monotonic()))
        elif not await self.alive(h.owner):
            # The call may have been made and paid for: it is not made again.
            error = (f"router {h.owner!r} stopped with the LLM call for this query out; it is "
                     "not sent again (resubmit under a new id to retry)")  # fmt: skip
            fields = unanswered(qid, h, meta, error, repeated=False)
            record = {"label": "", "answered_by": h.arm_name, "fallback": 0, "failed": 1,
                      "cost_usd": "0.0", "response": json.dumps(fields)}  # fmt: skip
            await self.respond(entry_id, fields, maxlen, record)
            log.warning("query %s: %s", qid, error)
        # else its owner lives and renews it (taking it back from this router): leave it be.

    async def settle_waiting(self, wait_s: float, maxlen: int) -> int:
        """Answer the waiting repeats whose first entry has been answered (or that waited
        ``wait_s`` seconds); returns how many were answered."""
        if not self.waiting:
            return 0
        repeats = list(self.waiting.values())
        async with self.r.pipeline(transaction=False) as pipe:
            for rep in repeats:
                pipe.hget(self.keys.decision(rep.qid), "response")
            found = await pipe.execute()
        now, settled = time.monotonic(), 0
        for rep, raw in zip(repeats, found, strict=True):
            if raw is not None:
                fields = rebuilt(text(raw), rep.meta)
            elif now - rep.since >= wait_s:
                error = (f"query id {rep.qid!r} is still being answered for another entry after "
                         f"{wait_s:g} s; it is not sent again (resubmit under a new id to retry)")  # fmt: skip
                fields = unanswered(rep.qid, Holder(), rep.meta, error, repeated=True)
            else:
                continue
            await self.respond(rep.entry_id, fields, maxlen)
            del self.waiting[rep.entry_id]
            settled += 1
        return settled

    async def mark_abandoned(self, qids: Collection[str]) -> None:
        """Record that these ids' calls were cut short before they returned, so that the
        router that claims their entries may call again."""
        async with self.r.pipeline(transaction=False) as pipe:
            for qid in qids:
                pipe.hset(self.keys.decision(qid), ABANDONED, 1)
            await pipe.execute()
