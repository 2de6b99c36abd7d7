"""The arm catalogue: which LLMs can answer, what they charge, and how cost is normalised.

The reward r = a − p·c needs each arm's cost c on one scale: c is the arm's cost in USD
divided by the dearest arm's fixed cost, so that the dearest arm costs 1 (MetaLLM, eq. 4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandit.errors import ConfigError, UnknownArmError

PROVIDERS = ("openai", "bedrock", "replay")
# Token counts used to turn per-token prices into a fixed per-call cost when the arm has
# no flat price: a short classification prompt and a one-word answer.
DEFAULT_TYPICAL_TOKENS_IN = 400
DEFAULT_TYPICAL_TOKENS_OUT = 5
DEFAULT_PROMPT_TEMPLATE = "{text}"


@dataclass(frozen=True)
class Arm:
    """One LLM the router can send a query to.

    Prices are in USD: per 1,000 input and output tokens, or a flat price per call (which,
    when set, is added to the token prices).
    """

    name: str
    provider: str
    model_id: str
    price_per_1k_input_usd: float = 0.0
    price_per_1k_output_usd: float = 0.0
    price_per_call_usd: float = 0.0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    endpoint: str | None = None
    typical_tokens_in: int = DEFAULT_TYPICAL_TOKENS_IN
    typical_tokens_out: int = DEFAULT_TYPICAL_TOKENS_OUT

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ConfigError("arm name must be a non-empty string")
        if self.provider not in PROVIDERS:
            raise ConfigError(
                f"arm {self.name!r}: provider {self.provider!r} is not one of {', '.join(PROVIDERS)}"
            )
        if not self.model_id:
            raise ConfigError(f"arm {self.name!r}: model_id must be a non-empty string")
        for fname in ("price_per_1k_input_usd", "price_per_1k_output_usd", "price_per_call_usd"):
            value = getattr(self, fname)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"arm {self.name!r}: {fname} = {value!r} must be a finite number ≥ 0 (USD)"
                )
        if "{text}" not in self.prompt_template:
            raise ConfigError(
                f"arm {self.name!r}: prompt_template must contain the placeholder {{text}}"
            )
        for fname in ("typical_tokens_in", "typical_tokens_out"):
            if getattr(self, fname) < 0:
                raise ConfigError(f"arm {self.name!r}: {fname} must be ≥ 0")

    def render(self, text: str) -> str:
        """The prompt this arm is sent for query ``text`` (other braces stay as they are)."""
        return self.prompt_template.replace("{text}", text)

    def cost_usd(self, tokens_in: int, tokens_out: int) -> float:
        """USD for one call that used ``tokens_in`` prompt and ``tokens_out`` completion tokens."""
        return (
            self.price_per_call_usd
            + tokens_in * self.price_per_1k_input_usd / 1000.0
            + tokens_out * self.price_per_1k_output_usd / 1000.0
        )

    @property
    def fixed_cost_usd(self) -> float:
        """The arm's expected USD per call: the paper's fixed per-arm cost."""
        return self.cost_usd(self.typical_tokens_in, self.typical_tokens_out)


@dataclass(frozen=True)
class ArmCatalogue:
    """An ordered set of arms; the order is the action index the policy uses."""

    arms: tuple[Arm, ...]
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.arms:
            raise ConfigError("the arm catalogue is empty: list at least one [[arms]] entry")
        index: dict[str, int] = {}
        for i, arm in enumerate(self.arms):
            if arm.name in index:
                raise ConfigError(f"arm name {arm.name!r} appears twice in the catalogue")
            index[arm.name] = i
        if max(a.fixed_cost_usd for a in self.arms) <= 0:
            raise ConfigError("every arm costs 0 USD: give at least one arm a price")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_dicts(cls, entries: Sequence[Mapping[str, Any]]) -> ArmCatalogue:
        """Build from the ``[[arms]]`` tables of a TOML config."""
        allowed = set(Arm.__dataclass_fields__)
        arms = []
        for i, entry in enumerate(entries):
            unknown = set(entry) - allowed
            if unknown:
                raise ConfigError(
                    f"arms[{i}]: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
                )
            missing = {"name", "provider", "model_id"} - set(entry)
            if missing:
                raise ConfigError(f"arms[{i}]: missing field(s) {sorted(missing)}")
            arms.append(Arm(**entry))
        return cls(tuple(arms))

    def __len__(self) -> int:
        return len(self.arms)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownArmError(
                f"unknown arm {name!r}; the catalogue has: {', '.join(self.names)}"
            ) from None

    def arm(self, name: str) -> Arm:
        return self.arms[self.index(name)]

    def fixed_costs_usd(self) -> np.ndarray:
        """Each arm's fixed USD per call, shape (n_arms,)."""
        return np.array([a.fixed_cost_usd for a in self.arms], dtype=np.float64)

    def normalised_costs(self) -> np.ndarray:
        """Fixed costs divided by the dearest arm's, shape (n_arms,), max exactly 1."""
        return normalise_costs(self.fixed_costs_usd())

    def normalise_usd(self, cost_usd: np.ndarray | float) -> np.ndarray:
        """Per-query ("dynamic") USD costs on the fixed-cost scale: divided by the dearest
        arm's fixed cost, so p means the same in both cost modes."""
        return np.asarray(cost_usd, dtype=np.float64) / float(self.fixed_costs_usd().max())


def normalise_costs(costs_usd: np.ndarray) -> np.ndarray:
    """Divide costs by their maximum so the dearest costs 1.

    costs_usd: shape (n_arms,), USD, all ≥ 0 and at least one > 0.
    """
    costs = np.asarray(costs_usd, dtype=np.float64)
    if costs.ndim != 1 or costs.size == 0:
        raise ConfigError(f"costs must be a non-empty 1-D array, got shape {costs.shape}")
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise ConfigError(f"costs must be finite and ≥ 0 USD, got {costs.tolist()}")
    top = costs.max()
    if top <= 0:
        raise ConfigError("every cost is 0: cannot normalise so that the dearest costs 1")
    return costs / top


def arm_difference(have: Sequence[str], want: Sequence[str]) -> str | None:
    """None when the two arm lists are the same (names and order), else a message naming
    the difference: ``have`` is what a snapshot was trained for, ``want`` the config's."""
    if tuple(have) == tuple(want):
        return None
    added = [n for n in want if n not in have]
    removed = [n for n in have if n not in want]
    parts = []
    if added:
        parts.append(f"the config adds {added}")
    if removed:
        parts.append(f"the config drops {removed}")
    if not parts:
        parts.append(f"the order differs: snapshot {list(have)}, config {list(want)}")
    return "; ".join(parts)
