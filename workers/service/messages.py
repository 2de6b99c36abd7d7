"""What a query and a feedback entry must hold: checked the same way by the service (the
router and the learner) and by ``metallm submit`` and ``metallm feedback`` before they send,
so that the command line refuses exactly what the service would dead-letter.

Labels match case-insensitively, ignoring surrounding whitespace ("yes " is the label "Yes"),
as ``bandit.reward.is_correct`` compares an answer with the true label; so a query's label
set may not hold two labels that match each other, and a feedback label must match one
label of the query's set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bandit.config import TaskConfig
from bandit.errors import MetalLMError
from bandit.reward import is_correct
from workers.service.settings import ServiceSettings

# A query id names Redis keys (decision:{id}, learned:{id}) that live for the reward wait;
# ids are client-chosen strings such as UUIDs, far shorter than this.
MAX_ID_CHARS = 256
SHOWN_CHARS = 60  # of a bad value quoted in a reason: a value can be megabytes
SHOWN_LABELS = 16  # of a label set quoted in a reason


class BadQuery(MetalLMError, ValueError):
    """A query that can never be answered: the router dead-letters it (and answers it with
    the reason when it has a usable id)."""


class BadFeedback(MetalLMError, ValueError):
    """A feedback entry that can never be learned: the learner dead-letters it."""


@dataclass(frozen=True)
class Query:
    """A query as the router serves it: ``meta`` is the raw JSON text ("" when none)."""

    id: str
    text: str
    labels: tuple[str, ...]
    meta: str


@dataclass(frozen=True)
class Feedback:
    """A label (``reward`` None) or an explicit reward in [0, 1] (``label`` None) for a query."""

    id: str
    label: str | None
    reward: float | None


def show(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for a reason, its first ``limit`` characters when it is longer."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def _show_labels(labels: Sequence[str]) -> str:
    shown = ", ".join(show(x) for x in labels[:SHOWN_LABELS])
    more = f", … {len(labels) - SHOWN_LABELS} more" if len(labels) > SHOWN_LABELS else ""
    return f"[{shown}{more}]"


def usable_id(fields: Mapping[str, str]) -> str | None:
    """The entry's query id when it has one that a client can wait for, else None."""
    qid = fields.get("id", "").strip()
    return qid if 0 < len(qid) <= MAX_ID_CHARS else None


def _id(fields: Mapping[str, str], error: type[MetalLMError]) -> str:
    qid = fields.get("id", "").strip()
    if not qid:
        raise error("missing or empty field 'id'")
    if len(qid) > MAX_ID_CHARS:
        raise error(f"field 'id' has {len(qid):,} characters; the most is {MAX_ID_CHARS}")
    return qid


def _json(fields: Mapping[str, str], name: str) -> object:
    try:
        return json.loads(fields[name])
    # Deep nesting ("[[[[…") raises RecursionError, not a ValueError.
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise BadQuery(f"field {name!r} is not JSON: {reason}") from None


def _check_label(label: str, settings: ServiceSettings, error: type[MetalLMError]) -> None:
    if not label.strip():
        raise error(f"a label is empty ({label!r})")
    if len(label) > settings.max_label_chars:
        raise error(
            f"label {show(label)} is too long; the most is max_label_chars = {settings.max_label_chars}"
        )


def _labels(fields: Mapping[str, str], settings: ServiceSettings) -> tuple[str, ...]:
    raw = fields["labels"]
    # Longest JSON a list within the limits can be (each character escaped as \uXXXX):
    # anything longer is refused before it is parsed.
    longest = settings.max_labels * (6 * settings.max_label_chars + 4) + 2
    if len(raw) > longest:
        raise BadQuery(
            f"field 'labels' has {len(raw):,} characters, more than max_labels = "
            f"{settings.max_labels} labels of max_label_chars = {settings.max_label_chars} can take"
        )
    parsed = _json(fields, "labels")
    if not isinstance(parsed, list) or not parsed or not all(isinstance(x, str) for x in parsed):
        raise BadQuery("field 'labels' must be a non-empty JSON list of strings")
    if len(parsed) > settings.max_labels:
        raise BadQuery(
            f"field 'labels' has {len(parsed)} labels; the most is max_labels = {settings.max_labels}"
        )
    seen: dict[str, str] = {}
    for label in parsed:
        _check_label(label, settings, BadQuery)
        key = label.strip().casefold()
        if key in seen:
            raise BadQuery(
                f"labels {show(seen[key])} and {show(label)} are the same label (labels match "
                "case-insensitively, ignoring surrounding whitespace)"
            )
        seen[key] = label
    return tuple(parsed)


