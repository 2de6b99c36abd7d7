"""Offline evaluation on recorded outcomes: every arm alone, the oracle, a random router,
the router at several p and at budgets, AIQ, and an online replay — on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from bandit.calibration import PER_10K, SweepPoint, calibrate, outcome, sweep
from bandit.config import RoutingConfig
from bandit.datasets import Dataset, Split
from bandit.errors import ConfigError
from bandit.features import FeatureBuilder
from bandit.frontier import aiq
from bandit.policy import Policy, PolicyConfig
from bandit.training import TrainingData, train_bandit, train_full_information

TABLE_P = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
PAPER_P = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 50.0)
# (p, ε) of the online replays: ε-greedy at several ε, and one run that prices cost in.
ONLINE_SETTINGS: tuple[tuple[float, float], ...] = (
    (0.0, 0.05),
    (0.0, 0.1),
    (0.0, 0.2),
    (0.05, 0.1),
)


@dataclass(frozen=True)
class Point:
    acc: float
    cost_per_10k: float


@dataclass(frozen=True)
class RouterRow:
    mode: str
    p: float
    budget_of: str | None
    acc: float
    cost_per_10k: float


@dataclass(frozen=True)
class OnlineRow:
    p: float
    eps: float
    rounds: int
    progressive_acc: float
    progressive_cost_per_10k: float
    test_acc: float
    test_cost_per_10k: float
    mode: str = "decoupled"
    explorer: str = "epsilon"


@dataclass
class EvaluationReport:
    """Everything ``metallm evaluate`` prints; ``to_json`` gives the documented shape."""

    dataset: str
    split_sizes: dict[str, int]
    arms: dict[str, Point]
    oracle: Point
    random: Point
    router: list[RouterRow]
    aiq: dict[str, float]
    online: list[OnlineRow]
    sweeps: dict[str, list[SweepPoint]] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    # Paced online replays (bandit.pacing_replay.BudgetRow), when budgets were asked for.
    budget: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("sweeps", "budget")}
        out["sweeps"] = {k: [asdict(p) for p in v] for k, v in self.sweeps.items()}
        if self.budget:
            out["budget"] = [
                {**asdict(b), "acc_gap_pp": b.acc_gap_pp, "binding": b.binding} for b in self.budget
            ]
        return out


class Experiment:
    """A data set, its split and its embeddings, arranged in the catalogue's arm order."""

    def __init__(
        self, ds: Dataset, vectors: np.ndarray, split: Split, config: RoutingConfig
    ) -> None:
        if vectors.shape[0] != len(ds):
            raise ConfigError(f"{len(ds)} rows but {vectors.shape[0]} embeddings")
        names = config.arms.names
        if set(names) != set(ds.arms):
            raise ConfigError(
                f"the config's arms {sorted(names)} differ from the data set's {sorted(ds.arms)}"
            )
        cols = [ds.arms.index(n) for n in names]
        self.ds, self.split, self.config = ds, split, config
        self.arm_names = names
        self.correct = ds.correct[:, cols]
        self.cost_usd = ds.cost_usd[:, cols]
        self.observed = None if ds.observed is None else ds.observed[:, cols]
        self.logged_prob = None if ds.logged_prob is None else ds.logged_prob[:, cols]
        self.costs = config.arms.normalised_costs()
        self.reward_cost = (
            config.arms.normalise_usd(self.cost_usd)
            if config.policy.cost_mode == "dynamic"
            else np.tile(self.costs, (len(ds), 1))
        )
        builder = FeatureBuilder(names, vectors.shape[1], word_features=config.policy.word_features)
        self.shared = builder.shared_batch(vectors, list(ds.texts))
        self.dim = vectors.shape[1]
        self._vectors = vectors

    def with_word_features(self, on: bool) -> Experiment:
        """The same experiment with word features switched on or off."""
        policy = self.config.policy.replace(word_features=on)
        return Experiment(self.ds, self._vectors, self.split, replace(self.config, policy=policy))

    def data(self, idx: np.ndarray) -> TrainingData:
        return TrainingData(
            [self.shared[i] for i in idx],
            self.correct[idx],
            self.reward_cost[idx],
            self.cost_usd[idx],
            None if self.observed is None else self.observed[idx],
            None if self.logged_prob is None else self.logged_prob[idx],
        )

    def new_policy(self, config: PolicyConfig) -> Policy:
        return Policy(config, self.arm_names, self.costs, self.dim)

    def warm_policy(self, config: PolicyConfig, seed: int = 0) -> Policy:
        return self.warm_policy_on(config, self.split.train, seed)

    def warm_policy_on(self, config: PolicyConfig, rows: np.ndarray, seed: int = 0) -> Policy:
        """A policy trained with full information on ``rows``."""
        return train_full_information(self.new_policy(config), self.data(rows), seed)

    def correctness(self, policy: Policy, idx: np.ndarray) -> np.ndarray:
        return policy.correctness([self.shared[i] for i in idx])

    def greedy_choices(self, policy: Policy, idx: np.ndarray) -> np.ndarray:
        return np.array(
            [d.arm for d in policy.decide_lines([self.shared[i] for i in idx], greedy=True)]
        )

    def point(self, idx: np.ndarray, arms: np.ndarray) -> Point:
        return Point(*outcome(self.correct[idx], self.cost_usd[idx], arms))


