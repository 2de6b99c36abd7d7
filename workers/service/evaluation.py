"""Off-policy evaluation in the live service: the learner's side of ``bandit.ope``.

For every label the learner learns, ``LiveEvaluation.observe`` feeds the decision record
(its pmf, arm, each arm's predicted correctness and the call's cost in USD) to an
``OffPolicyEvaluator``, with the arm each shadow candidate picks, greedily, on the record's
context. The estimator state is committed in the learner's commit transaction with the
model, the learned markers and the acknowledgements (``queue_commit``), so a learner
restarted from that commit neither loses nor counts twice a label; ``restore`` reads it
back. Default rewards (no label came) are not outcomes and are never observed.

Shadow candidates and promotion requests live in Redis, written by ``metallm shadow``
(workers/cli/shadow.py) and picked up by the learner every ``SYNC_EVERY_S`` seconds:

- ``{prefix}shadows``: the set of candidate names; ``{prefix}shadow:{name}``: its policy
  snapshot (``Policy.to_bytes``);
- ``{prefix}promote``: JSON ``{"name", "force"}``, a candidate that ``metallm shadow
  promote`` found good enough; the learner makes it its model at its next commit, which
  also deletes the request and the candidate;
- ``{prefix}ope:state``: the estimator state, JSON (``OffPolicyEvaluator.to_state``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bandit.arms import ArmCatalogue
from bandit.errors import EstimatorError, MetalLMError, PolicyError
from bandit.ope import SCOPES, LoggedDecision, OffPolicyEvaluator, OPEConfig
from bandit.policy import Policy
from workers.service.metrics import Metrics
from workers.service.streams import text

log = logging.getLogger(__name__)
# The largest cost of one call, as a multiple of the dearest arm's fixed (typical) cost:
# costs are divided by it for the bounded-outcome intervals, and one above it is clipped
# (and counted). Token-priced calls vary around the typical cost: the dearest recorded call
# costs 1.6× the dearest arm's typical cost on overruling, 2.0× on arc. Twice that leaves
# room for longer prompts; a looser cap only widens the cost's confidence sequence.
COST_CAP_FACTOR = 4.0
SYNC_EVERY_S = 2.0  # how often the learner looks for new candidates and promotion requests
EXPORT_EVERY_S = 5.0  # how often the estimates go to the metrics (they cost ~ms to compute)
SHADOW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class OPEKeys:
    """Redis keys of the off-policy evaluation, under the service's prefix."""

    prefix: str

    @property
    def state(self) -> str:
        return f"{self.prefix}ope:state"

    @property
    def shadows(self) -> str:
        return f"{self.prefix}shadows"

    def shadow(self, name: str) -> str:
        return f"{self.prefix}shadow:{name}"

    @property
    def promote(self) -> str:
        return f"{self.prefix}promote"


