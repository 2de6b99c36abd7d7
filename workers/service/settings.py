"""Settings of the stream workers: one frozen dataclass, from options and METALLM_* env."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, get_args, get_type_hints

from bandit.errors import ConfigError
from bandit.floors import DEFAULT_FLOOR_LABELS, DEFAULT_FLOOR_SHARE, FloorConfig

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
DEFAULT_BREAKER_FAILURES = 5  # failed calls in a row (3 attempts per arm: two queries' worth)
DEFAULT_BREAKER_COOLDOWN_S = 10.0
# How long a query waits for a healthy arm before its error response: long enough to ride
# out a provider's brief outage, well below a client's usual timeout.
DEFAULT_NO_ARM_WAIT_S = 60.0
# One active learner per policy, under a stable name: its unacknowledged feedback entries
# (learned but not yet in a snapshot) are then its own again after a restart.
DEFAULT_LEARNER_CONSUMER = "learner"
DECISION_GRACE_S = 600  # decision records outlive the reward wait by this much
# A learned:{id} marker outlives the decision record it guards by at least this much: it is
# set after the record was written (at the learner's commit) with the record's TTL plus this,
# so a label for that id can never find the record without the marker.
MARKER_MARGIN_S = 600
# Stream caps (entries, trimmed with MAXLEN ~ on each XADD). Measured with MEMORY USAGE: a
# response takes ~120 bytes of Redis memory with a one-word answer (overruling's), ~0.5 KB
# with a few hundred characters of answer, so a million cost 0.1-0.5 GB: hours of traffic
# at 100 q/s, ample for a reader that is merely slow, and no out-of-memory Redis. A feedback
# entry takes ~40 bytes (40 MB a million); the learner acknowledges them within seconds and
# the cap matters only with no learner running. A dead letter holds the query's text (~300
# bytes for 200 characters): 100k of them (~30 MB) are more than anyone reads.
DEFAULT_RESPONSES_MAXLEN = 1_000_000
DEFAULT_FEEDBACK_MAXLEN = 1_000_000
DEFAULT_DEAD_MAXLEN = 100_000
# The decision log (workers/service/decision_log.py): joined decisions kept for export, in
# entries; 0 = no log, the default: it costs the learner about a fifth of its throughput
# (scripts/bench_service.py). The README's "The decision log" gives its memory per entry.
DEFAULT_DECISION_LOG_MAXLEN = 0
# The length the demo's --export turns the log on with.
DECISION_LOG_ON_MAXLEN = 1_000_000
# Below the 60 s grace period of deploy/compose.yaml and deploy/k8s/*.yaml, leaving 15 s to
# mark what is left abandoned, save the model and close before SIGKILL.
DEFAULT_SHUTDOWN_DEADLINE_S = 45.0
# How long a repeated query id waits for the outcome of its first entry's LLM call.
DEFAULT_REPEAT_WAIT_S = 300.0
# Reconnecting to a lost Redis: an outage lasts seconds (a restart replays its AOF), not the
# milliseconds an LLM call's retry waits, so the waits grow to a few seconds.
DEFAULT_RECONNECT_BASE_S = 0.2
DEFAULT_RECONNECT_CAP_S = 5.0
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

    ``breaker_failures`` failed calls in a row take an arm out of the decision for
    ``breaker_cooldown_s``; a query with no healthy arm left waits up to ``no_arm_wait_s``
    for one before its error response (workers/service/breaker.py, dispatch.py).
    ``responses_maxlen``, ``feedback_maxlen``, ``dead_maxlen``: the most entries those
    streams keep (approximately; the oldest go first). ``shutdown_deadline_s``: how long a
    stopping router waits for its LLM calls before it abandons the rest (left pending for
    another router, which sends them again). ``repeat_wait_s``: how long a query whose id is
    already being answered waits for that answer before it gets an error.

    ``budget_usd_per_10k`` (USD per 10,000 queries) and ``budget_usd_per_hour`` (USD per
    hour, all routers together) are spend targets the learner's pacing controller holds by
    moving p (workers/service/pacing.py); 0 = the config's [budget] table decides (no
    target there: p stays the config's constant). ``accuracy_floor`` is not enforced: it is
    exported as a gauge (0 = not configured) for the alert on accuracy.

    ``reconnect_base_s`` and ``reconnect_cap_s``: the capped exponential backoff (full
    jitter, seconds) between PINGs to a lost Redis; after the first stop signal a worker
    still waits up to ``shutdown_deadline_s`` for a lost Redis to write its work in flight
    before it gives up and leaves that work pending for another worker.

    ``max_text_chars`` (characters of a query's ``text``, and of its ``meta``),
    ``max_labels`` (labels in a query's ``labels``) and ``max_label_chars`` (characters of
    one label, in a query or in feedback) bound what a query may ask for; a query over them
    is dead-lettered (stage ``parse``) and answered with the reason.

    ``decision_log_maxlen``: how many joined decisions the decision log keeps (the oldest go
    first; 0 = no log); ``decision_log_texts``: keep each query's text in it (routers then
    store the text in the decision record), or, when false, only the context features.

    ``floor_share``, ``floor_labels``, ``floor_max_spend_usd``: the exploration floor of an
    arm added to the config (bandit/floors.py): at least ``floor_share`` of the decisions
    until it has ``floor_labels`` labels, or its labelled answers cost
    ``floor_max_spend_usd`` USD (0 = no cap); ``floor_share`` = 0 switches floors off."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    consumer: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE
    block_ms: int = DEFAULT_BLOCK_MS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    provider_concurrency: int = DEFAULT_PROVIDER_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S
    no_arm_wait_s: float = DEFAULT_NO_ARM_WAIT_S
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
    budget_usd_per_10k: float = 0.0
    budget_usd_per_hour: float = 0.0
    accuracy_floor: float = 0.0
    embedder_process: bool = True
    embedder_threads: int = 0
    responses_maxlen: int = DEFAULT_RESPONSES_MAXLEN
    feedback_maxlen: int = DEFAULT_FEEDBACK_MAXLEN
    dead_maxlen: int = DEFAULT_DEAD_MAXLEN
    shutdown_deadline_s: float = DEFAULT_SHUTDOWN_DEADLINE_S
    repeat_wait_s: float = DEFAULT_REPEAT_WAIT_S
    reconnect_base_s: float = DEFAULT_RECONNECT_BASE_S
    reconnect_cap_s: float = DEFAULT_RECONNECT_CAP_S
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_labels: int = DEFAULT_MAX_LABELS
    max_label_chars: int = DEFAULT_MAX_LABEL_CHARS
    decision_log_maxlen: int = DEFAULT_DECISION_LOG_MAXLEN
    decision_log_texts: bool = True
    floor_share: float = DEFAULT_FLOOR_SHARE
    floor_labels: int = DEFAULT_FLOOR_LABELS
    floor_max_spend_usd: float = 0.0

    def __post_init__(self) -> None:
        positive = ("batch_size", "block_ms", "max_in_flight", "provider_concurrency", "max_attempts",
                    "max_deliveries", "claim_idle_ms", "snapshot_every_updates", "breaker_failures",
                    "responses_maxlen", "feedback_maxlen", "dead_maxlen")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be ≥ 1")
        for name in (
            "backoff_base_s",
            "backoff_cap_s",
            "reward_wait_s",
            "snapshot_every_s",
            "reload_check_s",
            "breaker_cooldown_s",
            "shutdown_deadline_s",
            "repeat_wait_s",
            "reconnect_base_s",
            "reconnect_cap_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)} must be > 0 seconds")
        if not (math.isfinite(self.no_arm_wait_s) and self.no_arm_wait_s >= 0):
            raise ConfigError(f"no_arm_wait_s = {self.no_arm_wait_s} must be ≥ 0 seconds")
        if self.reconnect_cap_s < self.reconnect_base_s:
            raise ConfigError(f"reconnect_cap_s = {self.reconnect_cap_s} must be ≥ reconnect_base_s "
                              f"= {self.reconnect_base_s} seconds")  # fmt: skip
        if self.default_reward is not None and not 0 <= self.default_reward <= 1:
            raise ConfigError(f"default_reward = {self.default_reward} must be in [0, 1] or unset")
        if not self.prefix:
            raise ConfigError("prefix must be a non-empty string such as 'metallm:'")
        for name in ("budget_usd_per_10k", "budget_usd_per_hour"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} = {value} must be ≥ 0 USD (0 = none)")
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
        if self.decision_log_maxlen < 0:
            raise ConfigError(
                f"decision_log_maxlen = {self.decision_log_maxlen} must be ≥ 0 (0 = no log)"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port = {self.metrics_port} must be a port number (0 = off)")
        if not (math.isfinite(self.floor_max_spend_usd) and self.floor_max_spend_usd >= 0):
            raise ConfigError(f"floor_max_spend_usd = {self.floor_max_spend_usd} must be ≥ 0 USD (0 = no cap)")  # fmt: skip
        self.floor_config()  # floor_share and floor_labels in range

    def floor_config(self) -> FloorConfig:
        """The exploration floor of a new arm (bandit.floors)."""
        return FloorConfig(self.floor_share, self.floor_labels, self.floor_max_spend_usd or None)

    def decision_ttl_s(self) -> int:
        """Seconds a decision record lives after the router writes it: the reward wait plus
        ``DECISION_GRACE_S``, so a label (or the default reward) at the end of the wait still
        finds it."""
        return math.ceil(self.reward_wait_s + DECISION_GRACE_S)

    def marker_ttl_s(self) -> int:
        """Seconds a ``learned:{id}`` marker lives after the learner's commit sets it. The
        commit comes after the record was written, so the marker outlives the record."""
        return self.decision_ttl_s() + MARKER_MARGIN_S

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

    @property
    def decisions(self) -> str:
        """The decision log: each joined decision, appended at the learner's commit."""
        return f"{self.prefix}decisions"

    def decision(self, query_id: str) -> str:
        return f"{self.prefix}decision:{query_id}"

    def router_alive(self, consumer: str) -> str:
        """A router's liveness key: it exists while the router renews its claims."""
        return f"{self.prefix}router:{consumer}"

    def learned(self, query_id: str) -> str:
        return f"{self.prefix}learned:{query_id}"

    @property
    def budget_p(self) -> str:
        """The p the pacing controller set; every router reads it each batch."""
        return f"{self.prefix}budget:p"

    @property
    def budget_state(self) -> str:
        """The pacing controller's state (JSON), written with ``budget_p``."""
        return f"{self.prefix}budget:state"

    @property
    def explore_floor(self) -> str:
        """Hash arm name → least probability per decision (the learner writes it at each
        commit; every router reads it each batch)."""
        return f"{self.prefix}explore_floor"

    @property
    def explore_floor_state(self) -> str:
        """The learner's exploration floors (JSON, ``ArmFloors.to_dict``), committed with it."""
        return f"{self.prefix}explore_floor:state"

    def spend_bucket(self, bucket: int) -> str:
        """Hash of the spend (``usd``) and answers (``queries``) of one time bucket."""
        return f"{self.prefix}spend:{bucket}"


ROUTERS_GROUP = "routers"
LEARNERS_GROUP = "learners"
