"""Prometheus metrics of the router and the learner. The registry is passed in."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bandit.ope import SCOPES as OPE_SCOPES
from bandit.ope import MetricEstimate
from workers.service.providers.base import ERROR_KINDS

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REWARD_BUCKETS = (-1.0, -0.5, -0.1, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
# Label values the workers use; their series are exported at 0 from the start, so that
# dashboards show 0 instead of "no data" and increase() in an alert sees the first event.
ROUTER_DEAD_LETTER_STAGES = ("decode", "parse", "deliveries")
LEARNER_DEAD_LETTER_STAGES = ("decode", "feedback")
FEEDBACK_OUTCOMES = ("joined", "unknown", "duplicate", "not_learnable", "expired", "defaulted",
                     "invalid", "unknown_arm")  # fmt: skip
RELOAD_RESULTS = ("applied", "refused")
DECISION_KINDS = ("explored", "exploited")
STAGES = ("embed", "decide", "dispatch")
OPE_BOUNDS = ("estimate", "lo", "hi")


class RewardMetric:
    """Rewards a − p·c learned, by arm: their distribution (histogram ``metallm_reward``) and
    their sum as two counters, ``metallm_reward_gain_total`` (positive rewards) and
    ``metallm_reward_loss_total`` (minus the negative ones). client_python leaves out the
    ``_sum`` of a histogram with negative buckets, and a counter cannot go down; two counters
    keep the sum exact across restarts. Mean reward over a window:
    (rate(gain) − rate(loss)) / rate(metallm_reward_count)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram("metallm_reward", "Rewards learned, by arm", ["arm"],
                                   buckets=REWARD_BUCKETS, registry=registry)  # fmt: skip
        self.gain = Counter("metallm_reward_gain_total", "Sum of the positive rewards learned, by arm",
                            ["arm"], registry=registry)  # fmt: skip
        self.loss = Counter("metallm_reward_loss_total", "Minus the sum of the negative rewards learned, "
                            "by arm", ["arm"], registry=registry)  # fmt: skip

    def labels(self, arm: str) -> _ArmReward:
        return _ArmReward(self, arm)


