"""The Vowpal Wabbit policy on seeded synthetic contexts where the right arm is known."""

import numpy as np
import pytest

from bandit.errors import ConfigError, PolicyError
from bandit.policy import Policy, PolicyConfig
from bandit.snapshot import Snapshot
from bandit.training import TrainingData, train_bandit, train_full_information

DIM = 8
ARMS = ("dear", "cheap", "bad")
COSTS = np.array([1.0, 0.1, 0.05])


def world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """'dear' is always right; 'cheap' is right when x0 > 0; 'bad' never."""
    x = np.random.default_rng(seed).normal(size=(n, DIM))
    correct = np.stack([np.ones(n), (x[:, 0] > 0).astype(float), np.zeros(n)], axis=1)
    return x, correct


def data(policy: Policy, x: np.ndarray, correct: np.ndarray) -> TrainingData:
    shared = policy.features.shared_batch(x)
    return TrainingData(shared, correct, np.tile(COSTS, (len(x), 1)), np.tile(COSTS, (len(x), 1)))


@pytest.mark.parametrize("mode", ["decoupled", "paper"])
def test_full_information_training_learns_the_cost_aware_choice(mode: str) -> None:
    cfg = PolicyConfig(
        mode=mode,
        loss="logistic" if mode == "decoupled" else "squared",
        p=0.3,
        word_features=False,
        warm_start_passes=3,
    )
    pol = train_full_information(
        Policy(cfg, ARMS, COSTS, DIM), data(Policy(cfg, ARMS, COSTS, DIM), *world(1500, 0))
    )
    x, _ = world(400, 1)
    arms = np.array([d.arm for d in pol.decide(x, greedy=True)])
    # at p = 0.3 the cheap arm is worth it exactly where it is right (1 − .03 > 1 − .3)
    expected = np.where(x[:, 0] > 0, 1, 0)
    assert (arms == expected).mean() > 0.85  # a guess scores 0.5
    assert pol.version == 1500 * 3 * 3


def test_decoupled_p_is_applied_at_decision_time() -> None:
    cfg = PolicyConfig(word_features=False, warm_start_passes=2)
    pol = Policy(cfg, ARMS, COSTS, DIM)
    train_full_information(pol, data(pol, *world(1000, 0)))
    x, _ = world(200, 2)
    at_zero = np.array([d.arm for d in pol.decide(x, p=0.0, greedy=True)])
    at_high = np.array([d.arm for d in pol.decide(x, p=50.0, greedy=True)])
    assert (at_zero == 0).mean() > 0.9  # accuracy only: the always-right arm
    assert (at_high == 2).mean() > 0.9  # cost only: the cheapest arm
    with pytest.raises(PolicyError, match="paper mode learned with p"):
        Policy(PolicyConfig(mode="paper", loss="squared", p=0.1), ARMS, COSTS, DIM).decide(
            x[:1], p=0.5
        )


@pytest.mark.parametrize("mode", ["decoupled", "paper"])
def test_snapshot_round_trip_gives_identical_pmfs(mode: str) -> None:
    cfg = PolicyConfig(mode=mode, loss="logistic" if mode == "decoupled" else "squared", p=0.2)
    pol = Policy(cfg, ARMS, COSTS, DIM)
    train_bandit(pol, data(pol, *world(300, 0)))
    copy = Policy.from_bytes(pol.to_bytes())
    x, _ = world(50, 3)
    texts = [f"query {i}" for i in range(50)]
    for a, b in zip(pol.decide(x, texts), copy.decide(x, texts), strict=True):
        np.testing.assert_array_equal(a.pmf, b.pmf)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert copy.version == pol.version == 300
    assert copy.arm_names == ARMS
    with pytest.raises(PolicyError, match="magic"):
        Policy.from_bytes(b"not a model")


def test_epsilon_greedy_pmf_and_logged_probability() -> None:
    pol = Policy(PolicyConfig(epsilon=0.3), ARMS, COSTS, DIM)
    (d,) = pol.decide(np.zeros((1, DIM)))
    np.testing.assert_allclose(sorted(d.pmf), [0.1, 0.1, 0.8])
    assert d.prob == d.pmf[d.arm]
    assert d.fallback_order()[0] == d.arm and sorted(d.fallback_order()) == [0, 1, 2]


