"""What a router does on a timer besides routing: keep the entries it works on, and trim
the streams that nothing else trims (the queries and feedback its groups acknowledged)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from workers.service.ownership import Ownership
from workers.service.settings import LEARNERS_GROUP, ROUTERS_GROUP, Keys
from workers.service.streams import trim_acknowledged

log = logging.getLogger(__name__)
TRIM_EVERY_S = 10.0  # how often the queries and feedback streams are trimmed


async def trim_streams(r: aioredis.Redis, keys: Keys, feedback_maxlen: int) -> int:
    """Drop the queries the routers have acknowledged and the feedback the learners have,
    and hold the feedback stream to ``feedback_maxlen`` whatever the learners have done
    (without a learner, the oldest labels go unlearned rather than fill Redis). Returns how
    many entries went."""
    gone = await trim_acknowledged(r, keys.queries, ROUTERS_GROUP)
    gone += await trim_acknowledged(r, keys.feedback, LEARNERS_GROUP)
    capped = int(await r.xtrim(keys.feedback, maxlen=feedback_maxlen, approximate=True))
    if capped:
        log.warning("feedback stream over %d entries: dropped %d not yet learned",
                    feedback_maxlen, capped)  # fmt: skip
    return gone + capped


async def keep(
    ownership: Ownership,
    working: Callable[[], Collection[str]],
    feedback_maxlen: int,
    done: asyncio.Event,
) -> None:
    """Until ``done``: every third of ``claim_idle_ms``, renew the claim on the entries
    ``working()`` names (and the router's liveness key); every ``TRIM_EVERY_S``, trim."""
    every_s = ownership.claim_idle_ms / 3000
    last_trim = 0.0
    while not done.is_set():
        try:
            await ownership.renew(working())
            if time.monotonic() - last_trim >= TRIM_EVERY_S:
                last_trim = time.monotonic()
                await trim_streams(ownership.r, ownership.keys, feedback_maxlen)
        except (RedisError, OSError) as exc:  # the router reconnects; try again next tick
            log.warning("router %s could not renew its claims: %s", ownership.consumer, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), every_s)
