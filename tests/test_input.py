"""No input crashes a worker: undecodable bytes, oversized fields, feedback outside the label
set and arbitrary entries (a hypothesis fuzz) on the queries and feedback streams, against a
real Redis, the replay LLM server and the real Router and Learner."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandit.config import RoutingConfig
from bandit.datasets import Dataset
from workers.harness.replay_server import ReplayBook, ReplayServer
from workers.service.app import Service
from workers.service.settings import LEARNERS_GROUP, ROUTERS_GROUP, Keys, ServiceSettings

RESPONSE_FIELDS = {"id", "arm", "answer", "label", "prob", "explored", "fallback", "cost_usd",
                   "tokens_in", "tokens_out", "latency_ms", "model_version", "error", "p"}  # fmt: skip


def fast_settings(redis_url: str, prefix: str, **kw: Any) -> ServiceSettings:
    base: dict[str, Any] = dict(redis_url=redis_url, prefix=prefix, block_ms=20, reload_check_s=0.05,
                                snapshot_every_s=0.2, claim_idle_ms=300, backoff_base_s=0.01,
                                backoff_cap_s=0.05)  # fmt: skip
    base.update(kw)
    return ServiceSettings(**base)


class Running:
    """A Service (router and learner) running in a thread of its own, so that a synchronous
    test (and hypothesis) can write to its streams and watch it; ``alive`` says whether its
    workers are still running, and leaving re-raises what stopped them."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.done = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),))

    async def _serve(self) -> None:
        self.stop = asyncio.Event()
        try:
            await self.svc.start()
            self.ready.set()
            await self.svc.run(self.stop)
        except BaseException as exc:
            self.error = exc
        finally:
            if self.ready.is_set():
                await self.svc.close()
            self.done.set()
            self.ready.set()

    @property
    def alive(self) -> bool:
        return not self.done.is_set()

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.ready.wait(120), "the service did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        self.loop.close()
        if self.error is not None:
            raise self.error


