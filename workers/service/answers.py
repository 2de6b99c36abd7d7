"""Turning an LLM's raw answer into one label of the task's label set."""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"[A-Za-z0-9]+")


def parse_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label ``answer`` gives, or None when it names none (or several) of ``labels``.

    The first word decides when it is a label ("B) because…", "Yes.", "['A']"); otherwise a
    multi-letter label that appears alone among the labels in the answer ("The sentiment is
    negative"). Single letters are only read from the first word: "I do" is not answer "I".
    """
    by_fold = {label.casefold(): label for label in labels}
    tokens = _TOKEN.findall(answer)
    if not tokens:
        return None
    first = tokens[0].casefold()
    if first in by_fold:
        return by_fold[first]
    words = {t.casefold() for t in tokens}
    found = {by_fold[w] for w in words if w in by_fold and len(w) > 1}
    return found.pop() if len(found) == 1 else None
