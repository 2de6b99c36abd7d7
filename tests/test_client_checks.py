"""``metallm submit`` and ``metallm feedback`` refuse what the service would dead-letter:
exit status 2, one line naming the item and the reason, and nothing sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from workers.cli import main
from workers.service.settings import Keys


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"id": "a", "text": "ok"}', '{"id": "b"}'], "line 2: missing or empty field 'text'"),
        (['{"text": "no id"}'], "line 1: missing or empty field 'id'"),
        (['{"id": "a", "text": "%s"}' % ("w " * 20_000)], "line 1: field 'text' has 40,000 characters; the most is max_text_chars = 32,000"),
        (['{"id": "a", "text": "t", "labels": []}'], "line 1: field 'labels' must be a non-empty JSON list of strings"),
        (['{"id": "a", "text": "t", "labels": ["Yes", "yes "]}'], "line 1: labels 'Yes' and 'yes ' are the same label"),
        ([json.dumps({"id": "a", "text": "t", "labels": [str(i) for i in range(65)]})], "line 1: field 'labels' has 65 labels; the most is max_labels = 64"),
        (['{"id": "a", "text": "t", "meta": "{oops"}'], "line 1: field 'meta' is not JSON"),
        (['{"id": "a", "text": "t", "task": "translation"}', "--dataset", "overruling"], "line 1: unknown task 'translation'; this router serves 'overruling'"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        (['{"id": "a", "text": "t"}', "", "{oops"], "line 3: not JSON"),
    ],
)  # fmt: skip
def test_submit_refuses_what_the_router_would(
    lines: list[str], match: str, redis_url: str, prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    extra = [x for x in lines if x.startswith("--") or x == "overruling"]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(x for x in lines if x not in extra) + "\n")
    assert main(["submit", str(path), "--redis-url", redis_url, "--prefix", prefix, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metallm: error: {path} ") and err.count("\n") == 1
    assert match in err
    assert redis.Redis.from_url(redis_url).xlen(Keys(prefix).queries) == 0  # nothing sent


def test_submit_takes_its_limits_from_the_environment(
    redis_url: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "twelve chars"}\n')
    monkeypatch.setenv("METALLM_MAX_TEXT_CHARS", "10")
    assert main(["submit", str(path), "--redis-url", redis_url, "--prefix", prefix]) == 2
    assert "max_text_chars = 10" in capsys.readouterr().err
    monkeypatch.setenv("METALLM_MAX_TEXT_CHARS", "12")
    assert main(["submit", str(path), "--redis-url", redis_url, "--prefix", prefix]) == 0


def test_submit_refuses_a_file_that_is_not_utf8(
    redis_url: str, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    assert main(["submit", str(path), "--redis-url", redis_url, "--prefix", prefix]) == 2
    assert f"metallm: error: {path}: not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "lines", "match"),
    [
        (["--id", "answered", "--label", "Maybe"], None, r"--id answered: label 'Maybe' is not one of query 'answered''s labels ['Yes', 'No']"),
        (["--id", "answered", "--label", ""], None, "--id answered: a label is empty"),
        (["--id", "answered", "--reward", "2"], None, "--id answered: field 'reward' = '2.0' must be a number in [0, 1]"),
        (["--id", "never", "--label", "Yes"], None, "--id never: no decision record for query 'never'"),
        (["--id", "deciding", "--reward", "1"], None, "--id deciding: query 'deciding' is not answered yet"),
        (["--id", "own", "--label", "Yes"], None, "label 'Yes' is not one of query 'own''s labels ['Up', 'Down']"),
        ([], ['{"id": "answered", "label": "Yes"}', '{"id": "answered", "label": "No", "reward": 1}'], "line 2: feedback has both 'label' and 'reward'"),
        ([], ['{"id": "answered", "label": "Yes"}', '{"label": "No"}'], "line 2: missing or empty field 'id'"),
        ([], ['{"id": "answered", "label": "Yes"}', '{"id": "never", "reward": 0.5}'], "line 2: no decision record for query 'never'"),
    ],
)  # fmt: skip
def test_feedback_refuses_what_the_learner_would(
    args: list[str], lines: list[str] | None, match: str, redis_url: str, prefix: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    # Decision records as the router leaves them: labels when decided, label once answered.
    r.hset(keys.decision("answered"), mapping={"labels": '["Yes", "No"]', "label": "No"})
    r.hset(keys.decision("deciding"), mapping={"labels": '["Yes", "No"]'})
    r.hset(keys.decision("own"), mapping={"labels": '["Up", "Down"]', "label": ""})
    if lines is not None:
        path = tmp_path / "fb.jsonl"
        path.write_text("\n".join(lines) + "\n")
        args = ["--file", str(path)]
    assert main(["feedback", *args, "--redis-url", redis_url, "--prefix", prefix]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metallm: error: ") and err.count("\n") == 1
    assert match in err
    assert r.xlen(keys.feedback) == 0  # nothing sent


def test_feedback_accepts_a_label_as_the_learner_matches_it(
    redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, r = Keys(prefix), redis.Redis.from_url(redis_url)
    r.hset(keys.decision("q"), mapping={"labels": '["Yes", "No"]', "label": "No"})
    common = ["--redis-url", redis_url, "--prefix", prefix]
    assert main(["feedback", "--id", "q", "--label", " yes ", *common]) == 0
    assert main(["feedback", "--id", "q", "--reward", "0.5", *common]) == 0
    assert [f for _, f in r.xrange(keys.feedback)] == [
        {b"id": b"q", b"label": b" yes "},
        {b"id": b"q", b"reward": b"0.5"},
    ]
