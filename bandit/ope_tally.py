"""Running off-policy estimates of a few quantities for many target policies at once, kept
as plain sums in numpy arrays and read through the ``vw-estimators`` library (import name
``estimators``), with a JSON-able state.

Each labelled decision gives, for every target policy, one importance-weighted example:
the logging probability p_log, the target's probability p_pred of the logged arm (shape
(n_targets,)), so w = p_pred / p_log, and one outcome r ∈ [0, 1] per quantity. Every
estimator below is a function of five running sums per target, span and quantity — the
count n, Σ w, Σ w·r, Σ (w·r)² and max w — exactly the attributes the library's
``add_example`` accumulates. ``Tallies.add`` updates them for all targets with a handful
of numpy operations; a read builds the library's objects from them (``_Span.library``:
their attributes set, then their ``get()``), so the estimates and intervals are still the
maintained library's:

- SNIPS (the point estimate): Σ w·r / Σ w;
- IPS: Σ w·r / n;
- the Gaussian interval of IPS (library), widened to contain SNIPS when the
  normalisation Σ w / n ≠ 1 moves SNIPS outside it (it only ever widens);
- the Clopper-Pearson interval of IPS (library: CP on Σ w·r / max w successes out of
  n / max w trials). It takes the number of heavy-weight draws as fixed where it is
  random, so it undercovers an accuracy near 1 carried by a few rarely drawn labels
  (67 % of overruling's targets: scripts/ope_coverage.py); for cost it held (98.6 %);
- cumulatively only, the library's betting confidence sequence (Waudby-Smith and Ramdas),
  valid at every n at once, so it may be watched continuously. It is a martingale, not a
  sum, so it stays one ``cs.Interval`` per target and quantity, fed per example, and only
  for the targets that keep one (``add_target(with_cs=True)``).

The window is the last ``blocks`` blocks of ``block_size`` labels of each target (the
newest one partly filled), so it holds between (blocks − 1)·block_size + 1 and
blocks·block_size labels. It is a sum of blocks, not an exponential decay, because the
library's intervals count examples: Gaussian and Clopper-Pearson need an unweighted n,
which a decayed sum does not have, while blocks of plain sums add up exactly. A label
leaves the window a known number of labels after it came, and the state stays small
(blocks × a few floats). A target's blocks follow its own labels: one that skips a
decision (a greedy target without predictions, a shadow added late) fills them later.

Outcomes must already be scaled to [0, 1] (``bandit.ope`` divides costs by a cap).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from estimators.bandits import clopper_pearson, cs, gaussian, ips, snips
from estimators.math import IncrementalFsum

from bandit.errors import EstimatorError

# The attributes of each library object that hold its running sums, in state order.
# Checked whenever one is built, so a library version that renames them fails loudly.
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


def _load(cls: type, values: Any) -> Any:
    """A library object holding ``values`` (its ``_FIELDS``, in order) as its sums."""
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


class _Span:
    """The five sums of one target and quantity over one span of labels: n, Σ w, Σ w·r,
    Σ (w·r)², max w (w = p_pred / p_log)."""

    __slots__ = ("max_w", "n", "sum_w", "sum_wr", "sum_wr2")

    def __init__(self, n: int, sum_w: float, sum_wr: float, sum_wr2: float, max_w: float):
        self.n, self.sum_w, self.sum_wr, self.sum_wr2, self.max_w = n, sum_w, sum_wr, sum_wr2, max_w

    def library(self) -> tuple[Any, Any, Any, Any]:
        """The library's SNIPS, IPS, Gaussian and Clopper-Pearson objects holding these
        sums, as if each had been fed the span's examples by ``add_example``."""
        n = self.n
        return (
            _load(snips.Estimator, [self.sum_w, self.sum_wr]),
            _load(ips.Estimator, [n, self.sum_wr]),
            _load(gaussian.Interval, [n, self.sum_wr, self.sum_wr2]),
            _load(clopper_pearson.Interval, [n, self.sum_wr, self.max_w]),
        )

    def to_state(self) -> dict[str, Any]:
        """The library objects' sums, as ``_FIELDS`` orders them."""
        return {
            "n": self.n,
            "snips": [self.sum_w, self.sum_wr],
            "ips": [float(self.n), self.sum_wr],
            "gaussian": [float(self.n), self.sum_wr, self.sum_wr2],
            "clopper_pearson": [float(self.n), self.sum_wr, self.max_w],
        }

    @classmethod
    def from_state(cls, data: Any) -> _Span:
        if not isinstance(data, dict):
            raise EstimatorError(f"estimator sums must be a dict, got {data!r}")
        snips_, _, gauss, cp = (
            _load(snips.Estimator, data.get("snips")),
            _load(ips.Estimator, data.get("ips")),
            _load(gaussian.Interval, data.get("gaussian")),
            _load(clopper_pearson.Interval, data.get("clopper_pearson")),
        )
        return cls(
            int(data.get("n", 0)),
            snips_.weighted_examples_count,
            snips_.weighted_reward,
            gauss.weighted_reward_sq,
            cp.max_weight,
        )


