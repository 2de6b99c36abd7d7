"""Arm migration in the live service: a policy made for one arm list, used with another.

The config's ``[[arms]]`` is the truth: a snapshot loaded at start, published by the
learner or held when the config is reloaded is moved to the config's arms and prices with
``Policy.with_arms`` (kept arms keep their predictions exactly, a new arm starts empty, a
removed arm leaves the decision), and the change is logged in one line. A decision record
names its arm (``arm_name``), so the learner finds the arm in its own list by name: router
and learner may run different arm lists for the seconds between their reloads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from bandit.arms import ArmCatalogue
from bandit.errors import UnknownArmError
from bandit.policy import Policy

log = logging.getLogger(__name__)


def arm_change(old_names: Sequence[str], old_costs: np.ndarray, new_names: Sequence[str],
               new_costs: np.ndarray) -> str | None:  # fmt: skip
    """One line naming the arms added, removed and re-priced (normalised costs old → new),
    or None when names, order and costs are the same."""
    old = dict(zip(old_names, np.asarray(old_costs, dtype=float).tolist(), strict=True))
    new = dict(zip(new_names, np.asarray(new_costs, dtype=float).tolist(), strict=True))
    added = [n for n in new_names if n not in old]
    removed = [n for n in old_names if n not in new]
    repriced = [f"{n} {old[n]:.4g} → {new[n]:.4g}" for n in new_names
                if n in old and not np.isclose(old[n], new[n], rtol=1e-12, atol=0)]  # fmt: skip
    parts = [f"added {added}"] if added else []
    parts += [f"removed {removed}"] if removed else []
    parts += [f"re-priced (normalised cost) {', '.join(repriced)}"] if repriced else []
    if not parts and tuple(old_names) != tuple(new_names):
        parts.append(f"reordered to {list(new_names)}")
    return "; ".join(parts) or None


def conform(policy: Policy, arms: ArmCatalogue, what: str) -> Policy:
    """``policy`` over the catalogue's arms and normalised costs (itself when they are the
    same already), the change logged once, naming ``what`` was migrated."""
    costs = arms.normalised_costs()
    change = arm_change(policy.arm_names, policy.costs, arms.names, costs)
    if change is None:
        return policy
    log.warning("%s (model version %d) migrated to the config's arms: %s", what,
                policy.version, change)  # fmt: skip
    return policy.with_arms(arms.names, costs)


def arm_index(policy: Policy, record: Mapping[str, str]) -> int:
    """The index in ``policy`` of the arm a decision record names (``arm_name``; records
    without it: ``arm``, the index the router used). UnknownArmError when this policy has
    no such arm: it was retired here, or added to a router's config first."""
    name = record.get("arm_name")
    if name is None:
        return int(record["arm"])
    try:
        return policy.arm_names.index(name)
    except ValueError:
        raise UnknownArmError(
            f"arm {name!r} is not in the learner's config ({', '.join(policy.arm_names)}): "
            "retired, or added to a router first; reload the learner's config (SIGHUP) to learn it"
        ) from None