def test_online_bandit_replay_finds_the_right_arm() -> None:
    cfg = PolicyConfig(epsilon=0.1, word_features=False)
    pol = Policy(cfg, ARMS, COSTS, DIM)
    res = train_bandit(pol, data(pol, *world(3000, 0)))
    assert res.rounds == 3000 and 0.05 < res.explored_share < 0.15
    x, correct = world(300, 4)
    arms = np.array([d.arm for d in pol.decide(x, greedy=True)])
    assert correct[np.arange(300), arms].mean() > 0.95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arm": 5, "prob": 0.5, "correct": 1.0}, "out of range"),
        ({"arm": 0, "prob": 0.0, "correct": 1.0}, r"probability 0.0 must be in \(0, 1\]"),
        ({"arm": 0, "prob": 0.5, "correct": 2.0}, "correctness"),
    ],
)
def test_bad_learning_inputs(kwargs: dict, match: str) -> None:
    pol = Policy(PolicyConfig(), ARMS, COSTS, DIM)
    with pytest.raises(PolicyError, match=match):
        pol.learn(np.zeros(DIM), "", **kwargs)


def test_bad_policy_settings() -> None:
    with pytest.raises(ConfigError, match="explorer = 'cover' is not one of: epsilon, softmax"):
        PolicyConfig(explorer="cover")
    with pytest.raises(ConfigError, match="costs has shape"):
        Policy(PolicyConfig(), ARMS, np.array([1.0]), DIM)
    with pytest.raises(ValueError, match="expected"):
        Policy(PolicyConfig(), ARMS, COSTS, DIM).decide(np.zeros((1, DIM + 1)))


@pytest.mark.parametrize("explorer", ["softmax", "bag", "cover", "squarecb"])
def test_other_vowpal_wabbit_explorers_give_a_pmf(explorer: str) -> None:
    pol = Policy(PolicyConfig(mode="paper", loss="squared", explorer=explorer), ARMS, COSTS, DIM)
    train_bandit(pol, data(pol, *world(200, 0)))
    (d,) = pol.decide(np.ones((1, DIM)))
    assert d.pmf.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_policy_builds_from_model_bytes() -> None:
    cfg = PolicyConfig(p=0.2, word_features=False)
    pol = Policy(cfg, ARMS, COSTS, DIM)
    train_bandit(pol, data(pol, *world(300, 0)))
    model = Snapshot.parse(pol.to_bytes()).model
    copy = Policy(cfg, ARMS, COSTS, DIM, updates=pol.updates, model=model)
    x, _ = world(20, 5)
    np.testing.assert_array_equal(
        [d.scores for d in copy.decide(x)], [d.scores for d in pol.decide(x)]
    )
    assert copy.version == 300
    # with_config keeps the weights under another learning rate
    faster = pol.with_config(cfg.replace(learning_rate=1.0))
    np.testing.assert_array_equal(faster.correctness(copy.features.shared_batch(x)),
                                  pol.correctness(pol.features.shared_batch(x)))  # fmt: skip


def draws(policy: Policy, n: int = 200) -> list[int]:
    """Arms drawn for ``n`` decisions on one context."""
    line = policy.features.shared(np.zeros(DIM))
    return [d.arm for d in policy.decide_lines([line] * n)]


def test_reseed_sets_the_sampling_stream() -> None:
    cfg = PolicyConfig(epsilon=0.3, seed=4)
    a, b = Policy(cfg, ARMS, COSTS, DIM), Policy(cfg, ARMS, COSTS, DIM)
    # offline runs stay repeatable: by default the stream is seeded with config.seed
    assert a.sampling_seed == b.sampling_seed == 4
    assert draws(a) == draws(b)
    a.reseed(11)
    b.reseed(11)
    assert a.sampling_seed == 11
    assert draws(a) == draws(b)
    b.reseed(12)
    assert draws(a) != draws(b)
    assert b.sampling_seed == 12


