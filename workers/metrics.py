"""Prometheus metrics of the router and the learner. The registry is passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REWARD_BUCKETS = (-1.0, -0.5, -0.1, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.routed = Counter("metallm_queries_routed_total", "Queries answered, by arm that answered",
                              ["arm"], registry=r)  # fmt: skip
        self.explored = Counter("metallm_decisions_total", "Decisions, explored or exploited",
                                ["kind"], registry=r)  # fmt: skip
        self.fallbacks = Counter("metallm_fallbacks_total", "Queries answered by a fallback arm",
                                 ["from_arm"], registry=r)  # fmt: skip
        self.provider_errors = Counter("metallm_provider_errors_total", "Failed LLM calls",
                                       ["arm", "kind"], registry=r)  # fmt: skip
        self.failed = Counter(
            "metallm_queries_failed_total", "Queries every arm failed", registry=r
        )
        self.dead_letters = Counter("metallm_dead_letters_total", "Entries sent to the dead-letter stream",
                                    ["stage"], registry=r)  # fmt: skip
        self.latency = Histogram("metallm_query_latency_seconds", "Read to response written",
                                 buckets=LATENCY_BUCKETS_S, registry=r)  # fmt: skip
        self.stage = Histogram("metallm_stage_latency_seconds", "Time per batch stage",
                               ["stage"], buckets=LATENCY_BUCKETS_S, registry=r)  # fmt: skip
        self.batch_size = Histogram("metallm_batch_size", "Queries per batch read", buckets=BATCH_BUCKETS,
                                    registry=r)  # fmt: skip
        self.in_flight = Gauge("metallm_llm_calls_in_flight", "LLM calls under way", registry=r)
        self.stream_lag = Gauge("metallm_stream_lag", "Entries not yet delivered to the group",
                                ["stream"], registry=r)  # fmt: skip
        self.pending = Gauge("metallm_stream_pending", "Entries delivered, not acknowledged",
                             ["stream"], registry=r)  # fmt: skip
        self.feedback = Counter("metallm_feedback_total", "Feedback by outcome (joined, unknown, "
                                "duplicate, expired, defaulted, invalid)", ["outcome"], registry=r)  # fmt: skip
        # A histogram, not a counter: rewards a − p·c can be negative.
        self.reward = Histogram("metallm_reward", "Rewards learned, by arm", ["arm"],
                                buckets=REWARD_BUCKETS, registry=r)  # fmt: skip
        self.correct = Counter("metallm_correct_total", "Labelled answers that were right, by arm",
                               ["arm"], registry=r)  # fmt: skip
        self.labelled = Counter("metallm_labelled_total", "Answers whose label arrived, by arm",
                                ["arm"], registry=r)  # fmt: skip
        self.spend = Counter(
            "metallm_spend_usd_total", "USD spent on LLM calls, by arm", ["arm"], registry=r
        )
        self.updates = Counter("metallm_policy_updates_total", "Policy updates learned", registry=r)
        self.model_version = Gauge(
            "metallm_model_version", "Version of the model in use", registry=r
        )
        self.model_published = Gauge("metallm_model_published_timestamp_seconds",
                                     "When the model in use was published (unix time)", registry=r)  # fmt: skip
