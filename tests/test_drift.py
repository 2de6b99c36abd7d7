"""Per-arm drift detection: the detectors on synthetic residuals (bandit/drift.py), the live
learner on a real Redis (workers/service/drift_watch.py), and the alert rule that names
the arm."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bandit.config import builtin_config, parse_config
from bandit.drift import DETECTORS, DriftConfig, DriftDetectors
from bandit.errors import ConfigError
from workers.harness.deploy_checks import rules
from workers.service.app import fresh_policy
from workers.service.drift_watch import DriftWatch, drift_state_key
from workers.service.learner import Learner
from workers.service.metrics import Metrics
from workers.service.settings import Keys, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
CFG = builtin_config("overruling")


def residual_stream(seed: int, n: int, shift_at: int | None, after: float = 0.35) -> np.ndarray:
    """Labels of a calibrated arm right 90 % of the time (P̂ = 0.9): residuals a − 0.9. From
    ``shift_at`` on it is right ``after`` of the time instead, still predicted at 0.9."""
    rng = np.random.default_rng(seed)
    p = np.full(n, 0.9)
    if shift_at is not None:
        p[shift_at:] = after
    return (rng.random(n) < p).astype(float) - 0.9


def detections(config: DriftConfig, residuals: np.ndarray) -> list[int]:
    det = DriftDetectors(config)
    return [t for t, r in enumerate(residuals) if det.update("gpt-4", r, 0.0) is not None]


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shift_is_detected_soon_and_the_stationary_stream_of_the_same_length_never(
    detector: str, seed: int
) -> None:
    config = DriftConfig(detector=detector)
    n, at = 3000, 2000
    hits = detections(config, residual_stream(seed, n, at))
    assert hits and at <= hits[0] < at + 60, hits
    assert detections(config, residual_stream(seed + 100, n, None)) == []


@pytest.mark.parametrize("detector", DETECTORS)
def test_no_detection_is_reported_before_min_labels(detector: str) -> None:
    config = DriftConfig(detector=detector, min_labels=500)
    hits = detections(config, residual_stream(0, 600, 100))  # a shift at label 100
    assert all(t >= 499 for t in hits), hits


def test_a_reported_detection_resets_the_arm_and_starts_its_boost() -> None:
    det = DriftDetectors(DriftConfig(boost_labels=5))
    events = [det.update("a", r, 0.0) for r in residual_stream(0, 2300, 2000)]
    (event,) = [e for e in events if e is not None]
    assert event.arm == "a" and abs(event.before) < 0.05 and event.after < -0.3
    assert det.detections() == {"a": 1}
    assert "arm 'a' drifted" in event.describe()
    # Reset: the labels count from the detection; the boost runs for 5 labels of the arm.
    t = next(t for t, e in enumerate(events) if e is not None)
    assert det.to_state()["a"]["labels"] == 2300 - 1 - t
    assert det.boost_left() == {}
    det.update("a", 0.0, 0.0)


def test_the_state_round_trip_carries_the_history_and_the_boost() -> None:
    det = DriftDetectors(DriftConfig(boost_labels=500))
    for r in residual_stream(3, 2100, 2000):
        det.update("gpt-4", r, 0.0)
    det.update("medium", 1.0, 0.5)
    back = DriftDetectors.from_state(json.loads(json.dumps(det.to_state())), det.config)
    assert back.to_state() == det.to_state()
    assert back.boost_left()["gpt-4"] == det.boost_left()["gpt-4"] > 0


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"detector": "cusum"}, "detector = 'cusum' is not one of: adwin, page_hinkley"),
        ({"delta": 1.5}, r"delta = 1.5 must be in \(0, 1\)"),
        ({"boost_share": 1.0}, r"boost_share = 1.0 must be in \[0, 1\)"),
        ({"min_labels": 0}, "min_labels = 0 must be an integer ≥ 1"),
        ({"window": 3}, r"unknown field\(s\) \['window'\]"),
    ],
)
def test_bad_drift_tables_name_the_field(table: dict[str, object], match: str) -> None:
    arm = {"name": "a", "provider": "replay", "model_id": "a", "price_per_1k_input_usd": 0.01}
    data = {"arms": [arm], "drift": table}
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


# -- the live learner ---------------------------------------------------------------------
def store_answers(r: redis.Redis, keys: Keys, settings: ServiceSettings, ids: list[str],
                  arm: int, predicted: float) -> None:  # fmt: skip
    """Decision records as a router writes them, answered "Yes" by arm ``arm``, which the
    policy predicted right with probability ``predicted``."""
    policy = fresh_policy(CFG)
    v = np.random.default_rng(0).normal(size=(len(ids), policy.dim))
    shared = policy.features.shared_batch(v / np.linalg.norm(v, axis=1, keepdims=True))
    pmf = np.full(policy.n_arms, 0.5 / (policy.n_arms - 1))
    pmf[arm] = 0.5
    pipe = r.pipeline(transaction=False)
    for qid, line in zip(ids, shared, strict=True):
        pipe.hset(keys.decision(qid), mapping={
            "shared": line, "arm": arm, "arm_name": policy.arm_names[arm], "prob": "0.5",
            "pmf": json.dumps(pmf.tolist()), "predicted": json.dumps([predicted] * policy.n_arms),
            "cost": repr(float(policy.costs[arm])), "model_version": 0, "p": "0.0",
            "label": "Yes", "failed": 0, "fallback": 0, "cost_usd": "0.001",
        })  # fmt: skip
        pipe.expire(keys.decision(qid), settings.decision_ttl_s())
        pipe.zadd(keys.awaiting, {qid: time.time() + settings.reward_wait_s})
    pipe.execute()


def test_the_learner_logs_counts_and_calls_back_when_an_arm_turns_wrong(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    settings = ServiceSettings(redis_url=redis_url, prefix=prefix, block_ms=20,
                               snapshot_every_updates=10_000, snapshot_every_s=600)  # fmt: skip
    arm, name = 2, CFG.arms.names[2]
    n = 400
    ids = [f"q{i}" for i in range(n)]
    store_answers(r, keys, settings, ids, arm, predicted=0.9)
    registry, drifted = CollectorRegistry(), list[str]()

    async def learn() -> None:
        ar = aioredis.Redis.from_url(redis_url)
        metrics = Metrics(registry)
        metrics.init_learner(CFG.arms.names)
        config = replace(CFG.drift, boost_labels=1000)  # still boosted at the end
        watch = DriftWatch(config, metrics, ar, prefix, drifted.append, state_every_s=0)
        learner = Learner(settings, fresh_policy(CFG), ar, metrics, drift=watch)
        stop = asyncio.Event()
        stop.set()
        await learner.run(stop)  # the consumer group and the first commit
        # Right for 250 labels, then wrong: the arm's provider changed the model behind it.
        for k, q in enumerate(ids):
            await ar.xadd(keys.feedback, {"id": q, "label": "Yes" if k < 250 else "No"})
        deadline = time.monotonic() + 60
        while learner.outcomes["joined"] < n:
            assert time.monotonic() < deadline, f"timed out: {dict(learner.outcomes)}"
            await learner.step()
        await learner.publish()
        again = DriftWatch(CFG.drift, Metrics(CollectorRegistry()), ar, prefix)
        await again.ensure_restored()  # a restarted learner carries on from the commit
        assert again.detectors.detections() == {name: 1}
        await ar.aclose()

    with caplog.at_level(logging.WARNING, logger="workers.service.drift_watch"):
        asyncio.run(learn())
    assert drifted == [name]
    assert registry.get_sample_value("metallm_arm_drift_total", {"arm": name}) == 1
    assert registry.get_sample_value("metallm_arm_drift_total", {"arm": CFG.arms.names[0]}) == 0
    assert registry.get_sample_value("metallm_arm_drift_boost", {"arm": name}) == 1
    (warning,) = [rec.getMessage() for rec in caplog.records if "drifted" in rec.getMessage()]
    assert f"arm {name!r} drifted" in warning and "+0.100 before" in warning
    assert "labels seen" in warning and "-0.900 over its last" in warning
    assert r.exists(drift_state_key(prefix))


def test_a_record_without_a_usable_prediction_is_left_out() -> None:
    watch = DriftWatch(DriftConfig(), Metrics(CollectorRegistry()), None, "x:")  # type: ignore[arg-type]
    watch.observe({"arm": "1", "arm_name": "b", "predicted": "[0.5]"}, 1.0)  # no P̂ for arm 1
    watch.observe({"arm": "0", "arm_name": "a", "predicted": "not json"}, 1.0)
    watch.observe({"arm": "0", "arm_name": "a", "predicted": "[0.5]"}, 1.0)
    assert watch.skipped == 2 and watch.detectors.to_state()["a"]["residuals"] == [0.5]


def test_the_drift_alert_parses_and_names_the_arm() -> None:
    (rule,) = [x for x in rules(ROOT / "deploy") if x.get("alert") == "MetallmArmDrift"]
    assert "metallm_arm_drift_total" in rule["expr"] and "by (arm)" in rule["expr"]
    assert "{{ $labels.arm }}" in rule["annotations"]["summary"]
    assert rule["labels"]["severity"] == "warning" and rule["annotations"]["description"]
