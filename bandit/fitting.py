"""What ``metallm train`` fits on recorded outcomes: a policy to write as a snapshot.

- Full information (every arm's outcome recorded for the training rows, as in the bundled
  data sets and an imported benchmark): the warm start on the train split, with the
  learning rate, passes and word features that ``bandit.tuning.tune`` picks by the router's
  AIQ on validation (as ``metallm tune`` prints them), unless tuning is off.
- Logged bandit feedback (``Dataset.logged_prob`` set: an exported service log, one arm per
  query): the off-policy pass ``bandit.training.train_logged`` over every row not marked
  ``test``, at the config's online learning rate (the rate the service's learner learned
  those rows with), each row weighted by 1 / its logged probability.

Either way the figures that come with it say what was trained and how it did on rows it did
not learn from (validation), or, for a log, the off-policy (SNIPS) estimate of its greedy
choices on the log itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bandit.calibration import PER_10K, sweep
from bandit.config import RoutingConfig
from bandit.datasets import Dataset, Split
from bandit.errors import ConfigError
from bandit.evaluation import Experiment
from bandit.features import FeatureBuilder
from bandit.frontier import aiq
from bandit.policy import Policy
from bandit.training import TrainingData, train_full_information, train_logged
from bandit.tuning import tune

REPORT_P = (0.0, 0.02, 0.05, 0.1)  # p at which the validation figures are printed


@dataclass
class Fitted:
    """A trained policy and what to print about it. ``figures``: label → (accuracy, USD per
    10k queries); ``settings``: the learning settings used (tuned or the config's)."""

    policy: Policy
    kind: str  # "full information" or "logged (off-policy)"
    rows: int  # training rows (queries)
    updates: int
    settings: dict[str, object]
    tuned: bool
    figures: dict[str, tuple[float, float]] = field(default_factory=dict)
    val_aiq: float | None = None


def fit(
    ds: Dataset,
    vectors: np.ndarray,
    split: Split | None,
    config: RoutingConfig,
    *,
    tune_settings: bool = True,
    seed: int = 0,
    passes: int = 1,
) -> Fitted:
    """Train on ``ds`` (rows × its arms; embeddings ``vectors``, shape (n, dim)); see the
    module docstring. ``passes``: passes over a log (off-policy only)."""
    if ds.logged_prob is not None:
        return _fit_logged(ds, vectors, config, seed, passes)
    if split is None:
        raise ConfigError(f"{ds.name}: full-information training needs a train/validation split")
    if ds.observed is not None and not ds.observed.all():
        tune_settings = False  # tune() learns every cell: only complete data can be tuned
    ex = Experiment(ds, vectors, split, config)
    cfg = config.policy
    tuned = False
    if tune_settings:
        best = tune(ex, cfg, seed=seed)[0]
        cfg = cfg.replace(learning_rate=best.learning_rate,
                          warm_start_passes=best.warm_start_passes,
                          word_features=best.word_features)  # fmt: skip
        tuned = True
    if cfg.word_features != ex.config.policy.word_features:
        ex = ex.with_word_features(cfg.word_features)
    train = split.train
    policy = ex.new_policy(cfg)
    if ds.observed is None:
        train_full_information(policy, ex.data(train), seed)
        updates = policy.updates
    else:  # an imported file missing some arms: only the recorded cells, with prob 1
        observed = ds.observed[train][:, [ds.arms.index(n) for n in ex.arm_names]]
        updates = train_logged(policy, ex.data(train), observed, np.ones(observed.shape),
                               seed, cfg.warm_start_passes)  # fmt: skip
    out = Fitted(policy, "full information", len(train), updates, _settings(cfg), tuned)
    val = split.val
    if len(val) and cfg.mode == "decoupled":
        scores = ex.correctness(policy, val)
        points = sweep(scores, ex.reward_cost[val], ex.correct[val], ex.cost_usd[val])
        dearest = float(ex.cost_usd[val].mean(0).max())
        out.val_aiq = aiq([(pt.cost_per_10k / PER_10K, pt.acc) for pt in points], dearest)
        for p in REPORT_P:
            pt = sweep(scores, ex.reward_cost[val], ex.correct[val], ex.cost_usd[val], [p])[0]
            out.figures[f"router, p = {p:g}"] = (pt.acc, pt.cost_per_10k)
        j = int(np.argmax(ex.correct[val].mean(0)))
        out.figures[f"best arm alone ({ex.arm_names[j]})"] = (
            float(ex.correct[val, j].mean()), float(ex.cost_usd[val, j].mean() * PER_10K))  # fmt: skip
    return out


def _fit_logged(
    ds: Dataset, vectors: np.ndarray, config: RoutingConfig, seed: int, passes: int
) -> Fitted:
    names = config.arms.names
    if set(names) != set(ds.arms):
        raise ConfigError(f"the config's arms {sorted(names)} differ from the data's {sorted(ds.arms)}")  # fmt: skip
    assert ds.logged_prob is not None
    cols = [ds.arms.index(n) for n in names]
    rows = np.flatnonzero(ds.source_split != "test")
    cfg = config.policy.for_online()
    correct, usd = ds.correct[rows][:, cols], ds.cost_usd[rows][:, cols]
    observed = ds.observed_mask[rows][:, cols]
    prob = np.where(observed, ds.logged_prob[rows][:, cols], 1.0)
    costs = config.arms.normalised_costs()
    reward_cost = (config.arms.normalise_usd(usd) if cfg.cost_mode == "dynamic"
                   else np.tile(costs, (len(rows), 1)))  # fmt: skip
    builder = FeatureBuilder(names, vectors.shape[1], word_features=cfg.word_features)
    shared = builder.shared_batch(vectors[rows], list(ds.texts[rows]))
    policy = Policy(cfg, names, costs, vectors.shape[1])
    data = TrainingData(shared, correct, reward_cost, usd)
    updates = train_logged(policy, data, observed, prob, seed, passes)
    settings = {**_settings(cfg), "passes over the log": passes}
    out = Fitted(policy, "logged (off-policy)", len(rows), updates, settings, False)
    # What the log itself says: the logging policy's own outcomes, and the SNIPS estimate
    # of the trained policy's greedy choices (in-sample: the rows it learned from).
    arm = observed.argmax(1)
    got, paid = correct[np.arange(len(rows)), arm], usd[np.arange(len(rows)), arm]
    out.figures["logging policy (as logged)"] = (float(got.mean()), float(paid.mean() * PER_10K))
    greedy = np.array([d.arm for d in policy.decide_lines(shared, greedy=True)])
    w = (greedy == arm) / prob[np.arange(len(rows)), arm]
    if w.sum() > 0:
        est = (float((w * got).sum() / w.sum()), float((w * paid).sum() / w.sum() * PER_10K))
        out.figures[f"trained, greedy at p = {cfg.p:g} (SNIPS on the log, in-sample)"] = est
    return out


def _settings(cfg: object) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in
            ("mode", "learning_rate", "warm_start_passes", "word_features", "p", "epsilon")}  # fmt: skip
