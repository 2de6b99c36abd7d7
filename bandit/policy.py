"""The routing policy: a Vowpal Wabbit contextual bandit with one linear model per arm.

Two reward modes (compared in ``metallm evaluate``):

- ``paper``: VW learns the cost −(a − p·c) with p fixed at training, as in MetaLLM, and
  explores with its own ``--cb_explore_adf`` explorer (ε-greedy by default).
- ``decoupled``: VW (``--cb_adf``) learns each arm's correctness alone — a logistic model of
  P(a_j = 1 | x) by default — and the decision takes argmax_j P̂(a_j = 1 | x) − p·c_j at
  decision time, so p can change per request without retraining. The price shift has to
  come before exploring, so ε-greedy is applied here (bandit.exploration), with VW's formula.

Either way the policy learns from (features, arm, cost, probability), importance-weighted
by the logged probability (cb_type ``mtr`` by default). Both modes score arms with
``bandit.reward.reward``; the VW calls themselves live in ``bandit.vw``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bandit import exploration
from bandit.errors import ConfigError, PolicyError
from bandit.features import FeatureBuilder
from bandit.reward import check_p, reward
from bandit.snapshot import Snapshot
from bandit.vw import VWModel

MODES = ("paper", "decoupled")
LOSSES = ("logistic", "squared")
CB_TYPES = ("mtr", "ips", "dr", "dm")
# Explorers Vowpal Wabbit's --cb_explore_adf offers (paper mode), and the ones applied after
# the price shift in decoupled mode.
VW_EXPLORERS = ("epsilon", "softmax", "bag", "cover", "squarecb")
DECOUPLED_EXPLORERS = ("epsilon", "softmax")
COST_MODES = ("fixed", "dynamic")
DEFAULT_EPSILON = 0.05  # VW's own default
DEFAULT_LEARNING_RATE = 0.5  # VW's own default


@dataclass(frozen=True)
class PolicyConfig:
    """Settings of the routing policy; each is checked in ``__post_init__``.

    ``explorer_param``: softmax λ (inverse temperature), bag size, cover size or squarecb γ
    scale, depending on ``explorer``; None takes the explorer's default.
    ``warm_start_passes``: passes over the training rows in full-information warm start.
    ``online_learning_rate``: the learning rate of a policy that starts cold and learns from
    bandit feedback alone (one pass, importance-weighted); None means ``learning_rate``,
    which is tuned for the multi-pass full-information warm start.
    ``cost_mode``: ``fixed`` uses each arm's fixed normalised cost (the paper's default),
    ``dynamic`` the query's own recorded cost on the same scale.
    """

    mode: str = "decoupled"
    p: float = 0.0
    explorer: str = "epsilon"
    epsilon: float = DEFAULT_EPSILON
    explorer_param: float | None = None
    cb_type: str = "mtr"
    loss: str = "logistic"
    learning_rate: float = DEFAULT_LEARNING_RATE
    online_learning_rate: float | None = None
    power_t: float = 0.5
    l2: float = 0.0
    word_features: bool = True
    warm_start_passes: int = 1
    cost_mode: str = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        def choice(name: str, allowed: Sequence[str]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"policy.{name} = {value!r} is not one of: {', '.join(allowed)}")

        choice("mode", MODES)
        choice("cb_type", CB_TYPES)
        choice("loss", LOSSES)
        choice("cost_mode", COST_MODES)
        choice("explorer", VW_EXPLORERS if self.mode == "paper" else DECOUPLED_EXPLORERS)
        check_p(self.p)
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"policy.epsilon = {self.epsilon} must be in [0, 1]")
        if self.mode == "paper" and self.loss == "logistic":
            raise ConfigError(
                "policy.loss = 'logistic' needs mode = 'decoupled': in paper mode VW regresses "
                "the cost −(a − p·c), which is not a ±1 label; use loss = 'squared'"
            )
        for name, low in (("learning_rate", 0.0), ("power_t", -1.0), ("l2", -1e-300)):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= low:
                raise ConfigError(f"policy.{name} = {value} must be a finite number > {low:g}")
        if self.online_learning_rate is not None and not (
            math.isfinite(self.online_learning_rate) and self.online_learning_rate > 0
        ):
            raise ConfigError(
                f"policy.online_learning_rate = {self.online_learning_rate} must be a finite number > 0"
            )
        if self.warm_start_passes < 1:
            raise ConfigError(f"policy.warm_start_passes = {self.warm_start_passes} must be ≥ 1")
        if self.explorer_param is not None and self.explorer_param <= 0:
            raise ConfigError(f"policy.explorer_param = {self.explorer_param} must be > 0")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PolicyConfig:
        allowed = {f.name for f in fields(cls)}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(
                f"[policy]: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> PolicyConfig:
        return PolicyConfig(**{**asdict(self), **changes})

    def for_online(self) -> PolicyConfig:
        """This config with the learning rate a cold-started bandit learner uses."""
        return self.replace(learning_rate=self.online_learning_rate or self.learning_rate)

    def vw_args(self) -> str:
        """The Vowpal Wabbit command line this config stands for."""
        args = [
            "--cb_explore_adf" if self.mode == "paper" else "--cb_adf",
            f"--cb_type {self.cb_type}",
        ]
        args += ["-q xa", "--ignore_linear x"]
        if self.word_features:
            args += ["-q wa", "--ignore_linear w"]
        args += [f"-l {float(self.learning_rate)!r}", f"--power_t {float(self.power_t)!r}"]
        if self.l2 > 0:
            args.append(f"--l2 {float(self.l2)!r}")
        if self.loss == "logistic":
            args.append("--loss_function logistic")
        if self.mode == "paper":
            args += self._explorer_args()
        args += [f"--random_seed {self.seed}", "--quiet"]
        return " ".join(args)

    def _explorer_args(self) -> list[str]:
        param = self.explorer_param
        if self.explorer == "epsilon":
            return [f"--epsilon {float(self.epsilon)!r}"]
        if self.explorer == "softmax":
            return ["--softmax", f"--lambda {float(param or 10.0)!r}"]
        if self.explorer == "bag":
            return [f"--bag {int(param or 5)}", f"--epsilon {float(self.epsilon)!r}"]
        if self.explorer == "cover":
            return [f"--cover {int(param or 3)}", f"--epsilon {float(self.epsilon)!r}"]
        return ["--squarecb", f"--gamma_scale {float(param or 10.0)!r}"]


@dataclass(frozen=True)
class Decision:
    """One routing decision.

    ``pmf``: shape (n_arms,), the probability of each arm; ``prob`` = pmf[arm].
    ``scores``: shape (n_arms,), higher is better: in decoupled mode P̂(correct) − p·c, in
    paper mode the pmf (VW's explorer does not expose its scores); fallbacks go down this order.
    """

    arm: int
    prob: float
    pmf: np.ndarray
    scores: np.ndarray
    greedy: int
    model_version: int

    @property
    def explored(self) -> bool:
        return self.arm != self.greedy

    def fallback_order(self) -> list[int]:
        """Arms from best to worst score, the chosen arm first."""
        rest = [int(j) for j in np.argsort(-self.scores, kind="stable") if j != self.arm]
        return [self.arm, *rest]


class Policy:
    """A VW workspace plus what it needs to decide: arm names, costs and the feature builder.

    costs: shape (n_arms,), each arm's fixed normalised cost (the dearest is 1).
    ``model``: the VW model bytes to start from (``Snapshot.model``), or None for a fresh
    model; ``updates``: how many updates those weights have learned (the version).

    Arms are sampled from a stream seeded with ``config.seed``, so offline runs repeat;
    ``reseed`` gives a live policy (a router replica, a hot-reloaded snapshot) its own.
    """

    def __init__(
        self,
        config: PolicyConfig,
        arm_names: Sequence[str],
        costs: np.ndarray,
        dim: int,
        *,
        updates: int = 0,
        model: bytes | None = None,
    ) -> None:
        self.config = config
        self.arm_names = tuple(arm_names)
        self.costs = np.asarray(costs, dtype=np.float64)
        if self.costs.shape != (len(self.arm_names),):
            raise ConfigError(
                f"costs has shape {self.costs.shape}, expected ({len(self.arm_names)},)"
            )
        self.dim = dim
        self.features = FeatureBuilder(self.arm_names, dim, word_features=config.word_features)
        self.updates = updates
        self._sampling_seed = config.seed
        self._rng = np.random.default_rng(config.seed)
        self._vw = VWModel(config.vw_args(), model)

    @property
    def n_arms(self) -> int:
        return len(self.arm_names)

    @property
    def version(self) -> int:
        """The model's version: the number of updates it has learned (monotonic)."""
        return self.updates

    @property
    def sampling_seed(self) -> int:
        """The seed of the stream arms are sampled from (``config.seed`` until ``reseed``)."""
        return self._sampling_seed

    def reseed(self, seed: int) -> None:
        """Sample arms from a fresh stream seeded with ``seed`` (an int ≥ 0).

        Every policy built from one config or snapshot starts from the same stream, so
        router replicas and successive hot-reloaded snapshots would explore in lockstep;
        a live router reseeds each policy it adopts (and logs the seed, to replay it)."""
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise PolicyError(f"sampling seed {seed!r} must be an integer ≥ 0")
        self._sampling_seed = int(seed)
        self._rng = np.random.default_rng(self._sampling_seed)

    # -- scoring -------------------------------------------------------------------------
    def raw_predict(self, shared: str) -> np.ndarray:
        """VW's prediction for one shared line: costs (decoupled) or the pmf (paper)."""
        return np.asarray(self._vw.predict(self.features.predict_example(shared)), dtype=np.float64)

    def correctness(self, shared_lines: Sequence[str]) -> np.ndarray:
        """Decoupled mode: P̂(a_j = 1 | x) for each query and arm, shape (n, n_arms)."""
        if self.config.mode != "decoupled":
            raise PolicyError(
                "correctness() needs mode = 'decoupled'; paper mode learns −(a − p·c)"
            )
        raw = np.array([self.raw_predict(s) for s in shared_lines]).reshape(
            len(shared_lines), self.n_arms
        )
        if self.config.loss == "logistic":
            return 1.0 / (1.0 + np.exp(np.clip(raw, -50, 50)))
        return -raw

    def _decide_one(
        self,
        scores: np.ndarray,
        greedy_only: bool,
        available: np.ndarray | None,
        floor: np.ndarray | None = None,
    ) -> Decision:
        """Explore and sample for one query; ``scores``: shape (n_arms,), a row of
        ``decide_lines``' scores; ``available``: the arms that may be drawn (None: all);
        ``floor``: each arm's least probability (exploration.with_floor)."""
        cfg = self.config
        greedy = int(
            np.argmax(scores if available is None else np.where(available, scores, -np.inf))
        )
        if greedy_only:
            pmf = np.eye(self.n_arms)[greedy]
        elif cfg.mode == "paper":
            # VW's explorer already turned its scores into the pmf
            pmf = scores if available is None else exploration.restrict(scores, available)
        elif cfg.explorer == "softmax":
            pmf = exploration.softmax(scores, cfg.explorer_param or 10.0, available)
        else:
            pmf = exploration.epsilon_greedy(scores, cfg.epsilon, available)
        if floor is not None and not greedy_only and floor.any():
            pmf = exploration.with_floor(pmf, floor, available)
        arm = exploration.sample(pmf, self._rng)
        return Decision(arm, float(pmf[arm]), pmf, scores, greedy, self.version)

    def decide(
        self,
        vectors: np.ndarray,
        texts: Sequence[str] | None = None,
        *,
        p: float | None = None,
        greedy: bool = False,
    ) -> list[Decision]:
        """Decide a batch: vectors shape (n, dim). ``p`` overrides the config's in decoupled
        mode (paper mode's p is fixed at training). ``greedy`` switches exploration off."""
        return self.decide_lines(self.features.shared_batch(vectors, texts), p=p, greedy=greedy)

    def decide_lines(
        self,
        shared_lines: Sequence[str],
        *,
        p: float | None = None,
        greedy: bool = False,
        available: np.ndarray | None = None,
        floor: np.ndarray | None = None,
    ) -> list[Decision]:
        """Decide a batch of context lines. ``available``: shape (n_arms,) of bool, the arms
        that may be drawn (None: all): the others get probability 0 and the pmf is
        renormalised over these, so the logged probability is the one the arm was drawn
        with (the router leaves out arms whose circuit breaker is open). ``floor``: shape
        (n_arms,), each arm's least probability when exploring (a new or drifted arm's
        guaranteed share, exploration.with_floor); ignored when ``greedy``."""
        if p is not None and self.config.mode == "paper" and p != self.config.p:
            raise PolicyError(
                f"paper mode learned with p = {self.config.p}; it cannot decide at p = {p} "
                "without retraining (use mode = 'decoupled' for per-request p)"
            )
        p_now = check_p(self.config.p if p is None else p)
        if self.config.mode == "decoupled":
            # one reward call per batch: scores shape (n, n_arms), P̂(correct) − p·c
            scores = reward(self.correctness(shared_lines), self.costs, p_now)
        else:
            scores = np.array([self.raw_predict(s) for s in shared_lines]).reshape(
                len(shared_lines), self.n_arms
            )
        return [self._decide_one(row, greedy, available, floor) for row in scores]

    # -- learning ------------------------------------------------------------------------
    def vw_cost(self, correct: float, cost: float) -> float:
        """The cost VW is told for a reward a − p·c (paper) or a correctness a (decoupled)."""
        if self.config.mode == "paper":
            return -reward(float(correct), float(cost), self.config.p)
        return -correct

    def learn_line(
        self, shared: str, arm: int, prob: float, correct: float, cost: float = 0.0
    ) -> None:
        """Learn one outcome: arm ``arm`` was chosen with probability ``prob`` and was
        correct ``correct`` ∈ [0, 1] (1/0 for label tasks, a score for explicit rewards)
        at normalised cost ``cost``."""
        if not 0 <= arm < self.n_arms:
            raise PolicyError(f"arm index {arm} is out of range 0..{self.n_arms - 1}")
        if not 0 < prob <= 1:
            raise PolicyError(f"probability {prob} must be in (0, 1]")
        if not 0 <= correct <= 1:
            raise PolicyError(f"correctness {correct} must be in [0, 1]")
        fb = self.features
        if self.config.mode == "decoupled" and self.config.loss == "logistic":
            # Cross-entropy with a soft target a is a weighted pair of ±1 examples; VW takes
            # the weight as 1/prob, so the probability is divided by the weight.
            if correct > 0:
                self._vw.learn(fb.learn_example(shared, arm, -1.0, prob / correct))
            if correct < 1:
                self._vw.learn(fb.learn_example(shared, arm, 1.0, prob / (1.0 - correct)))
        else:
            self._vw.learn(fb.learn_example(shared, arm, self.vw_cost(correct, cost), prob))
        self.updates += 1

    def learn(
        self,
        vector: np.ndarray,
        text: str,
        arm: int,
        prob: float,
        correct: float,
        cost: float = 0.0,
    ) -> None:
        self.learn_line(self.features.shared(vector, text), arm, prob, correct, cost)

    # -- snapshots -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole policy (config, arms, costs, version, VW weights) as bytes."""
        header = {
            "config": asdict(self.config),
            "arm_names": list(self.arm_names),
            "costs": self.costs.tolist(),
            "dim": self.dim,
            "updates": self.updates,
        }
        return Snapshot(header, self._vw.to_bytes()).to_bytes()

    def with_config(self, config: PolicyConfig) -> Policy:
        """The same weights under another config (e.g. the online learning rate); the
        arms, the features and the mode must stay the same."""
        if (config.mode, config.word_features, config.loss) != (
            self.config.mode, self.config.word_features, self.config.loss
        ):  # fmt: skip
            raise PolicyError(
                "with_config cannot change mode, loss or word_features of a trained policy"
            )
        return Policy(config, self.arm_names, self.costs, self.dim, updates=self.updates,
                      model=self._vw.to_bytes())  # fmt: skip

    def with_arms(self, arm_names: Sequence[str], costs: np.ndarray) -> Policy:
        """The same weights deciding over another arm list (an arm migration). Each arm's
        model is keyed by its name (bandit.features), so an arm kept keeps its predictions
        exactly, a new arm starts with empty weights, and a removed arm leaves the decision
        (its weights stay in the model, unused). ``costs``: the new arms' normalised costs."""
        return Policy(self.config, arm_names, costs, self.dim, updates=self.updates,
                      model=self._vw.to_bytes())  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes) -> Policy:
        """The policy ``to_bytes`` wrote, sampling from ``config.seed`` (see ``reseed``)."""
        snap = Snapshot.parse(data)
        header = snap.header
        missing = {"config", "arm_names", "costs", "dim", "updates"} - set(header)
        if missing:
            raise PolicyError(f"policy snapshot header lacks {sorted(missing)}")
        return cls(
            PolicyConfig.from_mapping(header["config"]),
            header["arm_names"],
            np.array(header["costs"]),
            header["dim"],
            updates=header["updates"],
            model=snap.model,
        )
