"""Offline training of a Policy on recorded outcomes.

Two ways, both ending in the same Policy object the service uses:

- ``train_bandit``: MetaLLM's Algorithm 1. Each training query is shown once (in a seeded
  order); the policy samples an arm from its pmf, sees only that arm's outcome and learns
  it with the logged probability. This is also the "online replay": what the service
  would have learned had it been live on these queries.
- ``train_full_information``: a warm start for when every arm's outcome is known for the
  training rows (as in the recorded data sets): every arm's outcome is learned, with
  probability 1, for ``config.warm_start_passes`` passes. An imported file may miss some
  cells (``observed``) and may carry the logging policy's probabilities (``prob``): then
  only the recorded cells are learned, each importance-weighted by its probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bandit.policy import Policy


@dataclass(frozen=True)
class TrainingData:
    """What training needs of a data set's rows.

    - ``shared``: shape (n,), the VW shared line of each query (FeatureBuilder.shared).
    - ``correct``: shape (n, n_arms), 1 where the arm was right.
    - ``cost``: shape (n, n_arms), normalised cost the reward charges (fixed or dynamic).
    - ``cost_usd``: shape (n, n_arms), USD actually spent, for reporting.
    - ``observed``: shape (n, n_arms), bool, the cells whose outcome is known (None: all).
    - ``prob``: shape (n, n_arms), the logging policy's probability of each recorded cell
      (None: full information, 1).
    """

    shared: Sequence[str]
    correct: np.ndarray
    cost: np.ndarray
    cost_usd: np.ndarray
    observed: np.ndarray | None = None
    prob: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.shared)


@dataclass(frozen=True)
class ReplayResult:
    """Progressive (online) figures of a bandit pass: what the routed queries got."""

    rounds: int
    progressive_acc: float
    progressive_cost_per_10k: float
    explored_share: float


def train_full_information(policy: Policy, data: TrainingData, seed: int = 0) -> Policy:
    """Learn every recorded arm's outcome on every row, ``warm_start_passes`` times, in a
    seeded order."""
    rng = np.random.default_rng(seed)
    for _ in range(policy.config.warm_start_passes):
        for i in rng.permutation(len(data)):
            for j in range(policy.n_arms):
                if data.observed is not None and not data.observed[i, j]:
                    continue
                prob = 1.0 if data.prob is None else float(data.prob[i, j])
                policy.learn_line(
                    data.shared[i], j, prob, float(data.correct[i, j]), float(data.cost[i, j])
                )
    return policy


def train_bandit(policy: Policy, data: TrainingData, seed: int = 0) -> ReplayResult:
    """Algorithm 1: one pass in a seeded order with bandit feedback only. A row that misses
    some arms draws among the recorded ones (``available``), as the service does when an
    arm is down."""
    order = np.random.default_rng(seed).permutation(len(data))
    got = spent = explored = 0.0
    for i in order:
        available = None if data.observed is None else data.observed[i]
        (d,) = policy.decide_lines([data.shared[i]], available=available)
        a = float(data.correct[i, d.arm])
        policy.learn_line(data.shared[i], d.arm, d.prob, a, float(data.cost[i, d.arm]))
        got += a
        spent += float(data.cost_usd[i, d.arm])
        explored += d.explored
    n = max(len(order), 1)
    return ReplayResult(len(order), got / n, spent / n * 10_000, explored / n)


def train_logged(
    policy: Policy,
    data: TrainingData,
    observed: np.ndarray,
    logged_prob: np.ndarray,
    seed: int = 0,
    passes: int = 1,
) -> int:
    """Off-policy learning from a logged bandit policy's decisions (an exported service log):
    each observed cell (row i, arm j) is learned once per pass, in a seeded order, with the
    probability the logging policy drew arm j with, so VW weighs it by 1 / that probability
    (the importance weight that undoes the logging policy's preferences), as the service's
    learner learned it online. ``observed``: shape (n, n_arms), bool; ``logged_prob``: shape
    (n, n_arms), in (0, 1] where observed. Returns how many updates were learned."""
    rows, arms = np.nonzero(observed)
    probs = logged_prob[rows, arms]
    if len(rows) and not (np.all(probs > 0) and np.all(probs <= 1)):
        raise ValueError("logged probabilities must be in (0, 1] on every observed cell")
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        for k in rng.permutation(len(rows)):
            i, j = int(rows[k]), int(arms[k])
            policy.learn_line(data.shared[i], j, float(probs[k]), float(data.correct[i, j]),
                              float(data.cost[i, j]))  # fmt: skip
    return len(rows) * passes
