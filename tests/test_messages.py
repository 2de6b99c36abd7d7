"""The rules for queries and feedback (workers/service/messages.py), the stream entry decoding
and the reason clipping (workers/service/streams.py): pure, no Redis."""

from __future__ import annotations

import json

import pytest

from bandit.config import TaskConfig
from workers.service.messages import (
    MAX_ID_CHARS,
    BadFeedback,
    BadQuery,
    Feedback,
    check_feedback_label,
    parse_feedback,
    parse_query,
    usable_id,
)
from workers.service.settings import ServiceSettings
from workers.service.streams import clip, dead_fields, parse_autoclaim

S = ServiceSettings(max_text_chars=100, max_labels=3, max_label_chars=10)
TASK = TaskConfig("overruling", ("Yes", "No"))


def test_a_good_query_and_its_defaults() -> None:
    q = parse_query({"id": " q1 ", "text": "is it?", "meta": '{"n": 1}'}, S, TASK)
    assert (q.id, q.text, q.labels, q.meta) == ("q1", "is it?", ("Yes", "No"), '{"n": 1}')
    q = parse_query({"id": "q1", "text": "x" * 100, "labels": '["a", "b", "c"]'}, S, TASK)
    assert q.labels == ("a", "b", "c")
    # Without the router's task (the CLI without --config), the task is not checked.
    assert parse_query({"id": "q", "text": "t", "task": "other"}, S).labels == ()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"text": "no id"}, "missing or empty field 'id'"),
        ({"id": "  ", "text": "t"}, "missing or empty field 'id'"),
        ({"id": "q" * (MAX_ID_CHARS + 1), "text": "t"}, f"'id' has 257 characters; the most is {MAX_ID_CHARS}"),
        ({"id": "q"}, "missing or empty field 'text'"),
        ({"id": "q", "text": " \n "}, "missing or empty field 'text'"),
        ({"id": "q", "text": "x" * 101}, "'text' has 101 characters; the most is max_text_chars = 100"),
        ({"id": "q", "text": "t", "task": "translation"}, "unknown task 'translation'; this router serves 'overruling'"),
        ({"id": "q", "text": "t", "task": "t" * 10**6}, r"unknown task 'tttt.*'… \(1,000,000 characters\)"),
        ({"id": "q", "text": "t", "labels": "[oops"}, "field 'labels' is not JSON"),
        ({"id": "q", "text": "t", "labels": "[" * 50 + "]" * 50}, "field 'labels' is not JSON: nested too deeply|non-empty JSON list"),
        ({"id": "q", "text": "t", "labels": "[]"}, "non-empty JSON list of strings"),
        ({"id": "q", "text": "t", "labels": '["a", 1]'}, "non-empty JSON list of strings"),
        ({"id": "q", "text": "t", "labels": '{"a": 1}'}, "non-empty JSON list of strings"),
        ({"id": "q", "text": "t", "labels": '["a", "b", "c", "d"]'}, "4 labels; the most is max_labels = 3"),
        ({"id": "q", "text": "t", "labels": json.dumps(["a"] * 10**5)}, "more than max_labels = 3 labels of max_label_chars = 10"),
        ({"id": "q", "text": "t", "labels": '["a", " "]'}, "a label is empty"),
        ({"id": "q", "text": "t", "labels": '["abcdefghijk"]'}, "label 'abcdefghijk' is too long; the most is max_label_chars = 10"),
        ({"id": "q", "text": "t", "labels": '["Yes", " yes"]'}, "'Yes' and ' yes' are the same label"),
        ({"id": "q", "text": "t", "meta": "{oops"}, "field 'meta' is not JSON"),
        ({"id": "q", "text": "t", "meta": "[" * 100_000}, "field 'meta' has 100,000 characters"),
    ],
)  # fmt: skip
def test_bad_queries(fields: dict[str, str], match: str) -> None:
    with pytest.raises(BadQuery, match=match):
        parse_query(fields, S, TASK)


def test_deeply_nested_json_is_a_bad_query_not_a_crash() -> None:
    big = ServiceSettings(max_text_chars=1_000_000)
    with pytest.raises(BadQuery, match="field 'meta' is not JSON: nested too deeply"):
        parse_query({"id": "q", "text": "t", "meta": "[" * 500_000}, big, TASK)


