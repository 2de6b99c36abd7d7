"""The producer of `metallm demo` and `metallm produce`, against a real Redis: pacing, bad
queries spread over the run, labels a delay after each answer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis.asyncio as aioredis

from bandit.datasets import Dataset
from bandit.errors import ConfigError
from workers.harness.producer import ProducerOptions, produce
from workers.service.settings import Keys


def tiny_dataset(n: int = 20) -> Dataset:
    return Dataset(
        name="tiny", ids=np.array([f"q{i}" for i in range(n)]), texts=np.array([f"text {i}" for i in range(n)]),
        labels=np.array(["Yes" if i % 3 else "No" for i in range(n)]), arms=("a",),
        answers=np.full((n, 1), "Yes", dtype=object), correct=np.ones((n, 1)), cost_usd=np.zeros((n, 1)),
        label_set=("Yes", "No"), source_split=np.array([""] * n),
    )  # fmt: skip


def test_paced_queries_bad_ones_spread_and_labels_after_each_answer(
    redis_url: str, prefix: str
) -> None:
    ds, keys, delay_s, rate = tiny_dataset(), Keys(prefix), 0.3, 100.0
    opts = ProducerOptions(rate_qps=rate, label_delay_s=delay_s, bad_queries=2)

    async def main() -> tuple[list[dict[str, str]], list[dict[str, str]], float]:
        r = aioredis.from_url(redis_url, decode_responses=True)  # the router's side
        producer = aioredis.from_url(redis_url)

        done = asyncio.Event()  # stop by a flag, not by cancelling a blocked XREAD

        async def answer_like_a_router() -> None:
            last = "0-0"
            while not done.is_set():
                reply = await r.xread({keys.queries: last}, block=50)
                for _, entries in reply or []:
                    for eid, f in entries:
                        last = eid
                        if f.get("text"):
                            await r.xadd(keys.responses, {"id": f["id"], "label": "Yes"})

        router = asyncio.create_task(answer_like_a_router())
        t0 = time.monotonic()
        stats = await asyncio.wait_for(
            produce(producer, keys, ds, np.arange(len(ds)), opts, asyncio.Event()), 30
        )
        took = time.monotonic() - t0
        done.set()
        await router
        assert (stats.sent, stats.answered, stats.labels_sent) == (20, 20, 20)
        queries = [f for _, f in await r.xrange(keys.queries)]
        feedback = [f for _, f in await r.xrange(keys.feedback)]
        await r.aclose()
        await producer.aclose()
        return queries, feedback, took

    queries, feedback, took = asyncio.run(main())
    assert took >= (20 - 1) / rate  # paced, not a burst
    ids = [q["id"] for q in queries]
    assert [i for i, q in enumerate(queries) if not q.get("text")] == [6, 14]  # spread, not first
    assert ids.count("bad-0") == ids.count("bad-1") == 1
    truth = dict(zip(ds.ids, ds.labels, strict=True))
    good = [f for f in feedback if not f["id"].startswith("bad-")]
    assert {f["id"]: f["label"] for f in good} == truth
    assert sorted(f["id"] for f in feedback if f["id"].startswith("bad-")) == ["bad-0", "bad-1"]


def test_labels_wait_for_the_delay(redis_url: str, prefix: str) -> None:
    ds, keys = tiny_dataset(3), Keys(prefix)

    async def main() -> list[float]:
        r = aioredis.from_url(redis_url, decode_responses=True)
        producer = aioredis.from_url(redis_url)
        t_answer: dict[str, float] = {}
        t_label: dict[str, float] = {}

        done = asyncio.Event()

        async def router_and_watcher() -> None:
            lq, lf = "0-0", "0-0"
            while not done.is_set():
                reply = await r.xread({keys.queries: lq, keys.feedback: lf}, block=20)
                for stream, entries in reply or []:
                    for eid, f in entries:
                        if stream == keys.queries:
                            lq = eid
                            t_answer[f["id"]] = time.monotonic()
                            await r.xadd(keys.responses, {"id": f["id"]})
                        else:
                            lf = eid
                            t_label[f["id"]] = time.monotonic()

        watcher = asyncio.create_task(router_and_watcher())
        opts = ProducerOptions(label_delay_s=0.5)
        await asyncio.wait_for(produce(producer, keys, ds, np.arange(3), opts, asyncio.Event()), 30)
        await asyncio.sleep(0.1)
        done.set()
        await watcher
        await r.aclose()
        await producer.aclose()
        return [t_label[q] - t_answer[q] for q in t_answer]

    waits = asyncio.run(main())
    assert len(waits) == 3 and min(waits) >= 0.45


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rate_qps": 0.0}, "rate = 0.0 must be > 0 queries per second"),
        ({"label_delay_s": -1.0}, "label delay = -1.0 must be ≥ 0 seconds"),
        ({"rounds": 0}, "rounds = 0 \\(forever\\) needs a rate"),
        ({"bad_queries": -2}, "bad queries = -2 must be ≥ 0"),
    ],
)
def test_bad_producer_options_are_named(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProducerOptions(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p%40ss@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://user:pw@host:1/0", "redis://user:***@host:1/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_the_demo_never_prints_a_redis_password(url: str, shown: str) -> None:
    from workers.harness.demo import redacted

    assert redacted(url) == shown


def test_produce_reports_a_bad_option_in_one_line() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "workers.cli", "produce", "--rounds", "0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "metallm: error: rounds = 0 (forever) needs a rate in queries per second"
    )
