"""Running off-policy estimates of one quantity for one target policy, built on the
``vw-estimators`` library (import name ``estimators``), with a JSON-able state.

A ``Tally`` takes one importance-weighted example per labelled decision — the logging
probability p_log, the target policy's probability p_pred of the logged arm, and the
outcome r ∈ [0, 1] — and holds, cumulatively and over a recent window:

- SNIPS (the point estimate): Σ w·r / Σ w with w = p_pred / p_log;
- IPS: Σ w·r / n;
- the Gaussian interval of IPS (library), widened to contain SNIPS when the
  normalisation Σ w / n ≠ 1 moves SNIPS outside it (it only ever widens);
- the Clopper-Pearson interval of IPS (library: CP on Σ w·r / max w successes out of
  n / max w trials). It takes the number of heavy-weight draws as fixed where it is
  random, so it undercovers an accuracy near 1 carried by a few rarely drawn labels
  (67 % of overruling's targets: scripts/ope_coverage.py); for cost it held (98.6 %);
- cumulatively only, the library's betting confidence sequence (Waudby-Smith and Ramdas),
  valid at every n at once, so it may be watched continuously; off by ``with_cs=False``.

The window is the last ``blocks`` blocks of ``block_size`` labels (the newest one partly
filled), so it holds between (blocks − 1)·block_size + 1 and blocks·block_size labels. It
is a sum of blocks, not an exponential decay, because the library's intervals count
examples: Gaussian and Clopper-Pearson need an unweighted n, which a decayed sum does not
have, while blocks of plain sums combine exactly with the library's own ``+``. A label
leaves the window a known number of labels after it came, and the state stays small
(blocks × a few floats). The confidence sequence has no ``+``, so it is cumulative only.

Outcomes must already be scaled to [0, 1] (``bandit.ope`` divides costs by a cap).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from estimators.bandits import clopper_pearson, cs, gaussian, ips, snips
from estimators.math import IncrementalFsum

from bandit.errors import EstimatorError

# The attributes of each library object that hold its running sums, in state order.
# Checked on restore, so a library version that renames them fails loudly.
_FIELDS: dict[type, tuple[str, ...]] = {
    snips.Estimator: ("weighted_examples_count", "weighted_reward"),
    ips.Estimator: ("examples_count", "weighted_reward"),
    gaussian.Interval: ("examples_count", "weighted_reward", "weighted_reward_sq"),
    clopper_pearson.Interval: ("examples_count", "weighted_reward", "max_weight"),
}
_CS_SUMS = (
    "sumwsqrsq", "sumwsqr", "sumwsq", "sumwr", "sumw", "sumwrxhatlow", "sumwxhatlow",
    "sumxhatlowsq", "sumwrxhathigh", "sumwxhathigh", "sumxhathighsq",
)  # fmt: skip

Bounds = tuple[float | None, float | None]


def _dump(obj: Any) -> list[float]:
    return [float(getattr(obj, name)) for name in _FIELDS[type(obj)]]


def _load(cls: type, values: Any) -> Any:
    obj = cls()
    names = _FIELDS[cls]
    if not isinstance(values, list) or len(values) != len(names):
        raise EstimatorError(
            f"{cls.__module__}: state {values!r} must be a list of {len(names)} numbers "
            f"({', '.join(names)})"
        )
    for name, value in zip(names, values, strict=True):
        if not hasattr(obj, name):
            raise EstimatorError(
                f"vw-estimators' {cls.__module__} has no attribute {name!r}: this state was "
                "written with another version of the library (see pyproject.toml's pin)"
            )
        setattr(obj, name, float(value))
    return obj


def _dump_cs(interval: cs.Interval) -> dict[str, Any]:
    impl = interval._impl  # the library keeps its sums there; no public accessor
    return {"t": impl.t, **{name: list(getattr(impl, name).partials) for name in _CS_SUMS}}


def _load_cs(data: Any) -> cs.Interval:
    interval = cs.Interval()
    impl = interval._impl
    if not isinstance(data, dict) or set(data) != {"t", *_CS_SUMS}:
        raise EstimatorError(
            f"confidence-sequence state must hold t and {', '.join(_CS_SUMS)}; got "
            f"{sorted(data) if isinstance(data, dict) else data!r}"
        )
    impl.t = data["t"]
    for name in _CS_SUMS:
        if not isinstance(getattr(impl, name, None), IncrementalFsum):
            raise EstimatorError(
                f"vw-estimators' cs interval has no running sum {name!r}: this state was "
                "written with another version of the library"
            )
        total = IncrementalFsum()
        total.partials = [float(x) for x in data[name]]
        setattr(impl, name, total)
    return interval


class _Sums:
    """SNIPS, IPS and the Gaussian and Clopper-Pearson intervals over one span of labels;
    spans add up with the library's ``+``."""

    __slots__ = ("cp", "gauss", "ips", "n", "snips")

    def __init__(self) -> None:
        self.n = 0
        self.snips = snips.Estimator()
        self.ips = ips.Estimator()
        self.gauss = gaussian.Interval()
        self.cp = clopper_pearson.Interval()

    def add(self, p_log: float, r: float, p_pred: float) -> None:
        self.n += 1
        self.snips.add_example(p_log, r, p_pred)
        self.ips.add_example(p_log, r, p_pred)
        self.gauss.add_example(p_log, r, p_pred)
        self.cp.add_example(p_log, r, p_pred)

    def __add__(self, other: _Sums) -> _Sums:
        out = _Sums()
        out.n = self.n + other.n
        out.snips = self.snips + other.snips
        out.ips = self.ips + other.ips
        out.gauss = self.gauss + other.gauss
        out.cp = self.cp + other.cp
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "snips": _dump(self.snips),
            "ips": _dump(self.ips),
            "gaussian": _dump(self.gauss),
            "clopper_pearson": _dump(self.cp),
        }

    @classmethod
    def from_state(cls, data: Any) -> _Sums:
        if not isinstance(data, dict):
            raise EstimatorError(f"estimator sums must be a dict, got {data!r}")
        out = cls()
        out.n = int(data.get("n", 0))
        out.snips = _load(snips.Estimator, data.get("snips"))
        out.ips = _load(ips.Estimator, data.get("ips"))
        out.gauss = _load(gaussian.Interval, data.get("gaussian"))
        out.cp = _load(clopper_pearson.Interval, data.get("clopper_pearson"))
        return out


