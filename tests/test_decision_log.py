"""The service's decision log: appended by the learner at its commit, trimmed to its length,
exported with --since as the long import format, and trained on (off-policy)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

import bandit
from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from bandit.errors import ConfigError
from tests.test_service import run_with_service, settings, wait_for
from workers.cli import main
from workers.harness.replay_server import ReplayServer
from workers.service.app import Service
from workers.service.decision_log import (
    DecisionLog,
    export_log,
    parse_since,
    read_log,
    record_text,
)
from workers.service.settings import Keys, ServiceSettings

ARMS = ("a", "b")


def _record(i: int, decided_at: float) -> dict[str, str]:
    return {"arm": "1", "arm_name": "b", "prob": "0.75", "pmf": "[0.25, 0.75]", "cost": "0.5",
            "p": "0.1", "cost_usd": "0.002", "label": "Yes", "shared": "|x 0:1",
            "text": f"query {i}", "decided_at": repr(decided_at), "model_version": "7"}  # fmt: skip


async def _write(redis_url: str, log: DecisionLog, records: list[dict[str, str]]) -> None:
    r = aioredis.from_url(redis_url)
    try:
        for i, rec in enumerate(records):
            log.note(rec, f"q{i}", "Yes" if i % 2 else None)
            log.add(rec, 1.0 if i % 2 else 0.25, ARMS)
        async with r.pipeline(transaction=True) as pipe:
            log.queue_commit(pipe)
            await pipe.execute()
        log.committed()
    finally:
        await r.aclose()


def test_the_log_is_trimmed_to_its_length_oldest_first(redis_url: str, prefix: str) -> None:
    s = ServiceSettings(redis_url=redis_url, prefix=prefix, decision_log_maxlen=5)
    log = DecisionLog(s, Keys(prefix))
    now = time.time()
    asyncio.run(_write(redis_url, log, [_record(i, now) for i in range(12)]))

    async def read() -> list[dict[str, str]]:
        r = aioredis.from_url(redis_url)
        try:
            return [f async for f in read_log(r, Keys(prefix))]
        finally:
            await r.aclose()

    kept = asyncio.run(read())
    assert [f["id"] for f in kept] == [f"q{i}" for i in range(7, 12)]
    # nothing is queued twice: a second commit adds nothing
    asyncio.run(_write(redis_url, log, []))
    assert len(asyncio.run(read())) == 5


def test_no_log_when_its_length_is_zero(redis_url: str, prefix: str) -> None:
    s = ServiceSettings(redis_url=redis_url, prefix=prefix, decision_log_maxlen=0)
    asyncio.run(_write(redis_url, DecisionLog(s, Keys(prefix)), [_record(0, time.time())]))

    async def length() -> int:
        r = aioredis.from_url(redis_url)
        try:
            return int(await r.xlen(Keys(prefix).decisions))
        finally:
            await r.aclose()

    assert asyncio.run(length()) == 0


def test_export_since_keeps_the_decisions_made_then_or_later(
    redis_url: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ServiceSettings(redis_url=redis_url, prefix=prefix, decision_log_maxlen=100)
    now = time.time()
    ages_s = [7200, 3600, 60]
    asyncio.run(_write(redis_url, DecisionLog(s, Keys(prefix)), [_record(i, now - a) for i, a in enumerate(ages_s)]))  # fmt: skip
    out = tmp_path / "log.jsonl"
    argv = ["export", "--redis-url", redis_url, "--prefix", prefix, "--out", str(out)]
    assert main([*argv, "--since", "90m"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2"]
    assert "exported 2 decisions" in capsys.readouterr().err
    assert main([*argv, "--since", repr(now - 3700)]) == 0  # unix seconds
    assert len(out.read_text().splitlines()) == 2
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    # the long import format, logged: an explicit reward is a score, a label gives correct
    first, second = rows[0], rows[1]
    assert first["score"] == 0.25 and "correct" not in first and "label" not in first
    assert second["correct"] == 1 and second["label"] == "Yes"
    assert second["arm"] == "b" and second["prob"] == 0.75
    assert second["pmf"] == {"a": 0.25, "b": 0.75}
    assert second["text"] == "query 1" and second["model_version"] == 7
    assert second["reward"] == pytest.approx(1 - 0.1 * 0.5)
    assert second["time"] == pytest.approx(now - 3600)


def test_features_only_keeps_no_text(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """decision_log_texts = false: routers store no text, the log the context line instead."""
    s = ServiceSettings(
        redis_url=redis_url, prefix=prefix, decision_log_maxlen=100, decision_log_texts=False
    )
    assert record_text(s, "a query") == {}
    assert record_text(dataclasses.replace(s, decision_log_texts=True), "q") == {"text": "q"}
    assert (
        record_text(dataclasses.replace(s, decision_log_maxlen=0, decision_log_texts=True), "q")
        == {}
    )
    record = _record(0, time.time())
    del record["text"]
    asyncio.run(_write(redis_url, DecisionLog(s, Keys(prefix)), [record]))
    out = tmp_path / "log.jsonl"
    assert main(["export", "--redis-url", redis_url, "--prefix", prefix, "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["text"] == "" and row["features"] == "|x 0:1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("24h", 1_000_000.0 - 86400), ("90m", 1_000_000.0 - 5400), ("2d", 1_000_000.0 - 172800),
     ("1767225600", 1767225600.0), ("2026-01-01T00:00:00", 1767225600.0),
     ("2026-01-01T01:00:00+01:00", 1767225600.0), ("2026-01-01T00:00:00Z", 1767225600.0)],
)  # fmt: skip
def test_since_takes_unix_seconds_iso_times_and_spans(value: str, expected: float) -> None:
    assert parse_since(value, now=1_000_000.0) == pytest.approx(expected)


def test_a_bad_since_names_the_forms_it_takes() -> None:
    with pytest.raises(ConfigError, match=r"'yesterday' is not a time.*24h"):
        parse_since("yesterday")


def test_service_log_exports_and_trains_a_policy(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], replay: ReplayServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The service routes and learns; its log exports every joined decision with the
    probability the arm was drawn with; a policy trained on that export (off-policy) knows
    the config's arms."""
    ds, cfg = overruling
    keys = Keys(prefix)
    svc = Service(
        settings(redis_url, prefix, decision_log_maxlen=1000),
        cfg,
        env={"METALLM_REPLAY_URL": replay.url},
    )
    rows = list(range(60))
    out = io.StringIO()

    async def body(svc: Service, r: aioredis.Redis) -> None:
        for i in rows:
            await r.xadd(keys.queries, {"id": ds.ids[i], "text": ds.texts[i]})
        await wait_for(lambda: _xlen_at_least(r, keys.responses, len(rows)))
        for i in rows:
            await r.xadd(keys.feedback, {"id": ds.ids[i], "label": ds.labels[i]})
        await wait_for(lambda: _xlen_at_least(r, keys.decisions, len(rows)))
        await export_log(redis_url, prefix, out, None)

    run_with_service(svc, body)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(x["id"] for x in exported) == sorted(ds.ids[rows])
    by_id = {str(q): i for i, q in enumerate(ds.ids)}
    for x in exported:
        i, j = by_id[x["id"]], ds.arms.index(x["arm"])
        assert x["text"] == ds.texts[i] and x["label"] == ds.labels[i]
        assert x["correct"] == ds.correct[i, j]
        assert x["cost_usd"] == pytest.approx(ds.cost_usd[i, j], abs=1e-8)
        assert 0 < x["prob"] <= 1 and x["pmf"][x["arm"]] == pytest.approx(x["prob"])
        assert sum(x["pmf"].values()) == pytest.approx(1)
    path = tmp_path / "exported.jsonl"
    path.write_text(out.getvalue())
    _train_on(path, cfg, tmp_path)


async def _xlen_at_least(r: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await r.xlen(stream)) >= n


def _train_on(path: Path, cfg: RoutingConfig, tmp_path: Path) -> None:
    """`metallm train --data` on the export: one off-policy update per logged decision."""
    from bandit.policy import Policy

    snap = tmp_path / "from-log.bin"
    config = Path(bandit.__file__).parent / "configs" / "overruling.toml"
    argv = ["train", "--data", str(path), "--config", str(config), "--out", str(snap), "--no-tune"]
    assert main(argv) == 0  # the log misses arms never drawn: its pmf names them all
    policy = Policy.from_bytes(snap.read_bytes())
    assert policy.arm_names == cfg.arms.names
    assert policy.version == len(path.read_text().splitlines())
    assert np.isfinite(policy.costs).all()
