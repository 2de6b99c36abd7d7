"""Budget pacing: turn measured spend into the price weight p of the decoupled decision.

The decoupled router sends query x to argmax_j P̂(a_j = 1 | x) − p·c_j, where c_j is arm j's
fixed cost divided by the dearest arm's (bandit/policy.py). Raising p moves traffic to
cheaper arms, so spend per query falls as p rises. ``PaceController`` holds p where the
measured spend meets a target, as a dual variable of the budget constraint:

- ``multiplicative``: log p ← log p + η·e, so p moves by the same factor whatever its
  scale (the p that meets a budget ranges over three decades across data sets);
- ``additive`` (dual gradient): p ← p + η·e.

e counts the new queries' overspend in queries' worth of target: with a window it is
n_new · (window spend per query ÷ target − 1), without one (``window_queries = 0``) it is
(new spend − n_new · target) ÷ target. Either way the steps add up to the integral of the
spend error, so the average spend converges to the target (integral action), and the
result does not depend on how often ``update`` is called.

The controller only decides: it reads no clock and does no I/O. The caller passes in the
spend of each answer as it returns (``observe``), asks for p (``update``) at its own
cadence, and keeps ``to_state()`` (a small JSON-able dict) wherever it likes; a price change
of an arm is ``set_prices`` and keeps the state. Paper mode learns p into the weights and
cannot be paced (``check_pacing_mode``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandit.errors import ConfigError

RULES = ("multiplicative", "additive")
PER_10K = 10_000
SECONDS_PER_HOUR = 3600.0
# Chosen by `scripts/bench_pacing.py` on overruling, ARC and IMDB (the README's table):
# the multiplicative rule with η = 0.05 per query of overspend on a 50-query window met the
# binding targets closest; the additive rule needs a step per data set (p's scale differs).
DEFAULT_RULE = "multiplicative"
DEFAULT_STEP = 0.05
DEFAULT_WINDOW_QUERIES = 50.0
# p = 1 prices the dearest arm like a whole wrong answer; a start mid-range (log scale) of
# the p that met the measured budgets.
DEFAULT_P_INIT = 0.05
# With costs ≤ 1 and predicted correctness in [0, 1], p = 1,000 makes the cheapest arm win
# unless two arms' costs differ by less than 0.001 of the dearest arm's.
DEFAULT_P_MAX = 1000.0
# The multiplicative rule cannot leave p = 0; below this p it is held here (p·c ≤ 1e-4
# shifts no decision by more than a hundredth of a percentage point of correctness).
DEFAULT_P_FLOOR = 1e-4
# Queries answered before p first moves: the spend of the first few answers says little
# (one answer of the dearest arm among ten is many times the target).
DEFAULT_WARMUP_QUERIES = 20
# A single update moves log p (or p) by at most this much, so a burst of expensive answers
# (or a stale state) cannot throw p across its whole range at once.
DEFAULT_MAX_STEP = 1.0


@dataclass(frozen=True)
class PacingConfig:
    """A spend target and how p is steered to it; each field is checked.

    Targets (at least one; when both, the one that allows less spend binds):
    ``usd_per_10k_queries`` — USD per 10,000 queries; ``usd_per_hour`` — USD per hour,
    turned into a per-query target with the query rate measured over the window.
    ``rule``: ``multiplicative`` or ``additive``; ``step``: η, per query of overspend.
    ``p_init``: p before the first update; ``p_min``/``p_max``: bounds on p; ``p_floor``:
    the smallest p the multiplicative rule holds (it cannot leave 0).
    ``window_queries``: the smoothing window of measured spend, in queries (exponential,
    time constant in queries; 0 = none: each update uses the spend since the previous one).
    ``warmup_queries``: answers observed before p first moves.
    ``max_step``: the largest change of log p (multiplicative) or p (additive) per update.
    """

    usd_per_10k_queries: float | None = None
    usd_per_hour: float | None = None
    rule: str = DEFAULT_RULE
    step: float = DEFAULT_STEP
    p_init: float = DEFAULT_P_INIT
    p_min: float = 0.0
    p_max: float = DEFAULT_P_MAX
    p_floor: float = DEFAULT_P_FLOOR
    window_queries: float = DEFAULT_WINDOW_QUERIES
    warmup_queries: int = DEFAULT_WARMUP_QUERIES
    max_step: float = DEFAULT_MAX_STEP

    def __post_init__(self) -> None:
        if self.usd_per_10k_queries is None and self.usd_per_hour is None:
            raise ConfigError(
                "budget: set usd_per_10k_queries and/or usd_per_hour (USD, > 0) to pace spend"
            )
        for name in ("usd_per_10k_queries", "usd_per_hour"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise ConfigError(f"budget.{name} = {value!r} must be a finite number > 0 (USD)")
        if self.rule not in RULES:
            raise ConfigError(f"budget.rule = {self.rule!r} is not one of: {', '.join(RULES)}")
        for name in ("step", "p_max", "p_floor", "max_step"):
            value = getattr(self, name)
            if not _positive(value):
                raise ConfigError(f"budget.{name} = {value!r} must be a finite number > 0")
        if not (_finite(self.p_min) and 0 <= self.p_min < self.p_max):
            raise ConfigError(
                f"budget.p_min = {self.p_min!r} must be in [0, p_max = {self.p_max!r})"
            )
        if not (_finite(self.p_init) and self.p_min <= self.p_init <= self.p_max):
            raise ConfigError(
                f"budget.p_init = {self.p_init!r} must be in [p_min, p_max] = "
                f"[{self.p_min!r}, {self.p_max!r}]"
            )
        if not self.p_floor < self.p_max:
            raise ConfigError(
                f"budget.p_floor = {self.p_floor!r} must be below p_max = {self.p_max!r}"
            )
        if not (_finite(self.window_queries) and self.window_queries >= 0):
            raise ConfigError(
                f"budget.window_queries = {self.window_queries!r} must be a finite number ≥ 0"
            )
        if isinstance(self.warmup_queries, bool) or not (
            isinstance(self.warmup_queries, int) and self.warmup_queries >= 0
        ):
            raise ConfigError(f"budget.warmup_queries = {self.warmup_queries!r} must be an integer ≥ 0")  # fmt: skip

    @property
    def lower(self) -> float:
        """The lowest p the rule can hold (the multiplicative rule cannot reach 0)."""
        return max(self.p_min, self.p_floor) if self.rule == "multiplicative" else self.p_min


def check_pacing_mode(mode: str) -> None:
    """A budget needs the decoupled mode: paper mode learns one p into the weights."""
    if mode != "decoupled":
        raise ConfigError(
            f"a spend budget needs policy.mode = 'decoupled', not {mode!r}: paper mode learns "
            "p into the weights at training, so p cannot follow spend; drop the budget or "
            "switch to mode = 'decoupled'"
        )


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _check_costs(arm_costs_usd: Any) -> np.ndarray:
    costs = np.asarray(arm_costs_usd, dtype=np.float64)
    if costs.ndim != 1 or costs.size == 0 or not np.all(np.isfinite(costs)) or costs.min() < 0:
        raise ConfigError(f"arm costs {costs.tolist()} must be a non-empty list of USD ≥ 0")
    if costs.max() <= 0:
        raise ConfigError("every arm costs 0 USD: there is no spend to pace")
    return costs


class PaceController:
    """p from measured spend; see the module docstring.

    ``arm_costs_usd``: shape (n_arms,), each arm's fixed (expected) USD per query, the costs
    the policy normalises; they decide the two edges: a target below the cheapest arm's
    cost puts p at ``p_max`` (route to the cheapest; ``shortfall_per_10k`` says by how much
    the target cannot be met), a target at or above the dearest arm's puts p at 0.
    """

    def __init__(
        self,
        config: PacingConfig,
        arm_costs_usd: Any,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._costs = _check_costs(arm_costs_usd)
        self.p = config.p_init
        self.observed_queries = 0.0  # every answer observed, warm-up included
        self._pending_spend = 0.0  # observed since the last update
        self._pending_queries = 0.0
        self._window_spend = 0.0  # exponentially weighted over window_queries
        self._window_queries = 0.0
        self._window_s = 0.0  # seconds spanned by the window's timed queries (usd_per_hour)
        self._window_timed = 0.0  # queries observed with a known time since the previous ones
        self._last_seen_s: float | None = None
        self._dearest = float(self._costs.max())
        if state is not None:
            self._load(state)
        target = self.target_per_query_usd
        if target is not None:
            self._at_edge(target)  # right from the first decision, not only after an update

    # -- inputs --------------------------------------------------------------------------
    def observe(self, spend_usd: float, queries: float = 1, now_s: float | None = None) -> None:
        """Record answers as they return: ``queries`` answers that cost ``spend_usd`` USD in
        all, at time ``now_s`` (seconds, any epoch; needed only for ``usd_per_hour``)."""
        if not (_finite(spend_usd) and spend_usd >= 0):
            raise ConfigError(f"spend_usd = {spend_usd!r} must be a finite number ≥ 0")
        if not (_finite(queries) and queries >= 0):
            raise ConfigError(f"queries = {queries!r} must be a finite number ≥ 0")
        self._pending_spend += spend_usd
        self._pending_queries += queries
        self.observed_queries += queries
        window = self.config.window_queries
        keep = math.exp(-queries / window) if window > 0 else 0.0
        self._window_spend = self._window_spend * keep + spend_usd
        self._window_queries = self._window_queries * keep + queries
        if now_s is not None:
            if self._last_seen_s is not None:
                # a clock that steps back (another replica's) adds nothing, never negative time
                self._window_s = self._window_s * keep + max(0.0, now_s - self._last_seen_s)
                self._window_timed = self._window_timed * keep + queries
            # the first timed answers have no interval before them: they only start the clock
            self._last_seen_s = max(now_s, self._last_seen_s or now_s)

    def set_prices(self, arm_costs_usd: Any) -> None:
        """An arm's price changed: new fixed USD per query of every arm, in the policy's order.

        p weighs *normalised* costs (the dearest costs 1), so when the dearest arm's cost
        changes, p is rescaled to keep the USD price of accuracy p ÷ dearest the same: the
        arms whose price did not change keep their trade-off, and the controller corrects
        the rest from measured spend without starting over."""
        costs = _check_costs(arm_costs_usd)
        dearest = float(costs.max())
        self.p = self._clip(self.p * dearest / self._dearest)
        self._costs, self._dearest = costs, dearest
        target = self.target_per_query_usd
        if target is not None:
            self._at_edge(target)

    # -- the decision --------------------------------------------------------------------
    def update(self) -> float:
        """Fold the answers observed since the last call into p, and return p."""
        n_new, spend_new = self._pending_queries, self._pending_spend
        self._pending_queries = self._pending_spend = 0.0
        target = self.target_per_query_usd
        if target is None or self._at_edge(target):
            return self.p
        if n_new <= 0 or self.observed_queries <= self.config.warmup_queries:
            return self.p
        if self.config.window_queries > 0:
            rate = self._window_spend / max(self._window_queries, 1e-12)
            err = n_new * (rate / target - 1.0)
        else:
            err = (spend_new - n_new * target) / target
        move = float(np.clip(self.config.step * err, -self.config.max_step, self.config.max_step))
        if self.config.rule == "multiplicative":
            self.p = self._clip(max(self.p, self.config.lower) * math.exp(move))
        else:
            self.p = self._clip(self.p + move)
        return self.p

    def _at_edge(self, target: float) -> bool:
        """Put p at an edge when the target is outside the arms' costs; say whether it is."""
        if target < float(self._costs.min()):
            self.p = self.config.p_max  # route to the cheapest; shortfall_per_10k says by how much
            return True
        if target >= self._dearest:
            self.p = 0.0  # every routing meets the target: accuracy alone decides
            return True
        return False

    def _clip(self, p: float) -> float:
        return float(min(max(p, self.config.lower), self.config.p_max))

    # -- what the service exports --------------------------------------------------------
    @property
    def target_per_query_usd(self) -> float | None:
        """The binding target in USD per query; None while only ``usd_per_hour`` is set and
        no query rate has been measured yet."""
        targets = []
        if self.config.usd_per_10k_queries is not None:
            targets.append(self.config.usd_per_10k_queries / PER_10K)
        if self.config.usd_per_hour is not None and self._window_s > 0 < self._window_timed:
            queries_per_s = self._window_timed / self._window_s
            targets.append(self.config.usd_per_hour / SECONDS_PER_HOUR / queries_per_s)
        return min(targets) if targets else None

    @property
    def spend_per_10k(self) -> float | None:
        """Measured spend over the window (without one: over the last ``observe`` call), USD
        per 10k queries; None before any answer."""
        if self._window_queries <= 0:
            return None
        return self._window_spend / self._window_queries * PER_10K

    @property
    def spend_ratio(self) -> float | None:
        """Measured spend ÷ target (1 = on target), for the off-target alert."""
        target, spend = self.target_per_query_usd, self.spend_per_10k
        if target is None or spend is None:
            return None
        return spend / PER_10K / target

    @property
    def shortfall_per_10k(self) -> float:
        """USD per 10k queries by which even the cheapest arm exceeds the target (0 when
        the target can be met): the overspend the service cannot avoid."""
        target = self.target_per_query_usd
        if target is None:
            return 0.0
        return max(0.0, float(self._costs.min()) - target) * PER_10K

    # -- state ---------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything the controller has learned, as a JSON-able dict of numbers."""
        return {
            "p": self.p,
            "observed_queries": self.observed_queries,
            "pending_spend": self._pending_spend,
            "pending_queries": self._pending_queries,
            "window_spend": self._window_spend,
            "window_queries": self._window_queries,
            "window_s": self._window_s,
            "window_timed": self._window_timed,
            "last_seen_s": self._last_seen_s,
            "dearest_usd": self._dearest,
        }

    @classmethod
    def from_state(
        cls, config: PacingConfig, arm_costs_usd: Any, state: dict[str, Any]
    ) -> PaceController:
        """A controller that goes on from ``state`` under the (possibly new) prices: a price
        changed while the state was stored is followed as ``set_prices`` would."""
        return cls(config, arm_costs_usd, state)

    def _load(self, state: dict[str, Any]) -> None:
        keys = set(self.to_state())
        missing = keys - set(state)
        if missing:
            raise ConfigError(f"pacing state lacks {sorted(missing)}; it has {sorted(state)}")
        for key in keys - {"last_seen_s"}:
            if not _finite(state[key]) or state[key] < 0:
                raise ConfigError(f"pacing state {key} = {state[key]!r} must be a number ≥ 0")
        if state["last_seen_s"] is not None and not _finite(state["last_seen_s"]):
            raise ConfigError(f"pacing state last_seen_s = {state['last_seen_s']!r} must be a number")  # fmt: skip
        new_costs = self._costs
        self.p = self._clip(float(state["p"]))
        self.observed_queries = float(state["observed_queries"])
        self._pending_spend = float(state["pending_spend"])
        self._pending_queries = float(state["pending_queries"])
        self._window_spend = float(state["window_spend"])
        self._window_queries = float(state["window_queries"])
        self._window_s = float(state["window_s"])
        self._window_timed = float(state["window_timed"])
        self._last_seen_s = state["last_seen_s"]
        if state["dearest_usd"] <= 0:
            raise ConfigError("pacing state dearest_usd must be > 0 USD")
        # the stored state priced p against the dearest arm of its day
        self._dearest = float(state["dearest_usd"])
        self.set_prices(new_costs)
