"""Settings of the stream workers: one frozen dataclass, from options and METALLM_* env."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, get_args, get_type_hints

from bandit.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "metallm:"
# Queries per XREADGROUP. The embedder sorts a batch by length and runs it 32 at a time, so
# a bigger read pads less: 77 → 121 queries/s from 32 to 128 (scripts/bench_service.py).
DEFAULT_BATCH_SIZE = 128
DEFAULT_BLOCK_MS = 200
DEFAULT_MAX_IN_FLIGHT = 256  # LLM calls at once, all providers
DEFAULT_PROVIDER_CONCURRENCY = 64  # LLM calls at once, per provider
DEFAULT_MAX_ATTEMPTS = 3  # per arm, before falling back to the next-best arm
DEFAULT_BACKOFF_BASE_S = 0.1
DEFAULT_BACKOFF_CAP_S = 5.0
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_CLAIM_IDLE_MS = 30_000
DEFAULT_REWARD_WAIT_S = 3600
DEFAULT_SNAPSHOT_EVERY_UPDATES = 100
DEFAULT_SNAPSHOT_EVERY_S = 10.0
DEFAULT_RELOAD_CHECK_S = 1.0
# A query's text, in characters. 32,000 characters are about 8k tokens: more than the
# embedder reads (it truncates at its max_seq_length) and than most arms' prompts are priced
# for, while a 1 MB text would be sent whole to every arm it falls back to.
DEFAULT_MAX_TEXT_CHARS = 32_000
DEFAULT_MAX_LABELS = 64  # labels in a query's own label set
DEFAULT_MAX_LABEL_CHARS = 200  # characters of one label


@dataclass(frozen=True)
class ServiceSettings:
    """``default_reward``: reward learned for a decision whose label never comes within
    ``reward_wait_s`` (None: such decisions are dropped and counted as expired).

    ``embedder_process``: run the router's embedder in a child process (the default; the
    event loop then has the GIL to itself) or, when false, in a thread of the router;
    ``embedder_threads``: the model's threads per batch (0 = one per core).

    ``budget_usd_per_hour`` and ``accuracy_floor`` are not enforced by the workers: they are
    exported as gauges (0 = not configured) for the alerts on spend and accuracy.

    ``max_text_chars`` (characters of a query's ``text``, and of its ``meta``),
    ``max_labels`` (labels in a query's ``labels``) and ``max_label_chars`` (characters of
    one label, in a query or in feedback) bound what a query may ask for; a query over them
    is dead-lettered (stage ``parse``) and answered with the reason."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    consumer: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE
    block_ms: int = DEFAULT_BLOCK_MS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    provider_concurrency: int = DEFAULT_PROVIDER_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS
    reward_wait_s: float = DEFAULT_REWARD_WAIT_S
    default_reward: float | None = None
    snapshot_every_updates: int = DEFAULT_SNAPSHOT_EVERY_UPDATES
    snapshot_every_s: float = DEFAULT_SNAPSHOT_EVERY_S
    reload_check_s: float = DEFAULT_RELOAD_CHECK_S
    model_dir: str = ""
    metrics_port: int = 0
    budget_usd_per_hour: float = 0.0
    accuracy_floor: float = 0.0
    embedder_process: bool = True
    embedder_threads: int = 0
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_labels: int = DEFAULT_MAX_LABELS
    max_label_chars: int = DEFAULT_MAX_LABEL_CHARS

    def __post_init__(self) -> None:
        positive = ("batch_size", "block_ms", "max_in_flight", "provider_concurrency", "max_attempts",
                    "max_deliveries", "claim_idle_ms", "snapshot_every_updates")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be ≥ 1")
        for name in (
            "backoff_base_s",
            "backoff_cap_s",
            "reward_wait_s",
            "snapshot_every_s",
            "reload_check_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)} must be > 0 seconds")
        if self.default_reward is not None and not 0 <= self.default_reward <= 1:
            raise ConfigError(f"default_reward = {self.default_reward} must be in [0, 1] or unset")
        if not self.prefix:
            raise ConfigError("prefix must be a non-empty string such as 'metallm:'")
        if not (math.isfinite(self.budget_usd_per_hour) and self.budget_usd_per_hour >= 0):
            raise ConfigError(
                f"budget_usd_per_hour = {self.budget_usd_per_hour} must be ≥ 0 USD (0 = none)"
            )
        if not 0 <= self.accuracy_floor <= 1:
            raise ConfigError(
                f"accuracy_floor = {self.accuracy_floor} must be a fraction in [0, 1] (0 = none)"
            )
        if not isinstance(self.embedder_process, bool):
            raise ConfigError(f"embedder_process = {self.embedder_process!r} must be true or false")
        if self.embedder_threads < 0:
            raise ConfigError(
                f"embedder_threads = {self.embedder_threads} must be ≥ 0 (0 = one per core)"
            )
        for name, most in (("max_text_chars", 10_000_000), ("max_labels", 10_000),
                           ("max_label_chars", 100_000)):  # fmt: skip
            value = getattr(self, name)
            if not 1 <= value <= most:
                raise ConfigError(f"{name} = {value} must be between 1 and {most}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port = {self.metrics_port} must be a port number (0 = off)")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        file: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> ServiceSettings:
        """The config file's [service] table, then METALLM_<FIELD> variables of ``env``
        (and REDIS_URL), then ``overrides`` (command-line options, None = not given); later
        ones win. ``env`` is read by the caller at the edge (``main``), never here."""
        allowed = {f.name for f in fields(cls)}
        unknown = set(file or {}) - allowed
        if unknown:
            raise ConfigError(
                f"[service]: unknown setting(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        values: dict[str, Any] = dict(file or {})
        if env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        for name, parse in _PARSERS.items():
            raw = env.get(f"METALLM_{name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError:
                kind = "bool (use true or false)" if parse is _boolean else parse.__name__
                raise ConfigError(
                    f"METALLM_{name.upper()} = {raw!r} is not a valid {kind}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _parser(annotation: Any) -> Callable[[str], Any]:
    """How an environment variable's text becomes a field of this type (``float | None``
    parses as float: an empty variable is the same as an unset one)."""
    kinds = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    kind = kinds[0]
    return _boolean if kind is bool else kind


_PARSERS: dict[str, Callable[[str], Any]] = {
    name: _parser(hint) for name, hint in get_type_hints(ServiceSettings).items()
}


@dataclass(frozen=True)
class Keys:
    """Redis key names, all under one prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def queries(self) -> str:
        return f"{self.prefix}queries"

    @property
    def responses(self) -> str:
        return f"{self.prefix}responses"

    @property
    def feedback(self) -> str:
        return f"{self.prefix}feedback"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    @property
    def model_bytes(self) -> str:
        return f"{self.prefix}model:bytes"

    @property
    def model_version(self) -> str:
        return f"{self.prefix}model:version"

    @property
    def model_published(self) -> str:
        """When the learner published the snapshot in ``model_bytes`` (unix time)."""
        return f"{self.prefix}model:published_at"

    @property
    def awaiting(self) -> str:
        """Sorted set of query ids by the time their label is due (for default rewards)."""
        return f"{self.prefix}awaiting"

    def decision(self, query_id: str) -> str:
        return f"{self.prefix}decision:{query_id}"

    def learned(self, query_id: str) -> str:
        return f"{self.prefix}learned:{query_id}"


ROUTERS_GROUP = "routers"
LEARNERS_GROUP = "learners"
