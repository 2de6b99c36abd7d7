"""Whether a trained policy snapshot may route under a config, and what it routes with.

A snapshot records what it was trained for (bandit/snapshot.py: arm names, costs, the
embedding dimension, the policy settings). Before a service starts from one that a user
names (``--model FILE``), ``fit_to_config`` checks it against the config: another embedding
dimension or reward mode is refused (its weights mean nothing under the config), and so are
other arms, named by ``bandit.arms.arm_difference``, unless a migration is asked for
(``Policy.with_arms``: kept arms keep their weights, a new arm starts untrained). The
config's prices and decision settings (p, exploration) apply; what was learned (learning
rate, passes, word features) stays the snapshot's.
"""

from __future__ import annotations

import numpy as np

from bandit.arms import arm_difference
from bandit.config import RoutingConfig
from bandit.errors import PolicyError
from bandit.policy import Policy

# What the config decides at routing time, taken over by a snapshot in decoupled mode.
DECISION_SETTINGS = ("p", "epsilon", "explorer", "explorer_param", "online_learning_rate")


def fit_to_config(
    policy: Policy,
    config: RoutingConfig,
    dim: int,
    *,
    migrate: bool = False,
    source: str = "snapshot",
) -> tuple[Policy, list[str]]:
    """The policy to route with and the changes made, one line each (to log). Raises
    PolicyError, naming ``source`` and the difference, when it cannot route under ``config``."""
    if policy.dim != dim:
        raise PolicyError(
            f"{source} was trained on {policy.dim}-dimensional embeddings, the config's embedder "
            f"gives {dim}: train a snapshot with this config (metallm train)"
        )
    if policy.config.mode != config.policy.mode:
        raise PolicyError(
            f"{source} was trained in {policy.config.mode!r} mode, the config's [policy] mode is "
            f"{config.policy.mode!r}: train a snapshot with this config (metallm train)"
        )
    notes: list[str] = []
    names, costs = config.arms.names, config.arms.normalised_costs()
    diff = arm_difference(policy.arm_names, names)
    if diff and not migrate:
        raise PolicyError(
            f"{source} was trained for other arms than the config's: {diff}. Train a snapshot "
            "for this config (metallm train), or pass --migrate-arms to start from it anyway "
            "(kept arms keep what they learned, new arms start untrained)"
        )
    if diff:
        notes.append(f"migrated {source} to the config's arms: {diff}")
        policy = policy.with_arms(names, costs)
    elif not np.allclose(policy.costs, costs, rtol=1e-9, atol=1e-12):
        notes.append(f"{source}: arm costs from the config's prices (the snapshot's differ)")
        policy = policy.with_arms(names, costs)
    if policy.config.mode == "decoupled":
        wanted = {k: getattr(config.policy, k) for k in DECISION_SETTINGS}
        changed = {k: v for k, v in wanted.items() if getattr(policy.config, k) != v}
        if changed:
            notes.append(f"{source}: the config's decision settings apply: {changed}")
            policy = policy.with_config(policy.config.replace(**changed))
    return policy, notes