def parse_query(
    fields: Mapping[str, str], settings: ServiceSettings, task: TaskConfig | None = None
) -> Query:
    """The query an entry's fields hold, or BadQuery with the reason. ``task``: the one the
    router serves (None: the task name is not checked and there is no default label set,
    as for a client that does not know the router's config)."""
    qid = _id(fields, BadQuery)
    text = fields.get("text", "")
    if not text.strip():
        raise BadQuery("missing or empty field 'text'")
    if len(text) > settings.max_text_chars:
        raise BadQuery(
            f"field 'text' has {len(text):,} characters; the most is max_text_chars = "
            f"{settings.max_text_chars:,}"
        )
    name = fields.get("task", "").strip()
    if task is not None and name and name != task.name:
        raise BadQuery(f"unknown task {show(name)}; this router serves {task.name!r}")
    labels = _labels(fields, settings) if fields.get("labels") else task.labels if task else ()
    meta = fields.get("meta", "")
    if meta:
        if len(meta) > settings.max_text_chars:  # passed through to the response
            raise BadQuery(
                f"field 'meta' has {len(meta):,} characters; the most is max_text_chars = "
                f"{settings.max_text_chars:,}"
            )
        _json(fields, "meta")
    return Query(qid, text, labels, meta)


def parse_feedback(fields: Mapping[str, str], settings: ServiceSettings) -> Feedback:
    """The feedback an entry's fields hold, or BadFeedback with the reason. A field that is
    there counts as given, even when empty."""
    qid = _id(fields, BadFeedback)
    if "label" in fields and "reward" in fields:
        raise BadFeedback(
            "feedback has both 'label' and 'reward'; send one: the true label, or a reward in "
            "[0, 1] for a task where correctness is not a label match"
        )
    if "label" in fields:
        _check_label(fields["label"], settings, BadFeedback)
        return Feedback(qid, fields["label"], None)
    if "reward" not in fields:
        raise BadFeedback(
            "feedback needs 'label' (the true label) or 'reward' (a number in [0, 1])"
        )
    raw = fields["reward"]
    try:
        reward = float(raw)
    except ValueError:
        raise BadFeedback(f"field 'reward' = {show(raw)} is not a number in [0, 1]") from None
    if not (math.isfinite(reward) and 0 <= reward <= 1):
        raise BadFeedback(f"field 'reward' = {show(raw)} must be a number in [0, 1]")
    return Feedback(qid, None, reward)


def check_feedback_label(feedback: Feedback, labels_json: str | None) -> None:
    """BadFeedback when a feedback label is not in its query's label set (``labels_json``,
    the decision record's ``labels``; None or unreadable: no set to check against)."""
    if feedback.label is None or labels_json is None:
        return
    try:
        allowed = json.loads(labels_json)
    except (ValueError, RecursionError):
        return  # the router writes this field; a record it did not write is not checked
    if not isinstance(allowed, list) or not all(isinstance(x, str) for x in allowed):
        return
    if not allowed:
        raise BadFeedback(
            f"label {show(feedback.label)} for query {show(feedback.id)}, whose task has no "
            "label set: send a reward in [0, 1] instead"
        )
    if not any(is_correct(a, feedback.label) for a in allowed):
        raise BadFeedback(
            f"label {show(feedback.label)} is not one of query {show(feedback.id)}'s labels "
            f"{_show_labels(allowed)} (labels match case-insensitively, ignoring surrounding "
            "whitespace)"
        )
