"""Invariants the rest of metallm relies on, checked over many seeds.

- The logged probability is the probability of the arm actually drawn, explored draws
  included (off-policy learning and evaluation divide by it).
- Arms are drawn with the frequencies the pmf states, and the pmf is a distribution.
- One reward function: the policy and budget calibration score arms with
  ``bandit.reward.reward``.
"""

import math

import numpy as np
import pytest

from bandit.calibration import choose
from bandit.policy import Policy, PolicyConfig
from bandit.reward import reward
from bandit.training import TrainingData, train_bandit

DIM = 8
ARMS = ("dear", "cheap", "bad")
COSTS = np.array([1.0, 0.1, 0.05])
EXPLORING = {
    "decoupled-epsilon": PolicyConfig(mode="decoupled", epsilon=0.3, p=0.2),
    "paper-epsilon": PolicyConfig(mode="paper", loss="squared", epsilon=0.3, p=0.2),
    "decoupled-softmax": PolicyConfig(mode="decoupled", explorer="softmax", explorer_param=3.0),
}


def trained(cfg: PolicyConfig) -> Policy:
    """A policy that has learned a little, so its pmfs differ from context to context."""
    policy = Policy(cfg.replace(word_features=False), ARMS, COSTS, DIM)
    x = np.random.default_rng(0).normal(size=(300, DIM))
    correct = np.stack([np.ones(300), (x[:, 0] > 0).astype(float), np.zeros(300)], axis=1)
    costs = np.tile(COSTS, (300, 1))
    train_bandit(policy, TrainingData(policy.features.shared_batch(x), correct, costs, costs))
    return policy


@pytest.fixture(scope="module", params=sorted(EXPLORING))
def policy(request: pytest.FixtureRequest) -> Policy:
    return trained(EXPLORING[request.param])


def test_logged_prob_is_the_pmf_of_the_drawn_arm(policy: Policy) -> None:
    lines = policy.features.shared_batch(np.random.default_rng(1).normal(size=(40, DIM)))
    explored = 0
    for seed in range(50):
        policy.reseed(seed)
        for d in policy.decide_lines(lines):
            assert 0 <= d.arm < len(ARMS)
            assert d.prob == d.pmf[d.arm]
            assert d.pmf.sum() == pytest.approx(1.0, abs=1e-6)
            assert np.all(d.pmf >= 0)
            explored += d.explored
    assert explored > 100  # explored draws are among those checked


def test_arms_are_drawn_with_the_pmf_frequencies(policy: Policy) -> None:
    """Pearson's χ² of the draws for one context against its pmf (3 arms: 2 degrees of
    freedom, where the tail probability is exp(−χ²/2))."""
    policy.reseed(2024)
    line = policy.features.shared(np.random.default_rng(5).normal(size=DIM))
    n = 20_000
    decisions = policy.decide_lines([line] * n)
    pmf = decisions[0].pmf
    assert all(np.array_equal(d.pmf, pmf) for d in decisions)
    assert pmf.max() < 0.99  # the test needs exploration to mean anything
    observed = np.bincount([d.arm for d in decisions], minlength=len(ARMS))
    expected = n * pmf
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert math.exp(-chi2 / 2) > 1e-4, (observed, expected)


def test_calibration_chooses_the_arm_of_highest_reward() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        n, k = rng.integers(1, 40), rng.integers(2, 7)
        scores = rng.random((n, k))
        costs = rng.random(k) if rng.random() < 0.5 else rng.random((n, k))
        p = float(rng.choice([0.0, rng.random(), rng.random() * 100]))
        np.testing.assert_array_equal(
            choose(scores, costs, p), np.argmax(reward(scores, costs, p), axis=1)
        )


@pytest.mark.parametrize("p", [0.0, 0.2, 3.0])
def test_decoupled_scores_are_the_reward_of_predicted_correctness(p: float) -> None:
    policy = trained(EXPLORING["decoupled-epsilon"])
    lines = policy.features.shared_batch(np.random.default_rng(3).normal(size=(30, DIM)))
    want = reward(policy.correctness(lines), COSTS, p)
    got = np.array([d.scores for d in policy.decide_lines(lines, p=p)])
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(want, want[0])  # the contexts do differ


def test_paper_mode_learns_the_negated_reward() -> None:
    policy = Policy(EXPLORING["paper-epsilon"], ARMS, COSTS, DIM)
    for correct, cost in [(1.0, 1.0), (0.0, 0.05), (1.0, 0.1)]:
        assert policy.vw_cost(correct, cost) == -reward(correct, cost, 0.2)
