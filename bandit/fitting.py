"""What ``metallm train`` fits on recorded outcomes: a policy to write as a snapshot.

- Full information (every arm's outcome recorded for the training rows, as in the bundled
  data sets and an imported benchmark): the warm start on the train split, with the
  learning rate, passes and word features that ``bandit.tuning.tune`` picks by the router's
  AIQ on validation (as ``metallm tune`` prints them), unless tuning is off.
- Logged bandit feedback (``Dataset.logged_prob`` set: an exported service log, one arm per
  query): the off-policy pass ``bandit.training.train_logged`` over every row not marked
  ``test``, each row weighted by 1 / its logged probability, with the learning rate and
  passes and cap on the weights that give the lowest importance-weighted log loss on
  held-out rows of the log (``LOG_MAX_WEIGHTS`` × ``LOG_LEARNING_RATES`` × ``LOG_PASSES``,
  5-fold cross-validation); untuned: the config's
  online learning rate (the rate the service's learner learned those rows with) and
  ``passes``.

Either way the figures that come with it say what was trained and how it did on rows it did
not learn from (validation), or, for a log, its cross-validated log loss and the off-policy
(SNIPS) estimate of its greedy choices on the log itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np

from bandit.calibration import PER_10K, sweep
from bandit.config import RoutingConfig
from bandit.datasets import Dataset, Split
from bandit.errors import ConfigError
from bandit.evaluation import Experiment
from bandit.features import FeatureBuilder
from bandit.frontier import aiq
from bandit.policy import Policy
from bandit.reward import reward
from bandit.training import TrainingData, train_full_information, train_logged
from bandit.tuning import tune

REPORT_P = (0.0, 0.02, 0.05, 0.1)  # p at which the validation figures are printed
# Tuning on a log: each learning rate × passes is scored by the importance-weighted log loss
# of its predicted correctness of the logged arm on held-out rows, by 5-fold cross-validation
# over the log (one 80/20 split picked differently from one demo run to the next). (The SNIPS estimate of its greedy choices was tried first: with ε = 0.1
# over 12 arms a greedy policy rarely departs from the log where it is scored, so the
# estimates sat at 99-100 % for most settings and picked badly.)
LOG_LEARNING_RATES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LOG_PASSES = (1, 2, 3)
# ... and the largest importance weight a logged row is learned with (None: 1 / prob, no cap;
# 1: unweighted): capping trades the weights' variance for bias, and the criterion, weighted
# with the true probabilities, decides. Uncapped alone was within 1 pp of the full-information
# warm start in 2 of 4 demo logs (README, "Round trip"), with the cap tuned in 3 of 4.
LOG_MAX_WEIGHTS = (None, 10.0, 1.0)
LOG_FOLDS = 5
MIN_LOG_ROWS_TO_TUNE = 50


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
    val_log_loss: float | None = None  # a log's tuning criterion, cross-validated


def fit(
    ds: Dataset,
    vectors: np.ndarray,
    split: Split | None,
    config: RoutingConfig,
    *,
    tune_settings: bool = True,
    seed: int = 0,
    passes: int = 1,
    max_weight: float | None = None,
) -> Fitted:
    """Train on ``ds`` (rows × its arms; embeddings ``vectors``, shape (n, dim)); see the
    module docstring. ``split``: train and validation rows (None for a log, which is not
    split). Off-policy only: ``passes`` over the log when not tuned, and ``max_weight``, the
    largest importance weight 1 / prob a logged row gets (None: no cap; 1: unweighted)."""
    if ds.logged_prob is not None:
        return _fit_logged(ds, vectors, config, seed, passes, tune_settings, max_weight)
    if split is None:
        raise ConfigError(f"{ds.name}: full-information training needs a train/validation split")
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
    # an imported file's missing cells (Dataset.observed) are left out
    train_full_information(policy, ex.data(train), seed)
    out = Fitted(policy, "full information", len(train), policy.updates, _settings(cfg), tuned)
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
    ds: Dataset,
    vectors: np.ndarray,
    config: RoutingConfig,
    seed: int,
    passes: int,
    tune_settings: bool,
    max_weight: float | None,
) -> Fitted:
    names = config.arms.names
    if set(names) != set(ds.arms):
        raise ConfigError(f"the config's arms {sorted(names)} differ from the data's {sorted(ds.arms)}")  # fmt: skip
    assert ds.logged_prob is not None
    cols = [ds.arms.index(n) for n in names]
    rows = np.flatnonzero(ds.source_split != "test")
    base = config.policy.for_online()
    usd = ds.cost_usd[rows][:, cols]
    observed = ds.observed_mask[rows][:, cols]
    costs = config.arms.normalised_costs()
    reward_cost = (config.arms.normalise_usd(usd) if base.cost_mode == "dynamic"
                   else np.tile(costs, (len(rows), 1)))  # fmt: skip
    builder = FeatureBuilder(names, vectors.shape[1], word_features=base.word_features)
    data = TrainingData(builder.shared_batch(vectors[rows], list(ds.texts[rows])),
                        ds.correct[rows][:, cols], reward_cost, usd)  # fmt: skip
    logged = np.where(observed, ds.logged_prob[rows][:, cols], 1.0)
    # Scored with the true logged probabilities; learned with weights capped at ``cap``.
    truth = _Log(data, observed, logged, base.p)

    def capped(cap: float | None) -> _Log:
        return truth if cap is None else _Log(data, observed, np.maximum(logged, 1 / cap), base.p)

    def new(rate: float) -> Policy:
        return Policy(base.replace(learning_rate=rate), names, costs, vectors.shape[1])

    lr, n_pass, cap, tuned = base.learning_rate, passes, max_weight, False
    caps = LOG_MAX_WEIGHTS if max_weight is None else (max_weight,)
    # the criterion scores predicted correctness, which only decoupled mode has
    if tune_settings and len(rows) >= MIN_LOG_ROWS_TO_TUNE and base.mode == "decoupled":
        folds = np.array_split(np.random.default_rng(seed).permutation(len(rows)), LOG_FOLDS)
        best = -np.inf
        for w, rate, k in product(caps, LOG_LEARNING_RATES, LOG_PASSES):
            losses = []
            for f, val_rows in enumerate(folds):
                fit_rows = np.sort(np.concatenate([x for g, x in enumerate(folds) if g != f]))
                policy = new(rate)
                capped(w).train(policy, fit_rows, seed, k)
                losses.append(truth.log_loss(policy, np.sort(val_rows)))
            if -np.mean(losses) > best:
                best, lr, n_pass, cap, tuned = -float(np.mean(losses)), rate, k, w, True
    policy = new(lr)
    updates = capped(cap).train(policy, np.arange(len(rows)), seed, n_pass)
    settings = {**_settings(policy.config), "passes over the log": n_pass,
                "largest importance weight": cap or "no cap"}  # fmt: skip
    out = Fitted(policy, "logged (off-policy)", len(rows), updates, settings, tuned)
    out.figures["logging policy (as logged)"] = (
        float(truth.got.mean()), float(truth.paid.mean() * PER_10K))  # fmt: skip
    if tuned:
        out.val_log_loss = -best
    est = truth.snips(policy, np.arange(len(rows)))
    if est is not None:
        out.figures[f"trained, greedy at p = {base.p:g}, SNIPS on the log (in-sample)"] = est[1:]
    return out


@dataclass
class _Log:
    """A logged policy's decisions: ``data`` (every arm's columns, one observed per row),
    ``observed`` and ``prob``, shape (n, n_arms); ``p``: the price weight to score at."""

    data: TrainingData
    observed: np.ndarray
    prob: np.ndarray
    p: float

    def __post_init__(self) -> None:
        n = np.arange(len(self.data))
        self.arm = self.observed.argmax(1)  # the logged arm of each row
        self.got = self.data.correct[n, self.arm]
        self.paid = self.data.cost_usd[n, self.arm]
        self.reward = reward(self.got, self.data.cost[n, self.arm], self.p)
        self.drawn = self.prob[n, self.arm]

    def train(self, policy: Policy, rows: np.ndarray, seed: int, passes: int) -> int:
        sub = TrainingData([self.data.shared[i] for i in rows], self.data.correct[rows],
                           self.data.cost[rows], self.data.cost_usd[rows])  # fmt: skip
        return train_logged(policy, sub, self.observed[rows], self.prob[rows], seed, passes)

    def log_loss(self, policy: Policy, rows: np.ndarray) -> float:
        """Importance-weighted log loss of ``policy``'s predicted correctness of the logged
        arm on ``rows`` (weights 1 / logged probability, self-normalised)."""
        lines = [self.data.shared[i] for i in rows]
        pred = np.clip(
            policy.correctness(lines)[np.arange(len(rows)), self.arm[rows]], 1e-6, 1 - 1e-6
        )
        y = self.got[rows]
        loss = -(y * np.log(pred) + (1 - y) * np.log(1 - pred))
        w = 1 / self.drawn[rows]
        return float((w * loss).sum() / w.sum())

    def snips(self, policy: Policy, rows: np.ndarray) -> tuple[float, float, float] | None:
        """Self-normalised IPS estimate of ``policy``'s greedy choices at ``p`` on ``rows``:
        (reward a − p·c, accuracy, USD per 10k queries), or None when it never agrees with
        the log there."""
        lines = [self.data.shared[i] for i in rows]
        greedy = np.array([d.arm for d in policy.decide_lines(lines, p=self.p, greedy=True)])
        w = (greedy == self.arm[rows]) / self.drawn[rows]
        if w.sum() <= 0:
            return None

        def mean(x: np.ndarray) -> float:
            return float((w * x[rows]).sum() / w.sum())

        return mean(self.reward), mean(self.got), mean(self.paid) * PER_10K


def _settings(cfg: object) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in
            ("mode", "learning_rate", "warm_start_passes", "word_features", "p", "epsilon")}  # fmt: skip
