"""submit, feedback and tail against a real Redis; demo end to end; metrics over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from workers.cli import main
from workers.harness.demo import free_port
from workers.service.settings import Keys

ROOT = Path(__file__).resolve().parents[1]


def test_submit_feedback_and_tail(
    redis_url: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        '{"id": "a", "text": "is this overruling?", "meta": {"user": 7}}\n\n{"id": "b", "text": "x"}\n'
    )
    assert main(["submit", str(queries), "--redis-url", redis_url, "--prefix", prefix]) == 0
    got = [f for _, f in r.xrange(keys.queries)]
    assert [g[b"id"] for g in got] == [b"a", b"b"] and json.loads(got[0][b"meta"]) == {"user": 7}
    for qid in ("a", "b"):  # as the router leaves them once it has answered
        r.hset(keys.decision(qid), mapping={"labels": '["Yes", "No"]', "label": "No"})
    assert (
        main(
            [
                "feedback",
                "--id",
                "a",
                "--label",
                "Yes",
                "--redis-url",
                redis_url,
                "--prefix",
                prefix,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "feedback",
                "--id",
                "b",
                "--reward",
                "0.5",
                "--redis-url",
                redis_url,
                "--prefix",
                prefix,
            ]
        )
        == 0
    )
    fb = [f for _, f in r.xrange(keys.feedback)]
    assert fb == [{b"id": b"a", b"label": b"Yes"}, {b"id": b"b", b"reward": b"0.5"}]
    r.xadd(keys.responses, {"id": "a", "arm": "gpt-4", "label": "Yes"})
    capsys.readouterr()
    assert (
        main(["tail", "--from-start", "--count", "1", "--redis-url", redis_url, "--prefix", prefix])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"id": "a", "arm": "gpt-4", "label": "Yes"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "c"}\n')
    assert main(["submit", str(bad), "--redis-url", redis_url, "--prefix", prefix]) == 2
    assert "bad.jsonl line 1: missing or empty field 'text'" in capsys.readouterr().err


def test_demo_end_to_end_writes_the_table(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "demo", "--dataset", "overruling", "--limit", "60",
         "--label-delay-s", "0.2", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "REDIS_URL": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert (rep["queries"], rep["responses"], rep["dead_letters"]) == (60, 60, 0)
    assert rep["updates"] > 0 and rep["model_version"] > 0
    assert (
        set(rep["arms"]) >= {"gpt-4", "gptj_6B"}
        and abs(sum(rep["router"]["share"].values()) - 1) < 1e-9
    )
    assert rep["router"]["acc"] > 0.7
    assert "metallm router" in proc.stdout
    # Off-policy estimates beside the truth from every arm's recorded outcomes: the live
    # policy's estimate is its measured accuracy, each arm's truth is its own column.
    ope = {x["policy"]: x for x in rep["ope"]}
    assert ope["live"]["acc"] == pytest.approx(rep["router"]["acc"])
    assert ope["always:gpt-4"]["true_acc"] == pytest.approx(rep["arms"]["gpt-4"]["acc"])
    assert all(x["true_acc"] is not None for name, x in ope.items() if name.startswith("greedy:"))


def test_metrics_endpoint_serves_prometheus_text(
    redis_url: str, prefix: str, data_dir: Path
) -> None:
    import asyncio

    from bandit.config import builtin_config
    from workers.service.app import Service
    from workers.service.settings import ServiceSettings

    port = free_port()
    svc = Service(ServiceSettings(redis_url=redis_url, prefix=prefix, metrics_port=port), builtin_config("overruling"),
                  roles=("learner",))  # fmt: skip

    async def run() -> str:
        await svc.start()
        assert svc.learner is not None
        from workers.service.streams import ensure_group

        await ensure_group(svc.redis, Keys(prefix).feedback, "learners")
        await svc.learner.step()
        try:
            return await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            )
        finally:
            await svc.close()

    text = asyncio.run(run())
    assert "metallm_model_version " in text and "metallm_feedback_total" in text
    assert 'metallm_stream_pending{stream="feedback"} 0.0' in text


def test_xautoclaim_reply_shapes_of_redis_6_2_and_7() -> None:
    from workers.service.streams import parse_autoclaim

    v62 = [b"0-0", [[b"1-0", [b"id", b"q1"]], [b"2-0", None]]]
    v7 = [b"0-0", [(b"1-0", {b"id": b"q1"})], [b"2-0"]]  # as redis-py's parser gives it
    for reply in (v62, v7):
        next_id, claimed = parse_autoclaim(reply)
        assert next_id == "0-0" and [c.id for c in claimed] == ["1-0"]