def wait_until(check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _seq(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = raw.split("-")
    return int(ms), int(seq)


def acknowledged(r: redis.Redis, stream: str, group: str, entry_id: bytes) -> bool:
    """Whether ``group`` has read up to ``entry_id`` and holds nothing unacknowledged."""
    for g in r.xinfo_groups(stream):
        if g["name"] == group.encode():
            return g["pending"] == 0 and _seq(g["last-delivered-id"]) >= _seq(entry_id)
    return False


def text_dict(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


@pytest.fixture(scope="module")
def lenient_replay(overruling: tuple[Dataset, RoutingConfig]) -> Iterator[ReplayServer]:
    """The replay server, answering prompts it has no recording of with "Yes"."""
    srv = ReplayServer(ReplayBook(*overruling, unknown_answer="Yes")).start()
    yield srv
    srv.stop()


@pytest.fixture
def service(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig], lenient_replay: ReplayServer
) -> Iterator[Running]:  # fmt: skip
    svc = Service(fast_settings(redis_url, prefix), overruling[1],
                  env={"METALLM_REPLAY_URL": lenient_replay.url})  # fmt: skip
    with Running(svc) as running:
        yield running


def test_undecodable_bytes_are_dead_lettered_and_the_workers_go_on(
    service: Running, redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, _ = overruling
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    bad_queries = [
        {"id": b"q-\xff", "text": "hello"},  # no usable id: dead letter only
        {"id": "q-text", "text": b"caf\xe9 au lait"},  # answered with the reason
        {b"\xc3\x28": "x", "id": "q-name", "text": "hello"},
    ]
    for fields in bad_queries:
        r.xadd(keys.queries, fields)  # type: ignore[arg-type]
    r.xadd(keys.feedback, {"id": "q-text", "label": b"\xffYes"})
    last_q = r.xadd(keys.queries, {"id": ds.ids[0], "text": ds.texts[0]})
    last_f = r.xadd(keys.feedback, {"id": "never-asked", "label": "Yes"})
    wait_until(lambda: acknowledged(r, keys.queries, ROUTERS_GROUP, last_q))
    wait_until(lambda: acknowledged(r, keys.feedback, LEARNERS_GROUP, last_f))
    wait_until(lambda: r.xlen(keys.responses) == 3 and r.xlen(keys.dead) == 4)
    assert service.alive
    dead = [text_dict(f) for _, f in r.xrange(keys.dead)]
    assert [d["stage"] for d in dead] == ["decode"] * 4
    assert dead[0]["id"] == "q-\\xff" and "field 'id' is not valid UTF-8" in dead[0]["error"]
    assert dead[1]["text"] == "caf\\xe9 au lait" and "field 'text'" in dead[1]["error"]
    assert dead[2]["\\xc3("] == "x" and "a field name is not valid UTF-8" in dead[2]["error"]
    assert dead[3]["label"] == "\\xffYes" and dead[3]["deliveries"] == "1"
    by_id = {x["id"]: x for x in (text_dict(f) for _, f in r.xrange(keys.responses))}
    assert set(by_id) == {"q-text", "q-name", ds.ids[0]}
    assert by_id["q-text"]["error"] == dead[1]["error"] and by_id["q-text"]["arm"] == ""
    assert set(by_id["q-text"]) == RESPONSE_FIELDS and by_id[ds.ids[0]]["error"] == ""
    assert service.svc.learner is not None and service.svc.learner.outcomes["invalid"] == 1


def test_oversized_queries_are_refused_with_an_answer(
    service: Running, redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, _ = overruling
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    r.xadd(keys.queries, {"id": "q-1mb", "text": "word " * 200_000})
    r.xadd(keys.queries, {"id": "q-labels", "text": "hi", "labels": json.dumps([str(i) for i in range(65)])})  # fmt: skip
    r.xadd(keys.queries, {"id": "q-label", "text": "hi", "labels": json.dumps(["x" * 201, "No"])})
    last = r.xadd(keys.queries, {"id": ds.ids[0], "text": ds.texts[0]})
    wait_until(lambda: acknowledged(r, keys.queries, ROUTERS_GROUP, last))
    wait_until(lambda: r.xlen(keys.responses) == 4)
    dead = {d["id"]: d for d in (text_dict(f) for _, f in r.xrange(keys.dead))}
    assert {d["stage"] for d in dead.values()} == {"parse"}
    assert (
        "'text' has 1,000,000 characters; the most is max_text_chars = 32,000"
        in dead["q-1mb"]["error"]
    )
    assert "65 labels; the most is max_labels = 64" in dead["q-labels"]["error"]
    assert "is too long; the most is max_label_chars = 200" in dead["q-label"]["error"]
    responses = {x["id"]: x for x in (text_dict(f) for _, f in r.xrange(keys.responses))}
    for qid, d in dead.items():
        assert responses[qid]["error"] == d["error"] and responses[qid]["answer"] == ""
        assert responses[qid]["cost_usd"] == "0.0" and responses[qid]["tokens_in"] == "0"
    assert responses[ds.ids[0]]["error"] == "" and service.alive


def test_feedback_is_checked_against_the_decisions_label_set(
    service: Running, redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig]
) -> None:
    ds, _ = overruling
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    r.xadd(keys.queries, {"id": ds.ids[0], "text": ds.texts[0]})
    r.xadd(keys.queries, {"id": ds.ids[1], "text": ds.texts[1], "labels": '["Up", "Down"]'})
    wait_until(lambda: r.xlen(keys.responses) == 2)
    a, b = ds.ids[0], ds.ids[1]
    feedback = [
        {"id": a, "label": "Maybe"},  # not in the task's set
        {"id": a, "label": ""},
        {"id": a, "label": "Yes", "reward": "1"},
        {"id": b, "label": "Yes"},  # the query's own set overrides the task's
        {"id": a, "label": f" {ds.labels[0].lower()} "},  # still learned: case and spaces
        {"id": b, "label": "DOWN"},
    ]
    last = None
    for f in feedback:
        last = r.xadd(keys.feedback, f)  # type: ignore[arg-type]
    assert last is not None
    wait_until(lambda: acknowledged(r, keys.feedback, LEARNERS_GROUP, last))
    learner = service.svc.learner
    assert learner is not None
    wait_until(lambda: sum(learner.outcomes.values()) == len(feedback))
    assert (learner.outcomes["invalid"], learner.outcomes["joined"]) == (4, 2)
    assert learner.updates == 2
    dead = [text_dict(f) for _, f in r.xrange(keys.dead)]
    assert [d["stage"] for d in dead] == ["feedback"] * 4
    assert f"label 'Maybe' is not one of query {a!r}'s labels ['Yes', 'No']" in dead[0]["error"]
    assert "a label is empty" in dead[1]["error"]
    assert "both 'label' and 'reward'" in dead[2]["error"]
    assert (
        "label 'Yes' is not one of query" in dead[3]["error"]
        and "['Up', 'Down']" in dead[3]["error"]
    )


FIELD_NAMES = st.one_of(
    st.sampled_from([b"id", b"text", b"task", b"labels", b"meta", b"label", b"reward"]),
    st.binary(max_size=12),
)
FIELD_VALUES = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b"q-fuzz", b'["Yes", "No"]', b"Yes", b"0.5", b"overruling", b"[[[", b""]),
    st.integers(min_value=0, max_value=40_000).map(lambda n: b"w " * n),  # up to 80 KB
    st.integers(),
    st.floats(),
)
ARBITRARY = st.dictionaries(FIELD_NAMES, FIELD_VALUES, min_size=1, max_size=5)
# Entries that look like a query or feedback, so that the fuzz also reaches past the first
# checks: answered queries, labels checked against a decision's label set.
IDS = st.sampled_from([b"q-fuzz", b"q-fuzz-2", b"q-\xff", b" "])
QUERIES = st.fixed_dictionaries(
    {b"id": IDS, b"text": st.one_of(st.text(min_size=1, max_size=60).map(str.encode), FIELD_VALUES)},
    optional={b"labels": st.one_of(st.sampled_from([b'["Yes", "No"]', b'["A", "b "]']), FIELD_VALUES),
              b"meta": FIELD_VALUES, b"task": FIELD_VALUES},
)  # fmt: skip
FEEDBACK = st.fixed_dictionaries(
    {b"id": IDS},
    optional={b"label": st.one_of(st.sampled_from([b"Yes", b" no", b"Maybe", b"a"]), FIELD_VALUES),
              b"reward": st.one_of(st.floats(), FIELD_VALUES)},
)  # fmt: skip
ENTRIES = st.one_of(
    st.tuples(st.just("queries"), st.one_of(ARBITRARY, QUERIES)),
    st.tuples(st.just("feedback"), st.one_of(ARBITRARY, FEEDBACK)),
)