def test_good_feedback() -> None:
    assert parse_feedback({"id": "q", "label": " yes "}, S) == Feedback("q", " yes ", None)
    assert parse_feedback({"id": "q", "reward": "0.25"}, S) == Feedback("q", None, 0.25)
    assert parse_feedback({"id": "q", "reward": "1"}, S).reward == 1.0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"label": "Yes"}, "missing or empty field 'id'"),
        ({"id": "q"}, r"needs 'label' \(the true label\) or 'reward'"),
        ({"id": "q", "label": ""}, "a label is empty"),
        ({"id": "q", "label": "  "}, "a label is empty"),
        ({"id": "q", "label": "x" * 11}, "too long; the most is max_label_chars = 10"),
        ({"id": "q", "label": "Yes", "reward": "1"}, "both 'label' and 'reward'; send one"),
        ({"id": "q", "reward": ""}, r"'reward' = '' is not a number in \[0, 1\]"),
        ({"id": "q", "reward": "lots"}, r"'reward' = 'lots' is not a number"),
        ({"id": "q", "reward": "7"}, r"'reward' = '7' must be a number in \[0, 1\]"),
        ({"id": "q", "reward": "-0.1"}, r"must be a number in \[0, 1\]"),
        ({"id": "q", "reward": "nan"}, r"must be a number in \[0, 1\]"),
        ({"id": "q", "reward": "1e999"}, r"must be a number in \[0, 1\]"),
    ],
)
def test_bad_feedback(fields: dict[str, str], match: str) -> None:
    with pytest.raises(BadFeedback, match=match):
        parse_feedback(fields, S)


@pytest.mark.parametrize("label", ["Yes", "yes", " YES ", "no\t"])
def test_a_label_matches_its_set_case_insensitively_ignoring_spaces(label: str) -> None:
    check_feedback_label(Feedback("q", label, None), '["Yes", "No"]')


@pytest.mark.parametrize(
    ("label", "labels", "match"),
    [
        ("Maybe", '["Yes", "No"]', r"label 'Maybe' is not one of query 'q''s labels \['Yes', 'No'\]"),
        ("Y", '["Yes", "No"]', "label 'Y' is not one of"),
        ("Yes", "[]", "whose task has no label set: send a reward"),
        ("z", json.dumps([f"l{i}" for i in range(20)]), r"'l15', … 4 more\]"),
    ],
)  # fmt: skip
def test_a_label_outside_its_set_is_bad_feedback(label: str, labels: str, match: str) -> None:
    with pytest.raises(BadFeedback, match=match):
        check_feedback_label(Feedback("q", label, None), labels)


def test_nothing_to_check_a_label_against() -> None:
    check_feedback_label(Feedback("q", "Maybe", None), None)  # no record: the learner says unknown
    check_feedback_label(Feedback("q", None, 0.5), '["Yes"]')  # a reward has no label


def test_usable_id() -> None:
    assert usable_id({"id": " q "}) == "q"
    assert usable_id({"id": ""}) is None and usable_id({}) is None
    assert usable_id({"id": "q" * (MAX_ID_CHARS + 1)}) is None


def test_undecodable_fields_are_kept_escaped_with_the_reason() -> None:
    reply = [b"0-0", [[b"1-0", [b"id", b"q1", b"text", b"caf\xe9", b"\xff\xfe", b"v"]]]]
    _, (entry,) = parse_autoclaim(reply)
    assert entry.fields == {"id": "q1"}
    assert entry.undecodable == {"text": "caf\\xe9", "\\xff\\xfe": "v"}
    assert "field 'text' is not valid UTF-8" in entry.decode_error
    assert "a field name is not valid UTF-8" in entry.decode_error
    dead = dead_fields(entry, "decode", entry.decode_error)
    assert dead["text"] == "caf\\xe9" and dead["stage"] == "decode" and dead["id"] == "q1"
    _, (good,) = parse_autoclaim([b"0-0", [(b"2-0", {b"id": "é".encode()})]])
    assert good.fields == {"id": "é"} and good.decode_error == "" and not good.undecodable


def test_clip_cuts_at_a_word_boundary() -> None:
    assert clip("short", 10) == "short"
    text = "the quick brown fox jumps over the lazy dog"
    got = clip(text, 22)
    assert got.startswith("the quick brown fox … (") and got.endswith(" more characters)")
    assert clip("abc def", 3) == "abc … (4 more characters)"  # a space right at the limit
    assert clip("x" * 50, 10) == "x" * 10 + " … (40 more characters)"  # one long word
    assert len(clip("word " * 10_000)) < 2100
