"""Streaming off-policy evaluation: what other routing policies would have scored and cost
on the traffic the live policy routed, estimated from its logged decisions.

For every labelled decision — the logged pmf π₀(·|x), shape (n_arms,), the arm A drawn
from it, its correctness a ∈ [0, 1] and its cost in USD — ``OffPolicyEvaluator.update``
feeds the importance weights w = π(A|x) / π₀(A|x) of all target policies π at once, shape
(n_targets,), and the outcomes to ``bandit.ope_tally.Tallies``: accuracy E[a_π(x)] and cost
E[c_π(x)] (reported per 10k queries). These keep the estimators' sums in numpy arrays and
build the library's objects from them when read, so a label costs a few numpy operations
plus the confidence sequences (scripts/bench_ope.py: µs per label). SNIPS (Σ w·r / Σ w)
is the point estimate; the intervals are those of ``vw-estimators`` (Gaussian, Clopper-Pearson, confidence sequence), cumulative and over a
window of recent labels. The targets, named as in metrics and reports:

- ``live``: the logging policy itself (w = 1: the plain mean of what it got);
- ``always:ARM``: every single arm, π(A|x) = 1{A = ARM};
- ``greedy:p=P`` for each P of ``p_grid``: argmax_j P̂_j − P·c_j (``bandit.reward.reward``,
  first arm on ties, as ``Policy`` decides), from the arms' predicted correctness P̂ that
  the decision logged and the arms' normalised costs c (``set_costs`` follows a price
  change); decisions logged without P̂ leave these untouched;
- ``shadow:NAME`` for each registered candidate: its own chosen arm or pmf per decision,
  which the caller computes from the logged context (``Policy.decide_lines(greedy=True)``).

Costs are scaled to [0, 1] by ``cost_cap_usd`` for the intervals that need bounded outcomes
(Clopper-Pearson, the confidence sequence) and scaled back; a cost above the cap is clipped
to it and counted in ``clipped_costs``, so set the cap at or above the dearest call.

The estimator does no I/O: ``to_state`` / ``from_state`` give a JSON-able dict that the
learner commits with the model, so that a restart neither loses nor repeats a label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bandit.errors import EstimatorError
from bandit.ope_tally import Reading, Tallies
from bandit.reward import check_p

PER_10K = 10_000
# The p grid of `metallm evaluate`'s table (bandit/evaluation.py TABLE_P).
DEFAULT_P_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# 2,000 labels in 10 blocks: a window holds 1,801–2,000 labels. An arm the live policy
# draws only by exploration (ε/K ≈ 1 %) gets ~20 of them, about the least an interval
# around a rare arm's accuracy needs to be of use.
DEFAULT_WINDOW_LABELS = 2_000
DEFAULT_WINDOW_BLOCKS = 10
DEFAULT_ALPHA = 0.05  # 95 % intervals
STATE_VERSION = 1
PMF_TOLERANCE = 1e-6  # how far a logged pmf's sum may be from 1
LIVE = "live"
SCOPES = ("cumulative", "window")
CS_MODES = ("promotion", "all", "none")
ACC, COST = 0, 1  # the quantities' rows in ``Tallies``


@dataclass(frozen=True)
class OPEConfig:
    """Settings of the off-policy estimators.

    ``arm_names``: the catalogue's arms, in its order (the pmf's order).
    ``cost_cap_usd``: the largest cost in USD one query can have; costs are divided by it.
    ``p_grid``: the p values of the greedy targets. ``window_labels`` /
    ``window_blocks``: the recent window (see bandit/ope_tally.py); the first must be a
    multiple of the second. ``alpha``: 1 − the intervals' level.
    ``confidence_sequence``: which targets keep the cumulative confidence sequence:
    ``promotion`` (default) the shadows, whose lower bound decides a promotion that is
    checked again at every label, which only an anytime-valid bound allows (the live
    policy's side of that comparison is its point estimate, so it keeps none: that halved
    the learner's cost per label); ``all``; or ``none``. It costs about 3× the other estimators together per
    target and label (scripts/ope_coverage.py prints the time per label).
    """

    arm_names: tuple[str, ...]
    cost_cap_usd: float
    p_grid: tuple[float, ...] = DEFAULT_P_GRID
    window_labels: int = DEFAULT_WINDOW_LABELS
    window_blocks: int = DEFAULT_WINDOW_BLOCKS
    alpha: float = DEFAULT_ALPHA
    confidence_sequence: str = "promotion"

    def __post_init__(self) -> None:
        object.__setattr__(self, "arm_names", tuple(self.arm_names))
        object.__setattr__(self, "p_grid", tuple(float(check_p(p)) for p in self.p_grid))
        if not self.arm_names or len(set(self.arm_names)) != len(self.arm_names):
            raise EstimatorError(f"ope.arm_names = {self.arm_names!r} must be distinct, ≥ 1")
        if not (math.isfinite(self.cost_cap_usd) and self.cost_cap_usd > 0):
            raise EstimatorError(f"ope.cost_cap_usd = {self.cost_cap_usd} must be > 0 (USD)")
        if len(set(self.p_grid)) != len(self.p_grid):
            raise EstimatorError(f"ope.p_grid = {self.p_grid} holds a p twice")
        if self.window_blocks < 1 or self.window_labels < self.window_blocks:
            raise EstimatorError(
                f"ope.window_labels = {self.window_labels} and window_blocks = "
                f"{self.window_blocks}: need 1 ≤ window_blocks ≤ window_labels"
            )
        if self.window_labels % self.window_blocks:
            raise EstimatorError(
                f"ope.window_labels = {self.window_labels} must be a multiple of "
                f"window_blocks = {self.window_blocks}"
            )
        if self.confidence_sequence not in CS_MODES:
            raise EstimatorError(
                f"ope.confidence_sequence = {self.confidence_sequence!r} is not one of: "
                f"{', '.join(CS_MODES)}"
            )
        if not 0 < self.alpha < 1:
            raise EstimatorError(f"ope.alpha = {self.alpha} must be in (0, 1)")

    @property
    def block_size(self) -> int:
        return self.window_labels // self.window_blocks

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any) -> OPEConfig:
        allowed = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= allowed:
            raise EstimatorError(f"ope config {data!r} must be a dict of {sorted(allowed)}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**values)


@dataclass(frozen=True)
class LoggedDecision:
    """One labelled decision of the logging (live) policy.

    ``pmf``: shape (n_arms,), the probabilities the arm was drawn with; ``arm``: its index;
    ``correct``: a ∈ [0, 1]; ``cost_usd``: what the call cost, USD; ``predicted``: shape
    (n_arms,), P̂(a_j = 1 | x) as the policy predicted it, or None when not logged.
    """

    pmf: np.ndarray
    arm: int
    correct: float
    cost_usd: float
    predicted: np.ndarray | None = None


@dataclass(frozen=True)
class MetricEstimate:
    """One quantity under one policy, in its units (accuracy as a fraction, cost in USD
    per 10k queries). ``value``: SNIPS; ``ips``: IPS; each interval a (lo, hi) pair at
    level 1 − alpha, (None, None) where undefined (bandit/ope_tally.py's Reading); ``cs``
    None in the window and where not kept. How often each covered the truth on recorded
    data: scripts/ope_coverage.py."""

    value: float | None
    ips: float | None
    gaussian: tuple[float | None, float | None]
    clopper_pearson: tuple[float | None, float | None]
    cs: tuple[float | None, float | None] | None

    @classmethod
    def from_reading(cls, reading: Reading, factor: float) -> MetricEstimate:
        d = reading.scaled(factor)
        return cls(
            d["value"],
            d["ips"],
            tuple(d["gaussian"]),
            tuple(d["clopper_pearson"]),
            None if d["cs"] is None else tuple(d["cs"]),
        )


@dataclass(frozen=True)
class PolicyEstimate:
    """A target policy's estimates over one scope (``cumulative`` or ``window``);
    ``labels``: how many labelled decisions they rest on."""

    policy: str
    scope: str
    labels: int
    acc: MetricEstimate
    cost_per_10k: MetricEstimate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def arm_policy(arm: str) -> str:
    return f"always:{arm}"


def greedy_policy(p: float) -> str:
    return f"greedy:p={p:g}"


def shadow_policy(name: str) -> str:
    return f"shadow:{name}"


class OffPolicyEvaluator:
    """Streaming estimates for the live policy, each arm, greedy at each p of the grid and
    the registered shadow candidates (see the module doc).

    costs: shape (n_arms,), the arms' normalised costs (the dearest is 1) that greedy-at-p
    prices; ``set_costs`` replaces them.
    """

    def __init__(self, config: OPEConfig, costs: Sequence[float] | np.ndarray) -> None:
        self.config = config
        self.set_costs(costs)
        self.labels = 0
        self.clipped_costs = 0
        self._shadows: list[str] = []
        self._tallies = Tallies(config.block_size, config.window_blocks, quantities=2)
        # target name -> its column in the tallies: live, the arms, the greedy grid, shadows
        self._cols = {
            n: self._tallies.add_target(with_cs=self._keeps_cs(n)) for n in self._fixed_policies()
        }
        self._greedy = slice(1 + self.n_arms, 1 + self.n_arms + len(config.p_grid))
        self._reselect()

    # -- the set of target policies ----------------------------------------------------
    @property
    def n_arms(self) -> int:
        return len(self.config.arm_names)

    @property
    def policies(self) -> list[str]:
        """Every target's name: live, the arms, the greedy grid, then the shadows."""
        return list(self._cols)

    @property
    def shadows(self) -> list[str]:
        return list(self._shadows)

    def _fixed_policies(self) -> list[str]:
        return [
            LIVE,
            *(arm_policy(a) for a in self.config.arm_names),
            *(greedy_policy(p) for p in self.config.p_grid),
        ]

    def _keeps_cs(self, name: str) -> bool:
        mode = self.config.confidence_sequence
        shadow = name.startswith(shadow_policy(""))
        return mode == "all" or (mode == "promotion" and shadow)

    def _reselect(self) -> None:
        """The targets a decision feeds, with and without predictions (which the greedy
        targets need), after the set of targets or their confidence sequences changed."""
        cols = np.arange(self._tallies.n_targets)
        self._feed_all = self._tallies.select()
        self._feed_no_greedy = self._tallies.select(np.delete(cols, cols[self._greedy]))

    def add_shadow(self, name: str) -> None:
        """Start estimating candidate ``name`` from the next labelled decision on."""
        if not name or name in self._shadows:
            raise EstimatorError(f"shadow candidate {name!r} is empty or already registered")
        self._shadows.append(name)
        target = shadow_policy(name)
        self._cols[target] = self._tallies.add_target(with_cs=self._keeps_cs(target))
        self._reselect()

    def remove_shadow(self, name: str) -> None:
        if name not in self._shadows:
            raise EstimatorError(
                f"no shadow candidate {name!r}; registered: {', '.join(self._shadows) or 'none'}"
            )
        self._shadows.remove(name)
        self._tallies.remove_target(self._cols.pop(shadow_policy(name)))
        self._cols = {target: col for col, target in enumerate(self._cols)}
        self._reselect()

    def set_costs(self, costs: Sequence[float] | np.ndarray) -> None:
        """The arms' normalised costs after a price change; greedy-at-p uses them from
        the next decision on (what it estimated before stays)."""
        self.costs = self._check_costs(costs)
        # p·c_j for each p of the grid, shape (len(p_grid), n_arms): what greedy_arms prices
        self._prices = np.asarray(self.config.p_grid)[:, None] * self.costs

    def _check_costs(self, costs: Sequence[float] | np.ndarray) -> np.ndarray:
        out = np.asarray(costs, dtype=np.float64)
        if out.shape != (self.n_arms,) or not np.all(np.isfinite(out)) or np.any(out < 0):
            raise EstimatorError(
                f"costs {out.tolist()} must be {self.n_arms} finite numbers ≥ 0 "
                "(normalised: the dearest arm costs 1)"
            )
        return out

    # -- learning from one labelled decision -------------------------------------------
    def greedy_arms(self, predicted: np.ndarray) -> np.ndarray:
        """The arm greedy-at-p picks for each p of the grid, shape (len(p_grid),), from
        P̂, shape (n_arms,): argmax_j reward(P̂_j, c_j, p) = P̂_j − p·c_j, the first arm on
        ties; ``bandit.reward.reward``'s arithmetic for the whole grid at once."""
        scores = np.asarray(predicted, dtype=np.float64) - self._prices
        return np.argmax(scores, axis=1).astype(np.int64)

    def update(
        self, decision: LoggedDecision, shadows: Mapping[str, int | np.ndarray] | None = None
    ) -> None:
        """Feed one labelled decision to every target. ``shadows``: for each registered
        candidate (all of them, no other), the arm it picks on this decision's context or
        its pmf, shape (n_arms,)."""
        arm, p_log = self._check_decision(decision)
        targets = self._shadow_probs(decision.arm, shadows or {})
        cost = float(decision.cost_usd) / self.config.cost_cap_usd
        if cost > 1.0:
            cost = 1.0
            self.clipped_costs += 1
        # each target's probability of the logged arm, in column order
        p_pred = np.zeros(self._tallies.n_targets)
        p_pred[0] = p_log
        p_pred[1 + arm] = 1.0
        feed = self._feed_no_greedy
        if decision.predicted is not None:
            p_pred[self._greedy] = self.greedy_arms(decision.predicted) == arm
            feed = self._feed_all
        p_pred[self._greedy.stop :] = list(targets.values())
        outcomes = np.array([[float(decision.correct)], [cost]])  # rows ACC, COST
        self._tallies.add(p_log, outcomes, p_pred, feed)
        self.labels += 1

    def _check_decision(self, d: LoggedDecision) -> tuple[int, float]:
        pmf = np.asarray(d.pmf, dtype=np.float64)
        # min ≥ 0 and |Σ − 1| ≤ tolerance, written so that NaN fails them and ±inf fails one
        if pmf.shape != (self.n_arms,) or not (
            pmf.min() >= 0.0 and abs(float(pmf.sum()) - 1.0) <= PMF_TOLERANCE
        ):
            raise EstimatorError(
                f"logged pmf {pmf.tolist()} must be {self.n_arms} probabilities summing to 1"
            )
        arm = int(d.arm)
        if not 0 <= arm < self.n_arms or pmf[arm] <= 0:
            raise EstimatorError(
                f"logged arm {d.arm} must be an index 0..{self.n_arms - 1} with pmf > 0"
            )
        if not (math.isfinite(d.correct) and 0 <= d.correct <= 1):
            raise EstimatorError(f"correctness {d.correct} must be in [0, 1]")
        if not (math.isfinite(d.cost_usd) and d.cost_usd >= 0):
            raise EstimatorError(f"cost {d.cost_usd} must be a finite number ≥ 0 (USD)")
        if d.predicted is not None:
            pred = np.asarray(d.predicted)
            if pred.shape != (self.n_arms,) or not np.isfinite(pred).all():
                raise EstimatorError(
                    f"predicted correctness {pred.tolist()} must be {self.n_arms} finite numbers"
                )
        return arm, float(pmf[arm])

    def _shadow_probs(self, arm: int, shadows: Mapping[str, int | np.ndarray]) -> dict[str, float]:
        if set(shadows) != set(self._shadows):
            raise EstimatorError(
                f"targets given for shadows {sorted(shadows)}, but the registered ones are "
                f"{sorted(self._shadows)}: give one for each (add_shadow / remove_shadow)"
            )
        out: dict[str, float] = {}
        for name in self._shadows:
            target = shadows[name]
            if isinstance(target, int | np.integer):
                if not 0 <= int(target) < self.n_arms:
                    raise EstimatorError(f"shadow {name!r} picked arm {target}: out of range")
                out[name] = float(int(target) == arm)
                continue
            pmf = np.asarray(target, dtype=np.float64)
            if pmf.shape != (self.n_arms,) or abs(float(pmf.sum()) - 1.0) > PMF_TOLERANCE:
                raise EstimatorError(
                    f"shadow {name!r}: pmf {pmf.tolist()} must be {self.n_arms} "
                    "probabilities summing to 1"
                )
            out[name] = float(pmf[arm])
        return out

    # -- reading ----------------------------------------------------------------------
    def estimate(self, policy: str, scope: str = "cumulative") -> PolicyEstimate:
        """One target's estimates; ``scope``: ``cumulative`` or ``window``."""
        if policy not in self._cols:
            raise EstimatorError(f"no target policy {policy!r}; known: {', '.join(self._cols)}")
        if scope not in SCOPES:
            raise EstimatorError(f"scope {scope!r} is not one of: {', '.join(SCOPES)}")
        col, alpha = self._cols[policy], self.config.alpha
        read = self._tallies.cumulative if scope == "cumulative" else self._tallies.recent
        acc, cost = read(col, ACC, alpha), read(col, COST, alpha)
        return PolicyEstimate(
            policy,
            scope,
            acc.n,
            MetricEstimate.from_reading(acc, 1.0),
            MetricEstimate.from_reading(cost, self.config.cost_cap_usd * PER_10K),
        )

    def estimates(self, scope: str = "cumulative") -> list[PolicyEstimate]:
        """Every target's estimates, in ``policies`` order."""
        return [self.estimate(name, scope) for name in self._cols]

    # -- state ------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict of everything; ``from_state`` continues from it exactly."""
        return {
            "version": STATE_VERSION,
            "config": self.config.to_json(),
            "costs": self.costs.tolist(),
            "labels": self.labels,
            "clipped_costs": self.clipped_costs,
            "shadows": list(self._shadows),
            "tallies": {
                name: {
                    "acc": self._tallies.to_state(col, ACC),
                    "cost": self._tallies.to_state(col, COST),
                }
                for name, col in self._cols.items()
            },
        }

    @classmethod
    def from_state(cls, state: Any, config: OPEConfig | None = None) -> OffPolicyEvaluator:
        """The evaluator ``to_state`` saved. ``config``: the one the caller expects; a
        saved state under another config is an error (reset the state to change it)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise EstimatorError(
                f"off-policy state version {state.get('version') if isinstance(state, dict) else state!r} "
                f"is not {STATE_VERSION}"
            )
        saved = OPEConfig.from_json(state.get("config"))
        if config is not None and saved != config:
            diff = [
                f.name
                for f in fields(OPEConfig)
                if getattr(saved, f.name) != getattr(config, f.name)
            ]
            raise EstimatorError(
                f"the saved off-policy state was made under other settings ({', '.join(diff)}); "
                "reset it to estimate under the new ones"
            )
        out = cls(saved, state.get("costs", []))
        for name in state.get("shadows", []):
            out.add_shadow(name)
        tallies = state.get("tallies")
        if not isinstance(tallies, dict) or set(tallies) != set(out._cols):
            raise EstimatorError(
                f"the saved off-policy state holds targets "
                f"{sorted(tallies) if isinstance(tallies, dict) else tallies!r}, expected "
                f"{sorted(out._cols)}"
            )
        for name, pair in tallies.items():
            if not isinstance(pair, dict) or set(pair) != {"acc", "cost"}:
                raise EstimatorError(f"target {name!r}: state must hold acc and cost")
            out._tallies.load(out._cols[name], [pair["acc"], pair["cost"]])
        out._reselect()  # the state says which targets keep a confidence sequence
        out.labels = int(state.get("labels", 0))
        out.clipped_costs = int(state.get("clipped_costs", 0))
        return out