def test_a_snapshot_loaded_twice_and_reseeded_differently_draws_differently() -> None:
    pol = Policy(PolicyConfig(epsilon=0.3, word_features=False), ARMS, COSTS, DIM)
    train_bandit(pol, data(pol, *world(200, 0)))
    blob = pol.to_bytes()
    first, second = Policy.from_bytes(blob), Policy.from_bytes(blob)
    assert draws(first) == draws(second)  # the lockstep that reseed is there to break
    first.reseed(1)
    second.reseed(2)
    assert draws(first) != draws(second)
    # the pmfs are the same: only the sampling differs
    line = [first.features.shared(np.zeros(DIM))]
    np.testing.assert_array_equal(first.decide_lines(line)[0].pmf, second.decide_lines(line)[0].pmf)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "7"])
def test_bad_sampling_seeds(seed: object) -> None:
    pol = Policy(PolicyConfig(), ARMS, COSTS, DIM)
    with pytest.raises(PolicyError, match=r"sampling seed .* must be an integer ≥ 0"):
        pol.reseed(seed)  # type: ignore[arg-type]
    assert pol.sampling_seed == 0


def test_with_arms_keeps_the_kept_arms_predictions_and_starts_a_new_arm_empty() -> None:
    cfg = PolicyConfig(word_features=False, warm_start_passes=2)
    pol = train_full_information(
        Policy(cfg, ARMS, COSTS, DIM), data(Policy(cfg, ARMS, COSTS, DIM), *world(600, 0))
    )
    x, _ = world(50, 2)
    before = pol.correctness(pol.features.shared_batch(x))
    # add "new", drop "bad", reorder: the kept arms' P̂ are the same to the bit
    moved = pol.with_arms(("new", "cheap", "dear"), np.array([0.5, 0.1, 1.0]))
    after = moved.correctness(moved.features.shared_batch(x))
    np.testing.assert_array_equal(after[:, 1], before[:, 1])
    np.testing.assert_array_equal(after[:, 2], before[:, 0])
    # a new arm has no weights of its own: only VW's shared constant, the same P̂ for
    # every query, while a trained arm's P̂ varies with the query
    np.testing.assert_allclose(after[:, 0], after[0, 0])
    assert np.ptp(after[:, 1]) > 0.1
    assert moved.version == pol.version


def test_exploration_floor_gives_an_arm_its_share_and_keeps_a_pmf() -> None:
    from bandit.exploration import with_floor

    pmf = np.array([0.9, 0.05, 0.05, 0.0])
    out = with_floor(pmf, np.array([0.0, 0.1, 0.0, 0.2]), pmf > 0)
    assert out[1] == pytest.approx(0.1)
    assert out[3] == 0.0  # an unavailable arm gets no floor
    assert out.sum() == pytest.approx(1.0)
    assert out[0] / out[2] == pytest.approx(0.9 / 0.05)  # the others keep their ratios
    # an arm above its floor is left alone
    np.testing.assert_allclose(with_floor(pmf, np.array([0.0, 0.01, 0.0, 0.0])), pmf)
    with pytest.raises(ConfigError):
        with_floor(pmf, np.array([0.6, 0.5, 0.0, 0.0]))
    pol = Policy(PolicyConfig(word_features=False, epsilon=0.0), ARMS, COSTS, DIM)
    (d,) = pol.decide_lines(
        pol.features.shared_batch(np.ones((1, DIM))), floor=np.array([0.0, 0.0, 0.25])
    )
    assert d.pmf[2] == pytest.approx(0.25) and d.pmf.sum() == pytest.approx(1.0)


def test_arm_difference_names_what_differs() -> None:
    from bandit.arms import arm_difference

    assert arm_difference(("a", "b"), ("a", "b")) is None
    msg = arm_difference(("a", "b"), ("a", "c"))
    assert msg is not None and "adds ['c']" in msg and "drops ['b']" in msg
    assert "order" in (arm_difference(("a", "b"), ("b", "a")) or "")
