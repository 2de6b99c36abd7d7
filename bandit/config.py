"""One TOML file configures a routing task: its labels, the arms, the policy, the embedder.

[task]
name = "overruling"
labels = ["Yes", "No"]

[policy]            # PolicyConfig fields
mode = "decoupled"

[embedder]          # EmbedderConfig fields
max_seq_length = 256
backend = "onnx"    # or "torch" (sentence-transformers itself)

[drift]             # DriftConfig fields (bandit/drift.py), all optional
detector = "page_hinkley"

[[arms]]            # Arm fields, one table per arm, in action order
name = "gpt-4"
provider = "openai"
model_id = "gpt-4"
price_per_1k_input_usd = 0.03
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bandit.arms import ArmCatalogue
from bandit.drift import DriftConfig
from bandit.embedder import EmbedderConfig
from bandit.errors import ConfigError
from bandit.policy import PolicyConfig

SECTIONS = ("task", "policy", "embedder", "arms", "service", "budget", "drift")


@dataclass(frozen=True)
class TaskConfig:
    name: str = "default"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("[task] name must be a non-empty string")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"[task] labels {list(self.labels)} contain a duplicate")


@dataclass(frozen=True)
class RoutingConfig:
    task: TaskConfig
    arms: ArmCatalogue
    policy: PolicyConfig
    embedder: EmbedderConfig
    # The [service] table, kept as data: the stream workers validate it (workers/service/settings.py).
    service: Mapping[str, Any] = field(default_factory=dict)
    # The [budget] table (spend target and pacing knobs), kept as data for the same reason
    # (workers/service/pacing.py).
    budget: Mapping[str, Any] = field(default_factory=dict)
    # The [drift] table: the learner's per-arm drift detectors (bandit/drift.py).
    drift: DriftConfig = field(default_factory=DriftConfig)


def _section(cls: type, data: dict[str, Any], name: str) -> Any:
    allowed = {f.name for f in fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(
            f"[{name}]: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from exc


def parse_config(data: dict[str, Any], source: str = "<config>") -> RoutingConfig:
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {sorted(unknown)}; allowed: {list(SECTIONS)}"
        )
    if "arms" not in data:
        raise ConfigError(f"{source}: no [[arms]] tables: list the LLMs the router may use")
    task = dict(data.get("task", {}))
    task["labels"] = tuple(task.get("labels", ()))
    return RoutingConfig(
        task=_section(TaskConfig, task, "task"),
        arms=ArmCatalogue.from_dicts(data["arms"]),
        policy=PolicyConfig.from_mapping(data.get("policy", {})),
        embedder=_section(EmbedderConfig, dict(data.get("embedder", {})), "embedder"),
        service=dict(data.get("service", {})),
        budget=dict(data.get("budget", {})),
        drift=DriftConfig.from_mapping(data.get("drift", {})),
    )


def load_config(path: str | Path) -> RoutingConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path))


def builtin_config(dataset: str) -> RoutingConfig:
    """The shipped config for a recorded data set (bandit/configs/NAME.toml)."""
    ref = resources.files("bandit") / "configs" / f"{dataset}.toml"
    if not ref.is_file():
        raise ConfigError(f"no built-in config for data set {dataset!r}")
    return parse_config(tomllib.loads(ref.read_text()), f"bandit/configs/{dataset}.toml")