def check_shadow_name(name: str) -> str:
    if not SHADOW_NAME.fullmatch(name):
        raise MetalLMError(
            f"shadow name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def arm_difference(expected: Sequence[str], got: Sequence[str]) -> str | None:
    """What differs between two arm lists (the order is the action index), or None."""
    if tuple(expected) == tuple(got):
        return None
    missing = [a for a in expected if a not in got]
    extra = [a for a in got if a not in expected]
    if missing or extra:
        return f"missing {missing or 'none'}, extra {extra or 'none'}"
    return f"same arms in another order: {list(got)} instead of {list(expected)}"


def ope_config(arms: ArmCatalogue) -> OPEConfig:
    """The estimators' settings for a catalogue (defaults of ``bandit.ope`` otherwise)."""
    cap = COST_CAP_FACTOR * float(arms.fixed_costs_usd().max())
    return OPEConfig(arms.names, cost_cap_usd=cap)


def load_candidate(data: bytes, arm_names: Sequence[str], name: str) -> Policy:
    """A candidate's policy from its snapshot bytes, refused when its arms differ."""
    policy = Policy.from_bytes(data)
    diff = arm_difference(arm_names, policy.arm_names)
    if diff:
        raise PolicyError(f"shadow candidate {name!r} has other arms than the config: {diff}")
    return policy


class Evaluation:
    """Off-policy evaluation switched off: the learner's hooks, doing nothing."""

    async def ensure_restored(self) -> None:
        """Read the committed state, once, before the first label or commit."""

    async def restore(self) -> None:
        """Read the committed state (the learner calls it before its first label or commit)."""

    async def promotion_due(self) -> bool:
        """Whether a promotion was asked for (looked up every few seconds)."""
        return False

    def promote(self, live: Policy) -> Policy | None:
        """The candidate asked for, as the learner's next model; None: none to take."""
        return None

    def observe(self, record: dict[str, str], correct: float) -> None:
        """One learned label's decision record (never a default reward)."""

    def queue_commit(self, pipe: Any) -> None:
        """Add the state to the learner's commit transaction ``pipe``."""

    def committed(self, metrics: Metrics) -> None:
        """The commit went through."""


OPE_OFF = Evaluation()  # stateless: one for every learner without off-policy evaluation


class LiveEvaluation(Evaluation):
    """The estimators and the shadow candidates of one learner (see the module doc).

    ``costs``: shape (n_arms,), the arms' normalised costs greedy-at-p prices.
    """

    def __init__(
        self, config: OPEConfig, costs: np.ndarray, redis: aioredis.Redis, prefix: str
    ) -> None:
        self.config, self.costs, self.r = config, np.asarray(costs, dtype=np.float64), redis
        self.keys = OPEKeys(prefix)
        self.ev = OffPolicyEvaluator(config, self.costs)
        self.candidates: dict[str, Policy] = {}
        self.restored = False
        self.skipped = 0  # labels learned whose record the estimators could not use
        self.promotion: tuple[str, bool] | None = None  # (name, forced) asked for
        self._promoted: str | None = None  # a candidate made the model, not committed yet
        self._drop_request = False  # a request for no usable candidate: deleted at the commit
        self._last_sync = 0.0
        self._last_export = 0.0
        self._exported: set[str] = set()

    # -- state --------------------------------------------------------------------------
    async def restore(self) -> None:
        """Continue from the committed state; start fresh (and say so) when there is none
        or it was made for another arm set. A state under other settings of the same arms
        (a price change moved the cost cap) is continued under its own settings."""
        raw: Any = await self.r.get(self.keys.state)
        self.ev = OffPolicyEvaluator(self.config, self.costs)
        self.candidates, self.restored = {}, True
        self._promoted, self._drop_request = None, False
        if raw is None:
            log.info("off-policy evaluation starts fresh: no saved state")
            return
        try:
            state = json.loads(raw)
            saved = OPEConfig.from_json(state.get("config") if isinstance(state, dict) else None)
            diff = arm_difference(self.config.arm_names, saved.arm_names)
            if diff:
                raise EstimatorError(f"it was made for other arms ({diff})")
            ev = OffPolicyEvaluator.from_state(state)
            ev.set_costs(self.costs)
        except (ValueError, TypeError, KeyError) as exc:  # EstimatorError is a ValueError
            log.warning("off-policy evaluation starts fresh: the saved state is refused: %s", exc)
            return
        self.ev = ev
        log.info("off-policy evaluation continues from %d labels", ev.labels)
        await self.sync(force=True)

    async def ensure_restored(self) -> None:
        if not self.restored:
            await self.restore()

    def queue_commit(self, pipe: Any) -> None:
        """Queue the state (and a promotion done since the last commit) in the learner's
        commit transaction ``pipe``."""
        pipe.set(self.keys.state, json.dumps(self.ev.to_state()))
        if self._promoted is not None:
            pipe.delete(self.keys.promote, self.keys.shadow(self._promoted))
            pipe.srem(self.keys.shadows, self._promoted)
        elif self._drop_request:
            pipe.delete(self.keys.promote)

    def committed(self, metrics: Metrics) -> None:
        """The commit that ``queue_commit`` joined went through: export the estimates."""
        if self._promoted is not None:
            log.info("promotion of shadow candidate %r committed", self._promoted)
            self._promoted = None
        self._drop_request = False
        self.export(metrics)

    # -- candidates ---------------------------------------------------------------------
    async def sync(self, force: bool = False) -> None:
        """Follow the candidates in Redis and read a promotion request; at most every
        ``SYNC_EVERY_S`` unless ``force``."""
        if not force and time.monotonic() - self._last_sync < SYNC_EVERY_S:
            return
        self._last_sync = time.monotonic()
        names = {text(n) for n in await self.r.smembers(self.keys.shadows)}
        names.discard(self._promoted or "")
        for name in [n for n in self.ev.shadows if n not in names]:
            self.ev.remove_shadow(name)
            self.candidates.pop(name, None)
            log.info("shadow candidate %r removed", name)
        for name in sorted(names - set(self.candidates)):
            data: Any = await self.r.get(self.keys.shadow(name))
            try:
                if not data:
                    raise PolicyError("its snapshot is missing")
                policy = load_candidate(bytes(data), self.config.arm_names, name)
            except MetalLMError as exc:
                log.warning("shadow candidate %r ignored: %s", name, exc)
                continue
            self.candidates[name] = policy
            if name not in self.ev.shadows:  # a restored state may hold it already
                self.ev.add_shadow(name)
                log.info("shadow candidate %r evaluated from the next label on", name)
        for name in [n for n in self.ev.shadows if n not in self.candidates]:
            self.ev.remove_shadow(name)  # restored, but its snapshot is unusable
        raw: Any = await self.r.get(self.keys.promote)
        self.promotion = None
        if raw is not None and self._promoted is None:
            try:
                req = json.loads(raw)
                self.promotion = (str(req["name"]), bool(req.get("force", False)))
            except (ValueError, TypeError, KeyError):
                log.warning("promotion request %r is not {name, force} JSON: ignored", raw)

    async def promotion_due(self) -> bool:
        await self.sync()
        return self.promotion is not None

    def promote(self, live: Policy) -> Policy | None:
        """The candidate asked for, taken out of the shadows, as the learner's next model:
        the online learning rate, the live p when both decide at decision time (decoupled),
        and a version above the live one so that the routers hot-reload it. The next
        commit deletes the request and the candidate from Redis."""
        if self.promotion is None:
            return None
        name, forced = self.promotion
        self.promotion = None
        candidate = self.candidates.pop(name, None)
        if candidate is None:
            log.warning("promotion of %r refused: no such usable shadow candidate", name)
            self._drop_request = True
            return None
        self.ev.remove_shadow(name)
        self._promoted = name
        config = candidate.config.for_online()
        if config.mode == live.config.mode == "decoupled":
            config = config.replace(p=live.config.p)
        model = candidate if config == candidate.config else candidate.with_config(config)
        model.updates = max(model.updates, live.version + 1)
        log.warning("shadow candidate %r promoted%s: it is model version %d", name,
                    " (forced past the estimates)" if forced else "", model.version)  # fmt: skip
        return model

    # -- one label ----------------------------------------------------------------------
    def observe(self, record: dict[str, str], correct: float) -> None:
        """Feed one learned label's decision record (``pmf``, ``arm``, ``cost_usd``,
        ``predicted`` when the router logged it, ``p``, ``shared``)."""
        try:
            predicted = json.loads(record["predicted"]) if record.get("predicted") else None
            decision = LoggedDecision(
                np.asarray(json.loads(record["pmf"]), dtype=np.float64),
                int(record["arm"]),
                float(correct),
                float(record.get("cost_usd") or 0.0),
                None if predicted is None else np.asarray(predicted, dtype=np.float64),
            )
            p = float(record.get("p") or 0.0)
            shadows = {
                name: policy.decide_lines(
                    [record["shared"]], p=p if policy.config.mode == "decoupled" else None,
                    greedy=True,
                )[0].arm
                for name, policy in self.candidates.items()
            }  # fmt: skip
            self.ev.update(decision, shadows)
        except (KeyError, ValueError, TypeError) as exc:  # EstimatorError, PolicyError too
            self.skipped += 1
            log.debug("decision record left out of the estimates: %r", exc)

    # -- metrics ------------------------------------------------------------------------
    def export(self, metrics: Metrics, force: bool = False) -> None:
        """Every target's estimate and Gaussian bounds, both scopes, as gauges; at most
        every ``EXPORT_EVERY_S`` unless ``force``."""
        if not force and time.monotonic() - self._last_export < EXPORT_EVERY_S:
            return
        self._last_export = time.monotonic()
        policies = set(self.ev.policies)
        for gone in self._exported - policies:
            metrics.forget_ope(gone)
        self._exported = policies
        for scope in SCOPES:
            for est in self.ev.estimates(scope):
                metrics.set_ope(est.policy, scope, est.acc, est.cost_per_10k)
