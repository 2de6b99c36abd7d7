"""Vowpal Wabbit input for one decision: a shared context line and one line per arm.

The shared line holds the query: its embedding (namespace ``x``) and, optionally, its
words (namespace ``w``). Each arm line holds only the arm's name (namespace ``a``), and
the policy crosses ``x``×``a`` and ``w``×``a``, which gives every arm its own linear model.

Formatting 384 floats is the per-query cost that matters, so the format string is built
once and filled with one ``%`` operation per query (scripts/bench_core.py measures it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bandit.errors import PolicyError

_WORD = re.compile(r"[a-z0-9]+")
# Decimal digits kept per embedding value; unit vectors of 384 dims have entries ≈ 0.05,
# so 5 decimals keep four significant digits.
DEFAULT_DECIMALS = 5


def arm_token(name: str) -> str:
    """An arm name as one VW feature (no spaces, colons or bars)."""
    return "arm_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass(frozen=True)
class FeatureBuilder:
    """Builds VW multi-line examples for ``n_arms`` arms from embeddings and texts."""

    arm_names: tuple[str, ...]
    dim: int
    word_features: bool = True
    decimals: int = DEFAULT_DECIMALS
    # Derived once here, so that the per-query work is one % operation.
    _fmt: str = field(init=False, repr=False, compare=False)
    arm_lines: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fmt = "shared |x " + " ".join(f"{i}:%.{self.decimals}f" for i in range(self.dim))
        object.__setattr__(self, "_fmt", fmt)
        object.__setattr__(self, "arm_lines", tuple(f"|a {arm_token(n)}" for n in self.arm_names))

    def shared(self, vector: np.ndarray, text: str = "") -> str:
        """The shared line for one query; vector shape (dim,)."""
        if vector.shape != (self.dim,):
            raise PolicyError(f"embedding has shape {vector.shape}, expected ({self.dim},)")
        line = self._fmt % tuple(vector.tolist())
        if self.word_features and text:
            line += " |w " + " ".join(_WORD.findall(text.lower()))
        return line

    def shared_batch(self, vectors: np.ndarray, texts: Sequence[str] | None = None) -> list[str]:
        """Shared lines for a batch; vectors shape (n, dim)."""
        texts = texts if texts is not None else [""] * len(vectors)
        return [self.shared(v, t) for v, t in zip(vectors, texts, strict=True)]

    def predict_example(self, shared: str) -> list[str]:
        return [shared, *self.arm_lines]

    def learn_example(self, shared: str, arm: int, cost: float, prob: float) -> list[str]:
        """The multi-line example labelling arm ``arm`` with ``cost`` chosen with ``prob``."""
        lines = [shared, *self.arm_lines]
        lines[arm + 1] = f"0:{float(cost)!r}:{float(prob)!r} {lines[arm + 1]}"
        return lines
