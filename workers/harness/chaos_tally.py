"""Accounting of a fault-injection row: what was sent against what came back, was paid for,
dead-lettered and learned. Pure functions over what the run read; definitions in
scripts/chaos.py's docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# A row fails when any of these is above 0.
FAILING = ("lost", "extra_llm_calls", "learned_twice", "labels_lost", "worker_crashes")
COLUMNS = ("fault", "sent", "answered", "lost", "extra_llm_calls", "dead_lettered",
           "labels_sent", "labels_learned", "learned_twice", "labels_lost", "worker_crashes")  # fmt: skip


@dataclass(frozen=True)
class Invalid:
    """An intentionally invalid query entry: ``qid`` when it carries a usable id (None when it
    has none), ``tag`` a marker field that finds it on the dead-letter stream."""

    tag: str
    qid: str | None


@dataclass(frozen=True)
class Response:
    """What the run needs of one entry of the responses stream."""

    qid: str
    error: str
    fallback: str


@dataclass(frozen=True)
class Row:
    fault: str
    sent: int
    answered: int
    lost: int
    extra_llm_calls: int
    dead_lettered: int
    labels_sent: int
    labels_learned: int
    learned_twice: int
    labels_lost: int
    worker_crashes: int

    @property
    def ok(self) -> bool:
        return all(getattr(self, c) == 0 for c in FAILING)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def learnable_ids(labelled: Iterable[str], responses: Iterable[Response]) -> set[str]:
    """Labelled ids whose first response had no error: the labels the learner should learn
    exactly once (an answer from an arm drawn again after the first failed, ``fallback=1``,
    carries its own draw's probability and is learned too). The first, because the label
    answers what the application heard first; a second response for the same query is
    already counted as an extra LLM call."""
    first: dict[str, Response] = {}
    for r in responses:
        first.setdefault(r.qid, r)
    out = set()
    for qid in labelled:
        resp = first.get(qid)
        if resp is not None and not resp.error:
            out.add(qid)
    return out


def extra_calls(answers: Mapping[str, int], texts: Iterable[str]) -> int:
    """Successful LLM answers beyond one per query text (``answers``: per text, from the
    replay server's /admin/stats)."""
    return sum(max(0, answers.get(t, 0) - 1) for t in set(texts))


def tally(
    fault: str,
    valid: Mapping[str, str],
    invalid: Iterable[Invalid],
    responses: Iterable[Response],
    dead_tags: set[str],
    dead_entries: int,
    labelled: Iterable[str],
    answers: Mapping[str, int],
    labels_learned: int,
    worker_crashes: int,
) -> Row:
    """One row. ``valid``: query id → text of the valid queries sent; ``invalid``: the
    intentionally invalid query entries; ``dead_tags``: the ids and tags found on the
    dead-letter stream; ``labelled``: ids whose label was sent; ``labels_learned``: the
    learner's updates during the row."""
    responses = list(responses)
    invalid = list(invalid)
    by_id: dict[str, list[Response]] = {}
    for r in responses:
        by_id.setdefault(r.qid, []).append(r)
    sent_ids = set(valid) | {i.qid for i in invalid if i.qid is not None}
    answered = sum(1 for q in sent_ids if q in by_id)
    lost = sum(1 for q in valid if q not in by_id)
    for i in invalid:
        # Handled: answered (with an error response, say) when it has an id the application
        # can hear of; dead-lettered when it has none.
        handled = i.qid in by_id if i.qid is not None else i.tag in dead_tags
        lost += not handled
    labelled = set(labelled)
    learnable = len(learnable_ids(labelled, responses))
    return Row(
        fault=fault,
        sent=len(valid) + len(invalid),
        answered=answered,
        lost=lost,
        extra_llm_calls=extra_calls(answers, valid.values()),
        dead_lettered=dead_entries,
        labels_sent=len(labelled),
        labels_learned=labels_learned,
        learned_twice=max(0, labels_learned - learnable),
        labels_lost=max(0, learnable - labels_learned),
        worker_crashes=worker_crashes,
    )


def format_table(rows: Iterable[Row]) -> str:
    """The rows as a Markdown table (one column per field, failing cells marked with *)."""
    head = "| " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "|".join("---" if c == "fault" else "---:" for c in COLUMNS) + "|"]
    for row in rows:
        d = row.as_dict()
        cells = [str(d[c]) + ("*" if c in FAILING and d[c] else "") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
