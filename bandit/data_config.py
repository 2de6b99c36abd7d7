"""The routing config of an imported data file: checked against the file's arms, or built
from them when the user gives no config."""

from __future__ import annotations

import numpy as np

from bandit.arms import Arm, ArmCatalogue
from bandit.config import RoutingConfig, TaskConfig
from bandit.datasets import Dataset
from bandit.embedder import EmbedderConfig
from bandit.errors import ConfigError
from bandit.policy import PolicyConfig


def check_arms(config: RoutingConfig, ds: Dataset, config_name: str, data_name: str) -> None:
    """Raise unless the config's arm names are the data's (in any order), naming both sides."""
    have, want = set(ds.arms), set(config.arms.names)
    if have == want:
        return
    parts = []
    if want - have:
        parts.append(f"only in {config_name}: {sorted(want - have)}")
    if have - want:
        parts.append(f"only in {data_name}: {sorted(have - want)}")
    raise ConfigError(
        f"the arms of {config_name} and {data_name} differ ({'; '.join(parts)}); rename the "
        "arms in the config or in the data so they match"
    )


def mean_costs(ds: Dataset) -> np.ndarray:
    """Each arm's mean recorded USD per call over its recorded cells, shape (n_arms,)."""
    obs = ds.observed_mask
    return np.array(
        [float(ds.cost_usd[obs[:, j], j].mean()) if obs[:, j].any() else 0.0
         for j in range(len(ds.arms))]
    )  # fmt: skip


def config_from_data(ds: Dataset) -> RoutingConfig:
    """A config for ``ds`` alone: one replay arm per data arm (model_id = its name) at its
    mean recorded cost per call, the task's labels from the data, default policy and
    embedder."""
    costs = mean_costs(ds)
    arms = tuple(
        Arm(name=name, provider="replay", model_id=name, price_per_call_usd=float(cost))
        for name, cost in zip(ds.arms, costs, strict=True)
    )
    if max(costs) <= 0:
        raise ConfigError(
            f"{ds.name}: every arm's recorded cost is 0 USD; give the arms prices with --config"
        )
    return RoutingConfig(
        task=TaskConfig(name=ds.name, labels=ds.label_set),
        arms=ArmCatalogue(arms),
        policy=PolicyConfig(),
        embedder=EmbedderConfig(),
    )