def online_replay(ex: Experiment, config: PolicyConfig, rows: np.ndarray, seed: int) -> OnlineRow:
    """A cold policy sees ``rows`` once with bandit feedback, then runs greedy on test."""
    policy = ex.new_policy(config)
    res = train_bandit(policy, ex.data(rows), seed)
    pt = ex.point(ex.split.test, ex.greedy_choices(policy, ex.split.test))
    return OnlineRow(
        config.p, config.epsilon, res.rounds, res.progressive_acc, res.progressive_cost_per_10k,
        pt.acc, pt.cost_per_10k, config.mode, config.explorer,
    )  # fmt: skip


def evaluate(
    ds: Dataset,
    vectors: np.ndarray,
    split: Split,
    config: RoutingConfig,
    *,
    seed: int = 0,
    paper_p: Sequence[float] = PAPER_P,
    online: Sequence[tuple[float, float]] = ONLINE_SETTINGS,
    explorers: Sequence[str] = (),
    budgets: Sequence[float] = (),
    price_change_arm: str | None = None,
    budget_seeds: Sequence[int] | None = None,
    budget_passes: int = 1,
) -> EvaluationReport:
    """The paper-style comparison on ``split.test``; see the module docstring.

    ``budgets``: targets as shares of the dearest arm's cost per query, each run as a paced
    online replay (bandit.pacing_replay.budget_study) from the decoupled warm start, over
    ``budget_seeds`` (default: ``seed``) and ``budget_passes`` passes over val + test; with
    ``price_change_arm``, also with that arm's price doubled halfway."""
    ex = Experiment(ds, vectors, split, config)
    val, test = split.val, split.test
    test_correct, test_cost = ex.correct[test], ex.cost_usd[test]
    arms = {
        name: Point(float(test_correct[:, j].mean()), float(test_cost[:, j].mean() * PER_10K))
        for j, name in enumerate(ex.arm_names)
    }
    val_arm_cost = {
        n: float(ex.cost_usd[val, j].mean() * PER_10K) for j, n in enumerate(ex.arm_names)
    }
    # Oracle: the cheapest arm that was right (the cheapest arm when none was).
    masked = np.where(test_correct == 1, test_cost, np.inf)
    oracle_arms = np.where(np.isfinite(masked.min(1)), masked.argmin(1), test_cost.argmin(1))
    oracle = ex.point(test, oracle_arms)
    random = Point(float(test_correct.mean()), float(test_cost.mean() * PER_10K))
    dearest = max(a.cost_per_10k for a in arms.values())

    # Decoupled mode: one policy, p applied at decision time.
    dcfg = config.policy.replace(mode="decoupled")
    policy = ex.warm_policy(dcfg, seed)
    val_sweep = sweep(
        ex.correctness(policy, val), ex.reward_cost[val], ex.correct[val], ex.cost_usd[val]
    )
    test_scores = ex.correctness(policy, test)
    test_sweep = sweep(test_scores, ex.reward_cost[test], test_correct, test_cost)
    rows: list[RouterRow] = []
    for p in TABLE_P:
        pt = sweep(test_scores, ex.reward_cost[test], test_correct, test_cost, [p])[0]
        rows.append(RouterRow("decoupled", p, None, pt.acc, pt.cost_per_10k))
    by_p = {pt.p: pt for pt in test_sweep}
    for name, budget in val_arm_cost.items():
        chosen = calibrate(val_sweep, budget, len(val))
        pt = by_p[chosen.p]
        rows.append(RouterRow("decoupled", chosen.p, name, pt.acc, pt.cost_per_10k))

    # Paper mode: one policy per p, each trained on −(a − p·c).
    paper_val: list[SweepPoint] = []
    paper_test: dict[float, SweepPoint] = {}
    for p in paper_p:
        pcfg = config.policy.replace(mode="paper", loss="squared", p=float(p), explorer="epsilon")
        pol = ex.warm_policy(pcfg, seed)
        paper_val.append(
            SweepPoint(p, *outcome(ex.correct[val], ex.cost_usd[val], ex.greedy_choices(pol, val)))
        )
        paper_pt = ex.point(test, ex.greedy_choices(pol, test))
        paper_test[p] = SweepPoint(p, paper_pt.acc, paper_pt.cost_per_10k)
        rows.append(RouterRow("paper", float(p), None, paper_pt.acc, paper_pt.cost_per_10k))
    for name, budget in val_arm_cost.items():
        chosen = calibrate(paper_val, budget, len(val))
        pt2 = paper_test[chosen.p]
        rows.append(RouterRow("paper", chosen.p, name, pt2.acc, pt2.cost_per_10k))

    scores = {
        "router": aiq([(pt.cost_per_10k, pt.acc) for pt in test_sweep], dearest),
        "zero_router": aiq([(a.cost_per_10k, a.acc) for a in arms.values()], dearest),
        "oracle": aiq([(oracle.cost_per_10k, oracle.acc)], dearest),
        "router_paper": aiq([(pt.cost_per_10k, pt.acc) for pt in paper_test.values()], dearest),
    }

    replay_rows = np.concatenate([split.train, val])
    replays = [dcfg.replace(p=float(p), epsilon=float(eps)) for p, eps in online]
    # VW's own explorers need paper mode (they explore over VW's scores); at p = 0 the
    # paper-mode cost is −a, so they learn the same target as the decoupled replays.
    replays += [
        config.policy.replace(mode="paper", loss="squared", p=0.0, explorer=name)
        for name in explorers
    ]
    online_rows = [online_replay(ex, cfg.for_online(), replay_rows, seed) for cfg in replays]
    budget_rows: list[Any] = []
    if budgets:
        # imported here: pacing_replay builds on this module's Experiment
        from bandit.pacing_replay import budget_study

        budget_rows = budget_study(
            ex, budgets, seeds=budget_seeds or (seed,), price_change_arm=price_change_arm,
            warm=policy.to_bytes(), passes=budget_passes,
        )  # fmt: skip
    return EvaluationReport(
        dataset=ds.name,
        split_sizes=split.sizes(),
        arms=arms,
        oracle=oracle,
        random=random,
        router=rows,
        aiq=scores,
        online=online_rows,
        sweeps={"decoupled": test_sweep, "paper": list(paper_test.values())},
        policy=asdict(dcfg),
        budget=budget_rows,
    )