class _ArmReward:
    def __init__(self, metric: RewardMetric, arm: str) -> None:
        self.histogram = metric.histogram.labels(arm)
        self.gain, self.loss = metric.gain.labels(arm), metric.loss.labels(arm)

    def observe(self, reward: float) -> None:
        self.histogram.observe(reward)
        if reward >= 0:
            self.gain.inc(reward)
        else:
            self.loss.inc(-reward)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.routed = Counter("metallm_queries_routed_total", "Queries answered, by arm that answered",
                              ["arm"], registry=r)  # fmt: skip
        self.explored = Counter("metallm_decisions_total", "Decisions, explored or exploited",
                                ["kind"], registry=r)  # fmt: skip
        self.fallbacks = Counter("metallm_fallbacks_total", "Queries answered by an arm drawn again after the first failed",
                                 ["from_arm"], registry=r)  # fmt: skip
        self.provider_errors = Counter("metallm_provider_errors_total", "Failed LLM calls",
                                       ["arm", "kind"], registry=r)  # fmt: skip
        self.failed = Counter(
            "metallm_queries_failed_total", "Queries every arm failed", registry=r
        )
        self.arm_open = Gauge("metallm_arm_open", "1 while an arm's circuit breaker keeps it out "
                              "of the decision", ["arm"], registry=r)  # fmt: skip
        self.breaker_trips = Counter("metallm_breaker_trips_total", "Times an arm's circuit "
                                     "breaker opened", ["arm"], registry=r)  # fmt: skip
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
                                "duplicate, not_learnable, expired, defaulted, invalid, unknown_arm)", ["outcome"], registry=r)  # fmt: skip
        self.explore_floor = Gauge("metallm_explore_floor", "Least share of the decisions an arm gets "
                                   "while its exploration floor lasts (0: none)", ["arm"], registry=r)  # fmt: skip
        self.config_reloads = Counter("metallm_config_reloads_total", "Config reloads (SIGHUP), "
                                      "applied or refused", ["result"], registry=r)  # fmt: skip
        self.reward = RewardMetric(r)
        self.correct = Counter("metallm_correct_total", "Labelled answers that were right, by arm",
                               ["arm"], registry=r)  # fmt: skip
        self.labelled = Counter("metallm_labelled_total", "Answers whose label arrived, by arm",
                                ["arm"], registry=r)  # fmt: skip
        self.spend = Counter(
            "metallm_spend_usd_total", "USD spent on LLM calls, by arm", ["arm"], registry=r
        )
        # Per-arm drift detectors on the labels' residuals (workers/service/drift_watch.py).
        self.drift = Counter("metallm_arm_drift_total", "Changes detected in an arm's correctness "
                             "residuals (observed − predicted)", ["arm"], registry=r)  # fmt: skip
        self.drift_boost = Gauge("metallm_arm_drift_boost", "1 while an arm's exploration share is "
                                 "raised after a detected drift", ["arm"], registry=r)  # fmt: skip
        self.updates = Counter("metallm_policy_updates_total", "Policy updates learned", registry=r)
        self.model_version = Gauge(
            "metallm_model_version", "Version of the model in use", registry=r
        )
        self.model_published = Gauge("metallm_model_published_timestamp_seconds",
                                     "When the model in use was published (unix time)", registry=r)  # fmt: skip
        # What the operator configured, exported so that alerts and the dashboard compare
        # live figures with it (0 = not configured).
        self.budget = Gauge("metallm_budget_usd_per_hour",
                            "Configured spend budget, USD per hour, all routers together (0 = none)",
                            registry=r)  # fmt: skip
        # Budget pacing (workers/service/pacing.py): the learner's controller sets all four;
        # a router sets p to the one it decided its last batch with.
        self.budget_p = Gauge("metallm_budget_p", "Price weight p of cost against accuracy in "
                              "use (the config's constant without a budget)", registry=r)  # fmt: skip
        self.spend_per_10k = Gauge("metallm_spend_usd_per_10k", "Spend measured over the pacing "
                                   "window, USD per 10k queries answered (0 = none answered)",
                                   registry=r)  # fmt: skip
        self.budget_target_per_10k = Gauge("metallm_budget_target_usd_per_10k", "Spend target the "
                                           "pacing controller holds, USD per 10k queries (0 = none)",
                                           registry=r)  # fmt: skip
        self.budget_shortfall_per_10k = Gauge("metallm_budget_shortfall_usd_per_10k", "USD per 10k "
                                              "queries by which even the cheapest arm exceeds the "
                                              "target (0 = the target can be met)", registry=r)  # fmt: skip
        # The worker's own link to Redis (the probes ask Redis themselves): an outage is
        # connected 0 until the worker has reconnected, each reconnect counted once.
        self.redis_connected = Gauge("metallm_redis_connected",
                                     "1 while the worker is connected to Redis, 0 during an outage",
                                     registry=r)  # fmt: skip
        self.redis_reconnects = Counter("metallm_redis_reconnects_total",
                                        "Times the worker got Redis back after losing it",
                                        registry=r)  # fmt: skip
        self.accuracy_floor = Gauge("metallm_accuracy_floor",
                                    "Configured lowest acceptable router accuracy over labelled "
                                    "answers, a fraction (0 = none)", registry=r)  # fmt: skip

        # Off-policy estimates (workers/service/evaluation.py), per target policy (live,
        # always:ARM, greedy:p=P, shadow:NAME): the SNIPS estimate and the Gaussian bounds.
        self.ope_accuracy = Gauge("metallm_ope_accuracy", "Estimated accuracy of a routing policy "
                                  "on the labelled traffic, a fraction (bound: estimate, lo, hi of "
                                  "the 95 % interval)", ["policy", "bound", "scope"], registry=r)  # fmt: skip
        self.ope_cost = Gauge("metallm_ope_cost_per_10k_usd", "Estimated cost of a routing policy "
                              "on the labelled traffic, USD per 10k queries (bound: estimate, lo, hi)",
                              ["policy", "bound", "scope"], registry=r)  # fmt: skip

    def set_ope(self, policy: str, scope: str, acc: MetricEstimate, cost: MetricEstimate) -> None:
        """One policy's estimates over ``scope``; a bound not defined yet is left out."""
        for gauge, est in ((self.ope_accuracy, acc), (self.ope_cost, cost)):
            for bound, value in zip(OPE_BOUNDS, (est.value, *est.gaussian), strict=True):
                if value is None:
                    with contextlib.suppress(KeyError):
                        gauge.remove(policy, bound, scope)
                else:
                    gauge.labels(policy, bound, scope).set(value)

    def forget_ope(self, policy: str) -> None:
        """Drop a policy's series (a shadow candidate removed or promoted)."""
        for gauge in (self.ope_accuracy, self.ope_cost):
            for bound in OPE_BOUNDS:
                for scope in OPE_SCOPES:
                    with contextlib.suppress(KeyError):
                        gauge.remove(policy, bound, scope)

    def init_router(self, arms: Sequence[str]) -> None:
        """Export the router's labelled series at 0 for every arm, stage and error kind."""
        for arm in arms:
            self.routed.labels(arm)
            self.spend.labels(arm)
            self.fallbacks.labels(arm)
            self.arm_open.labels(arm).set(0)
            self.breaker_trips.labels(arm)
            for kind in ERROR_KINDS:
                self.provider_errors.labels(arm, kind)
        for kind in DECISION_KINDS:
            self.explored.labels(kind)
        for stage in ROUTER_DEAD_LETTER_STAGES:
            self.dead_letters.labels(stage)
        for stage in STAGES:
            self.stage.labels(stage)

    def breaker_changed(self, arm: str, is_open: bool) -> None:
        self.arm_open.labels(arm).set(int(is_open))
        if is_open:
            self.breaker_trips.labels(arm).inc()

    def init_learner(self, arms: Sequence[str]) -> None:
        """Export the learner's labelled series at 0 for every arm and feedback outcome."""
        for arm in arms:
            self.correct.labels(arm)
            self.labelled.labels(arm)
            self.reward.labels(arm)
            self.drift.labels(arm)
            self.drift_boost.labels(arm).set(0)
            self.explore_floor.labels(arm)
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome)
        for stage in LEARNER_DEAD_LETTER_STAGES:
            self.dead_letters.labels(stage)
