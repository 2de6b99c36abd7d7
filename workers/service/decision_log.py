"""The service's own log: every joined decision, kept in the stream ``{prefix}decisions``.

Decision records expire (``decision_ttl_s``: the reward wait plus a grace period), so what
the service decided and learned would be gone within hours. The learner appends each
decision it joins with a label (or an explicit reward) to this stream in its commit
transaction, with the model and the acknowledgements (``Learner.publish``): a learner killed
before its commit re-learns those labels and logs them then, so each decision is logged
exactly once. The stream is trimmed to ``decision_log_maxlen`` entries (exactly: the oldest
go first; 0 = no log). Decisions learned with the default reward (no label came) carry no
outcome and are not logged.

One stream entry per decision, its one field ``d`` a JSON object: ``id``, ``arm``, ``prob``
(the probability the arm was drawn with), ``pmf`` (the logged pmf, a list) over ``arms``
(the arm names), ``p``, ``model_version``, ``time`` (when it was decided, unix seconds),
``learned_at``, ``label`` (the true label; absent for an explicit reward), ``answer`` (the
answer's parsed label), ``correct`` (0/1) or ``score`` (an explicit reward in [0, 1]),
``reward`` (a − p·c), ``cost_usd``, and ``text`` — or, when ``decision_log_texts`` is
false, ``features`` (the context line the policy saw: the embedding, and the words when
word features are on) instead of the text. A commit's entries are appended by
``decision_log.lua`` in one command (one XADD per decision, packed and its reply parsed,
cost the learner a third of its throughput; ``scripts/bench_service.py`` measures it).

``metallm export`` (workers/cli/export.py) turns the entries into the long import format
(``export_row``): one row per decision, the chosen arm only, with its logged probability.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import IO, Any

import redis.asyncio as aioredis

from bandit.errors import ConfigError
from bandit.reward import reward
from workers.service.settings import Keys, ServiceSettings
from workers.service.streams import text

# The decision record's fields the log needs besides those the learner reads to learn.
LOG_FIELDS = ("text", "model_version", "decided_at")
EXPORT_BATCH = 1000  # entries per XRANGE while exporting
ENTRY_FIELD = "d"  # the one field of a log entry: the decision as a JSON object
_APPEND = resources.files(__package__).joinpath("decision_log.lua").read_text(encoding="utf-8")


def record_text(settings: ServiceSettings, query_text: str) -> dict[str, str]:
    """What a router adds to a decision record for the log: the query's text when the log
    is on and keeps texts (otherwise the record's context line is what gets logged)."""
    if settings.decision_log_maxlen and settings.decision_log_texts:
        return {"text": query_text}
    return {}


class DecisionLog:
    """The learner's side: entries collected as labels are learned, written at the commit."""

    def __init__(self, settings: ServiceSettings, keys: Keys) -> None:
        self.maxlen = settings.decision_log_maxlen
        self.keep_texts = settings.decision_log_texts
        self.stream = keys.decisions
        self._pending: list[str] = []  # the pending decisions, as JSON
        self._queued = 0
        self._arm_names: tuple[str, ...] = ()
        self._arms_json = "[]"

    def note(self, record: dict[str, str], query_id: str, label: str | None) -> None:
        """Put the query id and the true label (None: an explicit reward) into a joined
        record, for ``add`` once it is learned."""
        record["_id"] = query_id
        if label is not None:
            record["_truth"] = label

    def add(self, record: dict[str, str], correct: float, arm_names: Sequence[str]) -> None:
        """One learned decision (its record, after ``note``; ``correct``: a ∈ [0, 1])."""
        if not self.maxlen:
            return
        names = tuple(arm_names)
        if names != self._arm_names:
            self._arm_names, self._arms_json = names, json.dumps(names)
        entry = {
            "id": record["_id"],
            "arm": record.get("arm_name") or names[int(record["arm"])],
            "prob": record["prob"],
            "p": record.get("p", "0"),
            "model_version": record.get("model_version", ""),
            "time": record.get("decided_at", ""),
            "learned_at": repr(time.time()),
            "answer": record.get("label", ""),
            "reward": repr(reward(correct, float(record["cost"]), float(record.get("p", "0")))),
            "cost_usd": record.get("cost_usd", "0"),
        }
        if "_truth" in record:
            entry.update(label=record["_truth"], correct=str(int(correct)))
        else:
            entry["score"] = repr(correct)
        if self.keep_texts and "text" in record:
            entry["text"] = record["text"]
        else:
            entry["features"] = record["shared"]
        # The pmf (a JSON list, as logged) and the arm names it is over go in as they are.
        dumped = json.dumps(entry, ensure_ascii=False)
        pmf = record.get("pmf", "[]")
        self._pending.append(f'{dumped[:-1]}, "pmf": {pmf}, "arms": {self._arms_json}}}')

    def queue_commit(self, pipe: Any) -> None:
        """Append the pending entries in the learner's commit transaction ``pipe``."""
        if self._pending:
            pipe.eval(_APPEND, 1, self.stream, self.maxlen, *self._pending)
        self._queued = len(self._pending)

    def committed(self) -> None:
        """The commit went through: what it queued is in the stream."""
        del self._pending[: self._queued]
        self._queued = 0


# -- reading it back (metallm export) ---------------------------------------------------
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: float | None = None) -> float:
    """``--since``: unix seconds (``1767225600``), an ISO time (``2026-12-01T08:00``, UTC
    unless it names its zone) or a span back from now (``90m``, ``24h``, ``7d``); unix seconds."""
    raw = value.strip()
    now = time.time() if now is None else now
    m = _RELATIVE.match(raw)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {value!r} is not a time: give unix seconds (1767225600), an ISO time "
            "(2026-12-01T08:00, UTC unless it has a zone) or a span such as 90m, 24h or 7d"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


