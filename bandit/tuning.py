"""Tuning the policy's learning settings on the validation split.

Vowpal Wabbit's defaults (learning rate 0.5, one pass) were not chosen for dense
384-dimensional embeddings. ``tune`` picks the warm start's learning rate, passes and
whether word features help, by the router's AIQ on validation; ``tune_online`` picks the
learning rate of a cold-started bandit learner by its progressive accuracy (each round
scored before it is learned) over train + validation. Neither looks at test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from bandit.calibration import sweep
from bandit.evaluation import Experiment
from bandit.frontier import aiq
from bandit.policy import PolicyConfig
from bandit.training import train_bandit

LEARNING_RATES = (0.1, 0.2, 0.5, 1.0)
ONLINE_LEARNING_RATES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
PASSES = (1, 2, 4)
WORD_FEATURES = (True, False)


@dataclass(frozen=True)
class TrialResult:
    learning_rate: float
    warm_start_passes: int
    word_features: bool
    val_aiq: float


def tune(
    ex: Experiment,
    base: PolicyConfig,
    learning_rates: Sequence[float] = LEARNING_RATES,
    passes: Sequence[int] = PASSES,
    word_features: Sequence[bool] = WORD_FEATURES,
    seed: int = 0,
) -> list[TrialResult]:
    """Every combination's validation AIQ (decoupled mode), best first."""
    val = ex.split.val
    dearest = max(ex.cost_usd[val].mean(0))
    results = []
    for lr, n_pass, words in product(learning_rates, passes, word_features):
        cfg = base.replace(
            mode="decoupled", learning_rate=lr, warm_start_passes=n_pass, word_features=words
        )
        exw = ex if words == ex.config.policy.word_features else ex.with_word_features(words)
        policy = exw.warm_policy(cfg, seed)
        pts = sweep(
            exw.correctness(policy, val), exw.reward_cost[val], exw.correct[val], exw.cost_usd[val]
        )
        score = aiq([(pt.cost_per_10k / 10_000, pt.acc) for pt in pts], dearest)
        results.append(TrialResult(lr, n_pass, words, score))
    return sorted(results, key=lambda r: -r.val_aiq)


@dataclass(frozen=True)
class OnlineTrialResult:
    online_learning_rate: float
    progressive_acc: float
    progressive_cost_per_10k: float


def tune_online(
    ex: Experiment,
    base: PolicyConfig,
    learning_rates: Sequence[float] = ONLINE_LEARNING_RATES,
    seed: int = 0,
) -> list[OnlineTrialResult]:
    """Progressive accuracy of a cold ε-greedy replay (p = 0, the config's ε) at each rate."""
    rows = np.concatenate([ex.split.train, ex.split.val])
    results = []
    for lr in learning_rates:
        policy = ex.new_policy(base.replace(mode="decoupled", p=0.0, learning_rate=lr))
        res = train_bandit(policy, ex.data(rows), seed)
        results.append(OnlineTrialResult(lr, res.progressive_acc, res.progressive_cost_per_10k))
    return sorted(results, key=lambda r: -r.progressive_acc)