def test_no_entry_on_either_stream_stops_a_worker(
    service: Running, redis_url: str, prefix: str
) -> None:
    """Every entry is acknowledged and either answered or dead-lettered (a query) or counted
    once among the learner's outcomes (feedback), and the router and learner keep running."""
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    learner = service.svc.learner
    assert learner is not None

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(entry=ENTRIES)
    def check(entry: tuple[str, dict[bytes, Any]]) -> None:
        stream, fields = entry
        dead_before, last_response = r.xlen(keys.dead), _last_id(r, keys.responses)
        counted_before = sum(learner.outcomes.values())
        if stream == "queries":
            eid = r.xadd(keys.queries, fields)  # type: ignore[arg-type]
            wait_until(lambda: acknowledged(r, keys.queries, ROUTERS_GROUP, eid))
            dead = r.xlen(keys.dead) - dead_before
            answers = r.xrange(keys.responses, min=f"({last_response}")
            assert dead == 1 or len(answers) == 1, "a query neither answered nor dead-lettered"
            if dead:
                (_, letter), *_ = r.xrevrange(keys.dead, count=1)
                assert letter[b"stage"] in (b"decode", b"parse")
                for _, answer in answers:  # a refused query with a usable id: the reason
                    assert answer[b"error"] == letter[b"error"] and answer[b"arm"] == b""
        else:
            eid = r.xadd(keys.feedback, fields)  # type: ignore[arg-type]
            wait_until(lambda: acknowledged(r, keys.feedback, LEARNERS_GROUP, eid))
            wait_until(lambda: sum(learner.outcomes.values()) == counted_before + 1)
            assert r.xlen(keys.dead) - dead_before in (0, 1)
        assert service.alive, "a worker stopped"

    check()
    assert service.alive


def _last_id(r: redis.Redis, stream: str) -> str:
    last = r.xrevrange(stream, count=1)
    return last[0][0].decode() if last else "0-0"