class Reading:
    """What a Tally says over one span, on the [0, 1] scale it was fed.

    ``value``: SNIPS; ``ips``: IPS; ``gaussian``, ``clopper_pearson``, ``cs``: (lo, hi) at
    level 1 − alpha, clipped to [0, 1] (None where undefined: too few labels, or
    Clopper-Pearson once Σ w·r passes n + max w); ``cs`` is None where not kept.
    ``n``: labels in the span.
    """

    __slots__ = ("clopper_pearson", "cs", "gaussian", "ips", "n", "value")

    def __init__(self, sums: _Sums, alpha: float, cs_bounds: Bounds | None) -> None:
        self.n = sums.n
        self.value: float | None = sums.snips.get()
        self.ips: float | None = sums.ips.get()
        lo, hi = sums.gauss.get(alpha)
        if lo is not None and hi is not None and self.value is not None:
            lo, hi = min(lo, self.value), max(hi, self.value)
        self.gaussian = _clip((lo, hi))
        cp_lo, cp_hi = sums.cp.get(alpha)
        self.clopper_pearson = _clip((cp_lo, cp_hi))
        self.cs = None if cs_bounds is None else _clip(cs_bounds)

    def scaled(self, factor: float) -> dict[str, Any]:
        """This reading in the caller's units (every figure times ``factor``)."""

        def mul(x: float | None) -> float | None:
            return None if x is None else x * factor

        def pair(b: Bounds | None) -> list[float | None] | None:
            return None if b is None else [mul(b[0]), mul(b[1])]

        return {
            "n": self.n,
            "value": mul(self.value),
            "ips": mul(self.ips),
            "gaussian": pair(self.gaussian),
            "clopper_pearson": pair(self.clopper_pearson),
            "cs": pair(self.cs),
        }


def _clip(bounds: Bounds) -> Bounds:
    """Bounds within [0, 1]; NaN (the library's Clopper-Pearson when Σ w·r > n) is None."""

    def one(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else min(max(float(x), 0.0), 1.0)

    return one(bounds[0]), one(bounds[1])


class Tally:
    """Off-policy estimates of one quantity in [0, 1] under one target policy: cumulative
    and over the last ``blocks`` blocks of ``block_size`` labels (see the module doc)."""

    def __init__(self, block_size: int, blocks: int, *, with_cs: bool = True) -> None:
        if block_size < 1 or blocks < 1:
            raise EstimatorError(f"window of {blocks} blocks of {block_size} labels: both ≥ 1")
        self.block_size, self.blocks = block_size, blocks
        self.total = _Sums()
        self.window: deque[_Sums] = deque([_Sums()], maxlen=blocks)
        self.cs: cs.Interval | None = cs.Interval() if with_cs else None

    def add(self, p_log: float, r: float, p_pred: float) -> None:
        """One labelled decision: logged probability p_log ∈ (0, 1] of the logged arm,
        the target's probability p_pred ∈ [0, 1] of it, the arm's outcome r ∈ [0, 1]."""
        if self.window[-1].n >= self.block_size:
            self.window.append(_Sums())  # maxlen drops the oldest block
        self.total.add(p_log, r, p_pred)
        self.window[-1].add(p_log, r, p_pred)
        if self.cs is not None:
            self.cs.add_example(p_log, r, p_pred)

    def cumulative(self, alpha: float) -> Reading:
        cs_bounds: Bounds | None = None
        if self.cs is not None:
            lo, hi = self.cs.get(alpha)
            cs_bounds = (lo, hi)
        return Reading(self.total, alpha, cs_bounds)

    def recent(self, alpha: float) -> Reading:
        span = self.window[0]
        for block in list(self.window)[1:]:
            span = span + block
        return Reading(span, alpha, None)

    def to_state(self) -> dict[str, Any]:
        return {
            "total": self.total.to_state(),
            "window": [b.to_state() for b in self.window],
            "cs": None if self.cs is None else _dump_cs(self.cs),
        }

    @classmethod
    def from_state(cls, data: Any, block_size: int, blocks: int) -> Tally:
        if not isinstance(data, dict) or not {"total", "window", "cs"} <= set(data):
            raise EstimatorError(f"tally state must hold total, window and cs; got {data!r}")
        window = data["window"]
        if not isinstance(window, list) or not 1 <= len(window) <= blocks:
            raise EstimatorError(
                f"tally window of {len(window) if isinstance(window, list) else window!r} "
                f"blocks; this estimator keeps 1 to {blocks}"
            )
        out = cls(block_size, blocks, with_cs=data["cs"] is not None)
        out.total = _Sums.from_state(data["total"])
        out.window = deque((_Sums.from_state(b) for b in window), maxlen=blocks)
        if data["cs"] is not None:
            out.cs = _load_cs(data["cs"])
        return out
