"""The accounting of scripts/chaos.py's rows (pure functions)."""

from __future__ import annotations

from workers.harness.chaos_tally import (
    Invalid,
    Response,
    extra_calls,
    format_table,
    learnable_ids,
    tally,
)


def ok(qid: str) -> Response:
    return Response(qid, "", "0")


def test_a_clean_row_passes() -> None:
    valid = {"a": "ta", "b": "tb"}
    row = tally("none", valid, [], [ok("a"), ok("b")], set(), 0, ["a", "b"], {"ta": 1, "tb": 1},
                2, 0)  # fmt: skip
    assert row.ok
    assert (row.sent, row.answered, row.lost, row.labels_sent, row.labels_learned) == (
        2,
        2,
        0,
        2,
        2,
    )


def test_lost_counts_unanswered_valid_queries_and_unhandled_invalid_entries() -> None:
    valid = {"a": "ta", "b": "tb"}
    invalid = [
        Invalid("t1", None),  # no id, dead-lettered: handled
        Invalid("t2", None),  # no id, not dead-lettered: lost
        Invalid("t3", "x"),  # an id, answered with an error: handled
        Invalid("t4", "y"),  # an id, only dead-lettered: the application never hears: lost
    ]
    responses = [ok("a"), Response("x", "parse: no text", "0")]
    row = tally("f", valid, invalid, responses, {"t1", "y"}, 2, ["a"], {"ta": 1}, 1, 0)
    assert row.sent == 6
    assert row.answered == 2  # a and x
    assert row.lost == 1 + 2  # b, t2, y
    assert row.dead_lettered == 2
    assert not row.ok


def test_extra_calls_count_answers_beyond_one_per_text() -> None:
    assert extra_calls({"ta": 3, "tb": 1, "other": 5}, ["ta", "tb", "tc", "ta"]) == 2


def test_errors_are_not_learnable_redraws_are_and_the_first_response_counts() -> None:
    responses = [ok("a"), Response("b", "all arms failed", "0"), Response("c", "", "1"),
                 Response("d", "timeout", "0"), ok("d"), ok("f"), Response("f", "timeout", "0")]  # fmt: skip
    assert learnable_ids(["a", "b", "c", "d", "e", "f"], responses) == {"a", "c", "f"}


def test_learned_twice_and_labels_lost_compare_the_version_with_the_learnable_labels() -> None:
    valid = {"a": "ta", "b": "tb", "c": "tc"}
    responses = [ok("a"), ok("b"), Response("c", "all arms failed", "0")]
    twice = tally("f", valid, [], responses, set(), 0, ["a", "b", "c"], {}, 5, 0)
    assert (twice.learned_twice, twice.labels_lost) == (3, 0)
    lost = tally("f", valid, [], responses, set(), 0, ["a", "b", "c"], {}, 1, 0)
    assert (lost.learned_twice, lost.labels_lost) == (0, 1)


def test_the_table_marks_failing_cells() -> None:
    row = tally("redis-kill", {"a": "ta"}, [], [], set(), 0, [], {}, 0, 2)
    table = format_table([row])
    assert "| redis-kill | 1 | 0 | 1* | 0 | 0 | 0 | 0 | 0 | 0 | 2* |" in table
