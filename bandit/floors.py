"""Exploration floors: a guaranteed share of the decisions for an arm that is new (or whose
model needs re-learning), until it has enough labels or has spent its allowance.

Pure state, no I/O: the learner keeps one ``ArmFloors``, counts each labelled answer of an
arm in it (``labelled``) and publishes ``floors()`` for the routers, which pass it to
``Policy.decide_lines(floor=...)`` (``bandit.exploration.with_floor``): the pmf an arm is
drawn from, and logged with, already holds the floor.

A floor ends after ``labels`` labels of its arm, or once the answers labelled during the
floor cost ``max_spend_usd`` (when set), whichever comes first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bandit.errors import ConfigError

DEFAULT_FLOOR_SHARE = 0.05  # at least 1 query in 20 for a new arm
DEFAULT_FLOOR_LABELS = 150  # labels of the arm after which its floor ends
# The floors of all arms together never take more than this share of the decisions: the
# policy's own choice keeps at least the rest (exploration.with_floor needs a sum below 1).
MAX_TOTAL_FLOOR = 0.5


@dataclass(frozen=True)
class FloorConfig:
    """``share``: an arm's least probability per decision while its floor lasts (0-0.5);
    ``labels``: labels of the arm that end the floor (≥ 1); ``max_spend_usd``: USD its
    labelled answers may cost during the floor (None: no cap)."""

    share: float = DEFAULT_FLOOR_SHARE
    labels: int = DEFAULT_FLOOR_LABELS
    max_spend_usd: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.share) and 0 <= self.share <= MAX_TOTAL_FLOOR):
            raise ConfigError(
                f"floor share = {self.share} must be in [0, {MAX_TOTAL_FLOOR}] (0 = no floor)"
            )
        if isinstance(self.labels, bool) or not isinstance(self.labels, int) or self.labels < 1:
            raise ConfigError(f"floor labels = {self.labels!r} must be an integer ≥ 1")
        if self.max_spend_usd is not None and not (
            math.isfinite(self.max_spend_usd) and self.max_spend_usd > 0
        ):
            raise ConfigError(
                f"floor max_spend_usd = {self.max_spend_usd} must be > 0 USD (or unset: no cap)"
            )


@dataclass
class Floor:
    """One arm's floor: its share, the labels still to come and the USD spent so far."""

    share: float
    labels_left: int
    spent_usd: float = 0.0


class ArmFloors:
    """The floors of one policy's arms (``arm_names``, the policy's order)."""

    def __init__(self, config: FloorConfig, arm_names: Sequence[str]) -> None:
        self.config = config
        self.arm_names = tuple(arm_names)
        self.active: dict[str, Floor] = {}

    def set_arms(self, arm_names: Sequence[str]) -> None:
        """Follow an arm migration: floors of arms kept stay, those of removed arms end."""
        self.arm_names = tuple(arm_names)
        self.active = {n: f for n, f in self.active.items() if n in self.arm_names}

    def added(self, arm: str) -> None:
        """``arm`` just joined: ``config.share`` of the decisions until ``config.labels``
        labels (or the spend cap)."""
        self.boost(arm, self.config.share, self.config.labels)

    def boost(self, arm: str, share: float, labels: int) -> None:
        """Give ``arm`` at least ``share`` (at most ``MAX_TOTAL_FLOOR``) of the decisions for
        its next ``labels`` labels (a drifted arm to re-learn); a floor it has already is
        raised, never lowered; a share or labels ≤ 0 give none."""
        self._check_arm(arm)
        if share <= 0 or labels <= 0:
            return
        share = min(share, MAX_TOTAL_FLOOR)
        FloorConfig(share, labels)  # the same bounds as the configured floor
        old = self.active.get(arm)
        if old is not None:
            share, labels = max(share, old.share), max(labels, old.labels_left)
        self.active[arm] = Floor(share, labels, old.spent_usd if old else 0.0)

    def labelled(self, arm: str, cost_usd: float = 0.0) -> bool:
        """Count one labelled answer of ``arm`` that cost ``cost_usd``; True when this ends
        its floor. Arms without a floor (or unknown) are ignored."""
        floor = self.active.get(arm)
        if floor is None:
            return False
        floor.labels_left -= 1
        floor.spent_usd += max(0.0, float(cost_usd))
        cap = self.config.max_spend_usd
        if floor.labels_left <= 0 or (cap is not None and floor.spent_usd >= cap):
            del self.active[arm]
            return True
        return False

    def floors(self) -> np.ndarray:
        """Each arm's least probability, shape (n_arms,), in ``arm_names`` order; scaled
        down together when they would take more than ``MAX_TOTAL_FLOOR``."""
        out = np.array([self.active[n].share if n in self.active else 0.0
                        for n in self.arm_names], dtype=np.float64)  # fmt: skip
        total = out.sum()
        return out * (MAX_TOTAL_FLOOR / total) if total > MAX_TOTAL_FLOOR else out

    def by_name(self) -> dict[str, float]:
        """The floors of the arms that have one, by arm name (what routers read)."""
        return {n: float(f) for n, f in zip(self.arm_names, self.floors(), strict=True) if f > 0}

    def to_dict(self) -> dict[str, Any]:
        return {"arms": list(self.arm_names),
                "active": {n: asdict(f) for n, f in self.active.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, config: FloorConfig, data: Mapping[str, Any]) -> ArmFloors:
        """The state ``to_dict`` wrote (ConfigError when it is not that shape)."""
        try:
            floors = cls(config, [str(n) for n in data["arms"]])
            for name, f in dict(data["active"]).items():
                floor = Floor(float(f["share"]), int(f["labels_left"]), float(f["spent_usd"]))
                if name in floors.arm_names and floor.share > 0 and floor.labels_left > 0:
                    floors.active[str(name)] = floor
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"exploration floor state is not usable: {exc!r}") from None
        return floors

    def _check_arm(self, arm: str) -> None:
        if arm not in self.arm_names:
            raise ConfigError(f"no arm {arm!r} to give a floor; arms: {', '.join(self.arm_names)}")
