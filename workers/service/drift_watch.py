"""The learner's drift watch: ``bandit.drift`` on the live labelled stream.

For every label the learner learns, ``DriftWatch.observe`` feeds the answering arm's
residual (the label's correctness minus the P̂ the decision record logged for that arm; in
paper mode, which logs no P̂, the correctness itself) to the arm's detector. On a detection
it logs a warning naming the arm with its mean residual before and after and the labels
seen, counts ``metallm_arm_drift_total{arm}``, sets ``metallm_arm_drift_boost{arm}`` to 1
until the arm has had ``boost_labels`` more labels, and calls ``on_drift(arm)`` (the hook
that raises the arm's exploration share). Default rewards are not labels and are never
observed.

The detectors' state (``DriftDetectors.to_state``: each arm's newest residuals, JSON, under
``{prefix}drift:state``) goes into the learner's commit transaction, like the off-policy
estimates, but at most every ``STATE_EVERY_S`` seconds: it is ~60 kB for 12 arms and takes a
few ms to write, and a residual more or less in a detector's history changes nothing that
must be exact. A restarted learner replays it into fresh detectors and carries on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from bandit.drift import DriftConfig, DriftDetectors
from workers.service.metrics import Metrics

log = logging.getLogger(__name__)
STATE_EVERY_S = 5.0  # the least time between two commits of the detectors' state


def drift_state_key(prefix: str) -> str:
    return f"{prefix}drift:state"


def residual_inputs(record: dict[str, str], correct: float) -> tuple[str, float, float]:
    """(arm name, observed correctness, predicted P̂) of one learned label's decision record.
    Paper mode logs no P̂: its detectors watch the correctness itself (predicted 0)."""
    arm = int(record["arm"])
    predicted = json.loads(record["predicted"])[arm] if "predicted" in record else 0.0
    return record.get("arm_name", str(arm)), float(correct), min(max(float(predicted), 0.0), 1.0)


class DriftHooks:
    """No drift watch: the learner's hooks, doing nothing."""

    async def ensure_restored(self) -> None:
        """Read the committed state, once, before the first label or commit."""

    def observe(self, record: dict[str, str], correct: float) -> None:
        """One learned label's decision record (never a default reward)."""

    def queue_commit(self, pipe: Any) -> None:
        """Add the state to the learner's commit transaction ``pipe``."""


DRIFT_OFF = DriftHooks()


class DriftWatch(DriftHooks):
    """Per-arm detectors of one learner (see the module doc). ``on_drift(arm)`` is called
    once per detection, after the warning and the metrics; it must not block.
    ``state_every_s``: the least time between two commits of the state."""

    def __init__(self, config: DriftConfig, metrics: Metrics, redis: aioredis.Redis, prefix: str,
                 on_drift: Callable[[str], None] | None = None,
                 state_every_s: float = STATE_EVERY_S) -> None:  # fmt: skip
        self.config, self.m, self.r = config, metrics, redis
        self.key = drift_state_key(prefix)
        self.on_drift = on_drift
        self.detectors = DriftDetectors(config)
        self._restored = False
        self._boosted: set[str] = set()  # arms whose boost gauge is 1
        self.skipped = 0  # labels whose decision record had no usable arm or P̂
        self.state_every_s = state_every_s
        self._state_at = float("-inf")  # monotonic time the state was last queued

    async def ensure_restored(self) -> None:
        if self._restored:
            return
        raw: Any = await self.r.get(self.key)
        if raw:
            self.detectors = DriftDetectors.from_state(json.loads(raw), self.config)
            self._boosted = set(self.detectors.boost_left())
            for arm in self._boosted:
                self.m.drift_boost.labels(arm).set(1)
            log.info("drift detectors restored for %d arms", len(self.detectors.detections()))
        self._restored = True

    def observe(self, record: dict[str, str], correct: float) -> None:
        try:
            arm, observed, predicted = residual_inputs(record, correct)
        except (KeyError, ValueError, TypeError, IndexError) as exc:  # a record no router wrote
            self.skipped += 1
            log.debug("decision record left out of the drift detectors: %r", exc)
            return
        event = self.detectors.update(arm, observed, predicted)
        if event is not None:
            log.warning("%s: its exploration share is raised to %g for its next %d labels",
                        event.describe(), self.config.boost_share, self.config.boost_labels)  # fmt: skip
            self.m.drift.labels(arm).inc()
            self.m.drift_boost.labels(arm).set(1)
            self._boosted.add(arm)
            if self.on_drift is not None:
                self.on_drift(arm)
        elif arm in self._boosted and arm not in self.detectors.boost_left():
            self._boosted.discard(arm)
            self.m.drift_boost.labels(arm).set(0)

    def queue_commit(self, pipe: Any) -> None:
        if time.monotonic() - self._state_at >= self.state_every_s:
            self._state_at = time.monotonic()
            pipe.set(self.key, json.dumps(self.detectors.to_state()))
