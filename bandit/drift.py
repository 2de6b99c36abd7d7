"""Per-arm drift detection on the correctness residuals of the labelled stream.

For every label learned, the arm that answered gets one residual r = a − P̂(a = 1 | x):
the observed correctness minus the correctness the policy predicted for that arm on that
query when it decided (decoupled mode logs P̂ in the decision record). While an arm keeps
its quality the residuals hover around a constant (0 for a calibrated model), whatever mix
of queries the router sends it; when a provider silently degrades a model (or improves
it) the residuals shift. A change detector from ``river`` watches each arm's residuals:
ADWIN (adaptive windowing, Bifet & Gavaldà 2007) or Page-Hinkley (a two-sided CUSUM).

A detection is reported only once the arm has ``min_labels`` residuals since its detector
last started (the first residuals after a start or a reset are the noisiest), and then the
arm's detector starts again empty, so one change is reported once (the residuals kept, at most
``HISTORY``, are split where a two-sample statistic says the change was, for the mean residual
before and after it). The reaction (a raised
exploration share for ``boost_labels`` of that arm's labels, so it is re-learned) is the
caller's: this module only says which arm changed, by how much, and how long its boost
lasts. Pure logic; ``river`` is imported when the first detector is built (it takes ~1 s).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandit.errors import ConfigError

DETECTORS = ("adwin", "page_hinkley")
# Defaults chosen by scripts/bench_drift.py (README, "Drift"): on overruling (20 seeds),
# Page-Hinkley at δ = 0.05, λ = 10 found gpt-4 turned into `medium` in 22 of its labels on
# average, with no false alarm in 138k labels of the unchanged stream after a warm start
# (0.46 per 10k from a cold start); ADWIN at δ = 0.002 took 25 labels, missed more and
# raised 0.69 per 10k from a cold start.
DEFAULT_DETECTOR = "page_hinkley"
DEFAULT_ADWIN_DELTA = 0.002  # ADWIN's confidence (river's default): smaller = fewer false alarms
DEFAULT_PH_DELTA = 0.05  # Page-Hinkley's tolerated change of the residual mean
DEFAULT_PH_THRESHOLD = 10.0  # Page-Hinkley's λ, in residual units summed over labels
DEFAULT_MIN_LABELS = 30  # an arm's labels since its detector started before it may fire
DEFAULT_BOOST_SHARE = 0.02  # the drifted arm's least probability while boosted
DEFAULT_BOOST_LABELS = 100  # the boost lasts this many labels of the drifted arm
# Residuals kept per arm, newest last: what the state carries across a learner restart
# (replayed into a fresh detector) and what "before" and "after" means are taken over.
HISTORY = 1000
SPLIT_MIN_SIDE = 5  # residuals on each side of the split a detection's means are taken on
# ADWIN looks for a change after every residual (river's default, 32, delays a detection
# by up to 31 labels; checking each one costs ~1 µs).
ADWIN_CLOCK = 1


@dataclass(frozen=True)
class DriftConfig:
    """The ``[drift]`` table of a config. ``detector``: one of ``DETECTORS``; ``delta``:
    ADWIN's confidence δ in (0, 1); ``ph_delta`` and ``ph_threshold``: Page-Hinkley's
    tolerated change and its λ; ``min_labels``: labels of an arm, since its detector
    started, before a detection is reported; ``boost_share``: the least probability the
    drifted arm is then drawn with (in [0, 1)); ``boost_labels``: for how many of its labels.
    ``enabled = false`` switches the detectors off."""

    enabled: bool = True
    detector: str = DEFAULT_DETECTOR
    delta: float = DEFAULT_ADWIN_DELTA
    ph_delta: float = DEFAULT_PH_DELTA
    ph_threshold: float = DEFAULT_PH_THRESHOLD
    min_labels: int = DEFAULT_MIN_LABELS
    boost_share: float = DEFAULT_BOOST_SHARE
    boost_labels: int = DEFAULT_BOOST_LABELS

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(
                f"[drift] detector = {self.detector!r} is not one of: {', '.join(DETECTORS)}"
            )
        checks = (
            ("delta", 0 < self.delta < 1, "in (0, 1)"),
            ("ph_delta", self.ph_delta >= 0, "≥ 0"),
            ("ph_threshold", self.ph_threshold > 0, "> 0"),
            ("min_labels", self.min_labels >= 1, "an integer ≥ 1"),
            ("boost_share", 0 <= self.boost_share < 1, "in [0, 1)"),
            ("boost_labels", self.boost_labels >= 0, "an integer ≥ 0"),
        )
        for name, ok, allowed in checks:
            if not ok or isinstance(getattr(self, name), bool):
                raise ConfigError(f"[drift] {name} = {getattr(self, name)!r} must be {allowed}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DriftConfig:
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(
                f"[drift]: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        return cls(**data)

    def make_detector(self) -> Any:
        """A fresh ``river.drift`` detector with these parameters."""
        from river import drift  # ~1 s to import: only where detectors are used

        if self.detector == "adwin":
            return drift.ADWIN(delta=self.delta, clock=ADWIN_CLOCK)
        return drift.PageHinkley(min_instances=self.min_labels, delta=self.ph_delta,
                                 threshold=self.ph_threshold, mode="both")  # fmt: skip


@dataclass(frozen=True)
class DriftEvent:
    """One detection: ``arm`` changed; ``labels``: its residuals since its detector started;
    ``before`` / ``after``: the mean residual before the change and over the ``after_labels``
    newest ones (negative after: the arm is now right less often than predicted)."""

    arm: str
    labels: int
    before: float
    after: float
    after_labels: int

    def describe(self) -> str:
        return (f"arm {self.arm!r} drifted: mean residual (observed − predicted correctness) "
                f"{self.before:+.3f} before, {self.after:+.3f} over its last {self.after_labels} "
                f"labels ({self.labels} labels seen)")  # fmt: skip


@dataclass
class _ArmState:
    detector: Any
    residuals: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    labels: int = 0  # since the detector started
    boost_left: int = 0  # labels of this arm its boost still lasts
    detections: int = 0


class DriftDetectors:
    """One detector per arm, keyed by arm name (an arm added later gets one at its first
    label; a retired arm's stays until ``forget``)."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self._arms: dict[str, _ArmState] = {}

    def _arm(self, arm: str) -> _ArmState:
        state = self._arms.get(arm)
        if state is None:
            state = self._arms[arm] = _ArmState(self.config.make_detector())
        return state

    def update(self, arm: str, observed: float, predicted: float) -> DriftEvent | None:
        """One label of ``arm``: correctness ``observed`` ∈ [0, 1] where ``predicted``
        (P̂, in [0, 1]) was expected. Returns the detection it completes, if any."""
        if not self.config.enabled:
            return None
        s = self._arm(arm)
        s.boost_left = max(s.boost_left - 1, 0)
        return self._feed(arm, s, float(observed) - float(predicted), report=True)

    def _feed(self, arm: str, s: _ArmState, residual: float, report: bool) -> DriftEvent | None:
        s.residuals.append(residual)
        s.labels += 1
        s.detector.update(residual)
        if not s.detector.drift_detected or s.labels < self.config.min_labels or not report:
            return None
        event = self._event(arm, s)
        s.detector = self.config.make_detector()
        s.residuals.clear()
        s.labels = 0
        s.boost_left = self.config.boost_labels
        s.detections += 1
        return event

    def _event(self, arm: str, s: _ArmState) -> DriftEvent:
        r = np.asarray(s.residuals, dtype=np.float64)
        # Where the change was (the detectors do not say): the split k of the n residuals
        # kept that maximises the standardised two-sample statistic
        # (S_k − (k/n)·S_n)² / (k·(n − k)/n), i.e. k(n−k)/n · (mean before − mean after)²,
        # with at least SPLIT_MIN_SIDE residuals on each side.
        n, m = len(r), SPLIT_MIN_SIDE
        if n < 2 * m:
            return DriftEvent(arm, s.labels, float("nan"), float(r.mean()), n)
        c, ks = np.cumsum(r), np.arange(m, n - m + 1)
        k = int(ks[np.argmax((c[ks - 1] - ks / n * c[-1]) ** 2 / (ks * (n - ks) / n))])
        return DriftEvent(arm, s.labels, float(r[:k].mean()), float(r[k:].mean()), n - k)

    def boost_left(self) -> dict[str, int]:
        """Arms still boosted after a detection, and for how many more of their labels."""
        return {a: s.boost_left for a, s in self._arms.items() if s.boost_left > 0}

    def detections(self) -> dict[str, int]:
        return {a: s.detections for a, s in self._arms.items()}

    def forget(self, arm: str) -> None:
        self._arms.pop(arm, None)

    # -- state across restarts -----------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-able: per arm, its newest residuals (at most ``HISTORY``, rounded to 1e-4),
        its label count since its detector started, its boost left and detections."""
        return {
            a: {
                "residuals": np.round(np.fromiter(s.residuals, np.float64), 4).tolist(),
                "labels": s.labels,
                "boost_left": s.boost_left,
                "detections": s.detections,
            }
            for a, s in self._arms.items()
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], config: DriftConfig | None = None
    ) -> DriftDetectors:
        """Detectors rebuilt from ``to_state``: each arm's residuals are replayed into a
        fresh detector (a detection during the replay is not reported: it was not when they
        came). An arm with more labels than ``HISTORY`` restarts from its newest ones."""
        out = cls(config)
        for arm, st in state.items():
            s = out._arm(arm)
            for x in st["residuals"]:
                out._feed(arm, s, float(x), report=False)
            s.labels = int(st["labels"])
            s.boost_left, s.detections = int(st["boost_left"]), int(st["detections"])
        return out
