"""What a router writes to Redis for a batch: the decision records (taking ownership of each
query id, workers/service/ownership.py), then, as answers come in, the responses with the
outcome in each record and the acknowledgements, in one transaction."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from bandit.arms import ArmCatalogue
from bandit.policy import Decision, Policy
from workers.service.answers import parse_label
from workers.service.decision_log import record_text
from workers.service.dispatch import Answer
from workers.service.metrics import Metrics
from workers.service.ownership import Holder, Ownership
from workers.service.pacing import record_spend
from workers.service.settings import ROUTERS_GROUP, Keys, ServiceSettings
from workers.service.streams import clip

if TYPE_CHECKING:
    from workers.service.router import Query


def drawn(policy: Policy, d: Decision, p: float) -> dict[Any, Any]:
    """A decision record's fields that say what was drawn, and with what probability;
    ``p``: the price weight ``d`` was decided with (the pacer's, under a budget)."""
    out: dict[Any, Any] = {"arm": d.arm, "arm_name": policy.arm_names[d.arm], "prob": repr(d.prob),
                           "pmf": json.dumps(d.pmf.tolist()), "cost": repr(float(policy.costs[d.arm])),
                           "model_version": d.model_version}  # fmt: skip
    if policy.config.mode == "decoupled":
        # Each arm's P̂(correct), shape (n_arms,): the scores are P̂ − p·c. Off-policy
        # evaluation prices greedy-at-other-p with it (paper mode has no P̂).
        out["predicted"] = json.dumps((d.scores + p * policy.costs).tolist())
    return out


def dead_response(qid: str, error: str) -> dict[str, Any]:
    """The response to a query that was dead-lettered: the fields of every response, with
    no arm, answer or label, zeros, and the reason in ``error`` (so a client waiting for
    this id is answered)."""
    return {"id": qid, "arm": "", "answer": "", "label": "", "prob": "0", "explored": 0,
            "fallback": 0, "cost_usd": "0.0", "tokens_in": 0, "tokens_out": 0, "latency_ms": 0,
            "model_version": 0, "error": clip(error), "p": "0"}  # fmt: skip


class Records:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        settings: ServiceSettings,
        arms: ArmCatalogue,
        metrics: Metrics,
        ownership: Ownership,
        paced: bool = False,
    ) -> None:
        """``paced``: a spend target is set, so the spend of each answer goes to the pacing
        controller's counters (workers/service/pacing.py)."""
        self.r, self.keys, self.settings, self.arms = redis, keys, settings, arms
        self.m, self.ownership, self.paced = metrics, ownership, paced

    async def store(
        self,
        policy: Policy,
        queries: list[Query],
        decisions: list[Decision],
        shared: list[str],
        p: float,
    ) -> list[Holder | None]:
        """Store each decision record unless its id has one already: None where this router
        now owns the id, else who holds it. ``p``: the price weight the batch was decided with."""
        ttl = self.settings.decision_ttl_s()
        async with self.r.pipeline(transaction=False) as pipe:
            for q, d, line in zip(queries, decisions, shared, strict=True):
                await self.ownership.take(pipe, q.id, q.entry.id, ttl, {
                    "shared": line, **drawn(policy, d, p), "p": repr(p),
                    "labels": json.dumps(q.labels), "decided_at": repr(time.time()),
                    "explored": int(d.explored), **record_text(self.settings, q.text),
                })  # fmt: skip
            replies = await pipe.execute()
        held = [Holder.from_reply(reply) for reply in replies]
        for d, h in zip(decisions, held, strict=True):
            if h is None:
                self.m.explored.labels("explored" if d.explored else "exploited").inc()
        return held

    async def respond(
        self,
        policy: Policy,
        ready: list[tuple[Query, Decision, Answer]],
        p: float,
        retrying: bool = False,
    ) -> None:
        """Responses, the outcome into each decision record, and the acknowledgements, in
        one transaction. An answer from a redraw replaces the record's arm, probability and
        pmf with the redraw's: that is the draw the answering arm was chosen by, so its
        answer is learned like any other. ``retrying``: an earlier attempt's reply was lost,
        and the transaction may have run: the queries no longer pending were written then
        (the ack is in the same transaction)."""
        if retrying:
            ready = await self._still_pending(ready)
        now = time.time()
        spent: list[tuple[str, float]] = []
        async with self.r.pipeline(transaction=True) as pipe:
            for q, _, a in ready:
                d = a.decision
                arm = self.arms.arms[a.arm]
                c = a.completion
                label = (parse_label(c.text, q.labels) or "") if c else ""
                cost = arm.cost_usd(c.tokens_in, c.tokens_out) if c else 0.0
                fields: dict[Any, Any] = {
                    "id": q.id, "arm": arm.name, "answer": c.text if c else "", "label": label,
                    "prob": repr(d.prob), "explored": int(d.explored), "fallback": int(a.fell_back),
                    "cost_usd": repr(cost), "tokens_in": c.tokens_in if c else 0,
                    "tokens_out": c.tokens_out if c else 0, "latency_ms": round(a.latency_s * 1000, 1),
                    "model_version": d.model_version, "error": a.error, "p": repr(p),
                }  # fmt: skip
                if q.meta:
                    fields["meta"] = q.meta
                pipe.xadd(self.keys.responses, fields, maxlen=self.settings.responses_maxlen,
                          approximate=True)  # fmt: skip
                key = self.keys.decision(q.id)
                outcome: dict[Any, Any] = {"label": label, "answered_by": arm.name, "failed": int(c is None),
                                           "cost_usd": repr(cost), "response": json.dumps(fields)}  # fmt: skip
                if a.fell_back:
                    outcome.update(drawn(policy, d, p), redrawn=1)
                pipe.hset(key, mapping=outcome)
                pipe.zadd(self.keys.awaiting, {q.id: now + self.settings.reward_wait_s})
                pipe.xack(self.keys.queries, ROUTERS_GROUP, q.entry.id)
                if c is not None:
                    spent.append((arm.name, cost))
            if self.paced:  # in this transaction: counted exactly once, with the response
                record_spend(pipe, self.keys, sum(c for _, c in spent), len(spent), now)
            await pipe.execute()
        for name, cost in spent:
            self.m.routed.labels(name).inc()
            self.m.spend.labels(name).inc(cost)

    async def _still_pending(
        self, ready: list[tuple[Query, Decision, Answer]]
    ) -> list[tuple[Query, Decision, Answer]]:
        async with self.r.pipeline(transaction=False) as pipe:
            for q, _, _ in ready:
                pipe.xpending_range(self.keys.queries, ROUTERS_GROUP, min=q.entry.id,
                                    max=q.entry.id, count=1)  # fmt: skip
            replies = await pipe.execute()
        return [x for x, pending in zip(ready, replies, strict=True) if pending]