class Reading:
    """What the estimators say of one target and quantity over one span, on the [0, 1]
    scale they were fed.

    ``value``: SNIPS; ``ips``: IPS; ``gaussian``, ``clopper_pearson``, ``cs``: (lo, hi) at
    level 1 − alpha, clipped to [0, 1] (None where undefined: too few labels, or
    Clopper-Pearson once Σ w·r passes n + max w); ``cs`` is None where not kept.
    ``n``: labels in the span.
    """

    __slots__ = ("clopper_pearson", "cs", "gaussian", "ips", "n", "value")

    def __init__(self, span: _Span, alpha: float, cs_bounds: Bounds | None) -> None:
        est_snips, est_ips, gauss, cp = span.library()
        self.n = span.n
        self.value: float | None = est_snips.get()
        self.ips: float | None = est_ips.get()
        lo, hi = gauss.get(alpha)
        if lo is not None and hi is not None and self.value is not None:
            lo, hi = min(lo, self.value), max(hi, self.value)
        self.gaussian = _clip((lo, hi))
        cp_lo, cp_hi = cp.get(alpha)
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


class Selection:
    """Which targets one ``Tallies.add`` feeds: their columns (all of them: ``None``),
    among them those that keep a confidence sequence, and the buffer their sums' increments
    are computed in, shape (rows − 1, n_fed), row 0 all ones (the count). Made by
    ``Tallies.select``; valid until a target is added or removed."""

    __slots__ = ("buf", "cols", "cs_cols")

    def __init__(self, cols: np.ndarray | None, cs_cols: list[int], buf: np.ndarray) -> None:
        self.cols, self.cs_cols, self.buf = cols, cs_cols, buf