async def read_log(
    r: aioredis.Redis, keys: Keys, since: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The log's entries, oldest first, decided at ``since`` (unix seconds) or later. An
    entry's stream id is its commit time, never before its decision: reading starts there."""
    start = "-" if since is None else f"{max(int(since * 1000), 0)}-0"
    while True:
        batch: Any = await r.xrange(keys.decisions, min=start, count=EXPORT_BATCH)
        if not batch:
            return
        for _, raw in batch:
            fields = json.loads(text(raw.get(ENTRY_FIELD.encode(), b"{}")))
            if since is None or float(fields.get("time") or 0) >= since:
                yield fields
        last = text(batch[-1][0])
        start = f"({last}"


def export_row(fields: dict[str, Any]) -> dict[str, Any]:
    """One log entry as a row of the long import format (CONTRACT: ``id``, ``text``,
    ``arm``, ``correct`` or ``score``, ``cost_usd``, ``label``, ``answer``, and the logged
    bandit feedback ``prob``, ``pmf``, ``p``, ``model_version``, ``time``, ``reward``)."""
    row: dict[str, Any] = {"id": fields["id"], "text": fields.get("text", ""),
                           "arm": fields["arm"]}  # fmt: skip
    if "correct" in fields:
        row["correct"] = int(fields["correct"])
    else:
        row["score"] = float(fields["score"])
    row["cost_usd"] = float(fields.get("cost_usd") or 0)
    for name in ("label", "answer"):
        if fields.get(name):
            row[name] = fields[name]
    row["prob"] = float(fields["prob"])
    pmf = fields.get("pmf") or {}
    if isinstance(pmf, list):  # as logged, over the arms the entry names
        pmf = dict(zip(fields.get("arms") or [], pmf, strict=False))
    row["pmf"] = pmf
    row["p"] = float(fields.get("p") or 0)
    row["model_version"] = int(fields.get("model_version") or 0)
    row["time"] = float(fields.get("time") or 0)
    row["reward"] = float(fields["reward"])
    if "features" in fields:
        row["features"] = fields["features"]
    return row


async def export_log(redis_url: str, prefix: str, out: IO[str], since: float | None) -> int:
    """Write the log's decisions made at ``since`` (unix seconds) or later to ``out`` as JSON
    lines (``export_row``); returns how many."""
    r = aioredis.from_url(redis_url)
    n = 0
    try:
        async for fields in read_log(r, Keys(prefix), since):
            out.write(json.dumps(export_row(fields), ensure_ascii=False) + "\n")
            n += 1
    finally:
        await r.aclose()
    return n