class Tallies:
    """Off-policy estimates of ``quantities`` outcomes in [0, 1] under each of a growing
    set of target policies (the columns), cumulative and over the last ``blocks`` blocks
    of ``block_size`` labels (see the module doc).

    The sums of a span are an array of shape (3 + 2·quantities, n_targets): row 0 n, row
    1 Σ w, then Σ w·r and Σ (w·r)² per quantity, the last row max w. ``sums``, shape
    (2, rows, n_targets), holds two: ``total`` and the newest block ``current``, so that
    one operation updates both; each target's completed blocks, oldest first, are
    columns of such an array in ``done[target]``.
    """

    def __init__(self, block_size: int, blocks: int, quantities: int) -> None:
        if block_size < 1 or blocks < 1 or quantities < 1:
            raise EstimatorError(
                f"window of {blocks} blocks of {block_size} labels, {quantities} quantities: "
                "each ≥ 1"
            )
        self.block_size, self.blocks, self.quantities = block_size, blocks, quantities
        self.rows = 3 + 2 * quantities
        self.sums = np.zeros((2, self.rows, 0))
        self.done: list[deque[np.ndarray]] = []
        # per target and quantity; None for the targets that keep no confidence sequence
        self.cs: list[list[cs.Interval] | None] = []
        # an upper bound on the labels in any target's newest block: while it is below
        # block_size, no block can be full and ``add`` need not look
        self._fullest = 0

    @property
    def n_targets(self) -> int:
        return self.sums.shape[2]

    @property
    def total(self) -> np.ndarray:
        """The cumulative sums, shape (rows, n_targets)."""
        return self.sums[0]

    @property
    def current(self) -> np.ndarray:
        """The newest block's sums, shape (rows, n_targets)."""
        return self.sums[1]

    def add_target(self, *, with_cs: bool) -> int:
        """A new target with no labels yet; its column (the last)."""
        self.sums = np.concatenate([self.sums, np.zeros((2, self.rows, 1))], axis=2)
        self.done.append(deque(maxlen=self.blocks - 1))
        self.cs.append([cs.Interval() for _ in range(self.quantities)] if with_cs else None)
        return self.n_targets - 1

    def remove_target(self, col: int) -> None:
        """Forget target ``col``; the later columns move down by one."""
        self.sums = np.delete(self.sums, col, axis=2)
        del self.done[col]
        del self.cs[col]

    def select(self, cols: np.ndarray | None = None) -> Selection:
        """The targets ``cols`` (indices, increasing; None: every target) for ``add``."""
        fed = range(self.n_targets) if cols is None else cols.tolist()
        picked = None if cols is None else np.asarray(cols, dtype=np.intp)
        buf = np.empty((self.rows - 1, len(fed)))
        buf[0] = 1.0
        return Selection(picked, [int(t) for t in fed if self.cs[t] is not None], buf)

    def add(
        self, p_log: float, outcomes: np.ndarray, p_pred: np.ndarray, selection: Selection
    ) -> None:
        """One labelled decision: logged probability p_log ∈ (0, 1] of the logged arm;
        ``outcomes``, shape (quantities, 1), each in [0, 1]; ``p_pred``, shape
        (n_targets,), each target's probability of the logged arm ∈ [0, 1], of which the
        targets ``selection`` picks are fed."""
        cols, delta, q, sums = selection.cols, selection.buf, self.quantities, self.sums
        if self._fullest >= self.block_size:
            self._start_blocks(cols)
        w = delta[1]  # row 0 stays 1: the count
        np.divide(p_pred if cols is None else p_pred[cols], p_log, out=w)
        np.multiply(outcomes, w, out=delta[2 : 2 + q])  # w·r, the same product as the library's
        np.square(delta[2 : 2 + q], out=delta[2 + q :])
        # total and the newest block at once: each sum grows by one term per label, in label
        # order, as the library's ``+=`` grows it
        if cols is None:
            sums[:, :-1] += delta
            np.maximum(sums[:, -1], w, out=sums[:, -1])
        else:
            sums[:, :-1, cols] += delta
            sums[:, -1, cols] = np.maximum(sums[:, -1, cols], w)
        self._fullest += 1
        if selection.cs_cols:
            rs = outcomes[:, 0].tolist()
            for t in selection.cs_cols:
                p = float(p_pred[t])
                for interval, r in zip(self.cs[t], rs, strict=True):  # type: ignore[arg-type]
                    interval.add_example(p_log, r, p)

    def _start_blocks(self, cols: np.ndarray | None) -> None:
        """A new block for each target about to be fed whose newest one is full."""
        counts = self.current[0] if cols is None else self.current[0, cols]
        full = np.flatnonzero(counts >= self.block_size)
        for t in full if cols is None else cols[full]:
            self.done[t].append(self.current[:, t].copy())  # maxlen drops the oldest block
            self.current[:, t] = 0.0
        self._fullest = int(self.current[0].max(initial=0))

    # -- reading ----------------------------------------------------------------------
    def _span(self, sums: np.ndarray, q: int) -> _Span:
        """Quantity q's sums from one column of sums, shape (rows,)."""
        n, sum_w, *_ = sums.tolist()
        return _Span(
            int(n), sum_w, float(sums[2 + q]), float(sums[2 + self.quantities + q]), float(sums[-1])
        )

    def _window_sums(self, col: int) -> np.ndarray:
        """Target ``col``'s window: its blocks added oldest first, as the library's ``+``
        would (max for max w)."""
        out = np.zeros(self.rows)
        for block in [*self.done[col], self.current[:, col]]:
            out[:-1] += block[:-1]
            out[-1] = max(out[-1], block[-1])
        return out

    def cumulative(self, col: int, q: int, alpha: float) -> Reading:
        intervals = self.cs[col]
        cs_bounds: Bounds | None = None
        if intervals is not None:
            lo, hi = intervals[q].get(alpha)
            cs_bounds = (lo, hi)
        return Reading(self._span(self.total[:, col], q), alpha, cs_bounds)

    def recent(self, col: int, q: int, alpha: float) -> Reading:
        return Reading(self._span(self._window_sums(col), q), alpha, None)

    # -- state ------------------------------------------------------------------------
    def to_state(self, col: int, q: int) -> dict[str, Any]:
        """Target ``col``'s quantity ``q``: its cumulative sums, its window's blocks
        (oldest first) and its confidence sequence (None where not kept)."""
        intervals = self.cs[col]
        blocks = [*self.done[col], self.current[:, col]]
        return {
            "total": self._span(self.total[:, col], q).to_state(),
            "window": [self._span(b, q).to_state() for b in blocks],
            "cs": None if intervals is None else _dump_cs(intervals[q]),
        }

    def load(self, col: int, states: list[Any]) -> None:
        """Target ``col`` as ``to_state`` saved it, one state per quantity."""
        if len(states) != self.quantities:
            raise EstimatorError(f"{len(states)} tally states for {self.quantities} quantities")
        totals, windows, intervals = [], [], []
        for data in states:
            if not isinstance(data, dict) or not {"total", "window", "cs"} <= set(data):
                raise EstimatorError(f"tally state must hold total, window and cs; got {data!r}")
            window = data["window"]
            if not isinstance(window, list) or not 1 <= len(window) <= self.blocks:
                raise EstimatorError(
                    f"tally window of {len(window) if isinstance(window, list) else window!r} "
                    f"blocks; this estimator keeps 1 to {self.blocks}"
                )
            totals.append(_Span.from_state(data["total"]))
            windows.append([_Span.from_state(b) for b in window])
            intervals.append(None if data["cs"] is None else _load_cs(data["cs"]))
        if len({len(w) for w in windows}) != 1 or len({i is None for i in intervals}) != 1:
            raise EstimatorError("the quantities' tally states disagree on window or cs")
        self.sums[0, :, col] = self._column(totals)
        blocks = [self._column(list(spans)) for spans in zip(*windows, strict=True)]
        self.sums[1, :, col] = blocks[-1]
        self.done[col] = deque(blocks[:-1], maxlen=self.blocks - 1)
        self.cs[col] = None if intervals[0] is None else intervals
        self._fullest = int(self.current[0].max(initial=0))

    def _column(self, spans: list[_Span]) -> np.ndarray:
        """One column of sums from each quantity's span (n, Σ w and max w: the first's)."""
        first = spans[0]
        return np.array(
            [
                first.n,
                first.sum_w,
                *(s.sum_wr for s in spans),
                *(s.sum_wr2 for s in spans),
                first.max_w,
            ],
            dtype=np.float64,
        )
