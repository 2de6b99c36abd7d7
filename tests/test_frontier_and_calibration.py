import numpy as np
import pytest

from bandit.calibration import SweepPoint, calibrate, choose, sweep
from bandit.errors import ConfigError
from bandit.frontier import aiq, upper_hull


def test_aiq_of_one_point_is_flat_from_it_to_cost_one() -> None:
    assert aiq([(25.0, 0.8)], dearest_cost=100.0) == pytest.approx(0.8 * 0.75)


def test_aiq_takes_the_upper_hull_and_ignores_dominated_points() -> None:
    pts = [(0.0, 0.5), (0.5, 0.9), (1.0, 0.9), (0.4, 0.6)]
    # hull: (0, .5) → (.5, .9) → (1, .9): area .35 + .45
    assert aiq(pts, 1.0) == pytest.approx(0.35 + 0.45)
    # a costlier but worse point does not pull the curve down
    assert aiq([*pts, (0.9, 0.7)], 1.0) == pytest.approx(0.8)
    # cost is clipped to [0, 1]
    assert aiq([(0.0, 0.5), (3.0, 1.0)], 1.0) == pytest.approx(0.75)
    assert [y for _, y in upper_hull([(0, 0.9), (1, 0.5)])] == [0.9, 0.9]


def test_decoupled_choice_cost_never_rises_as_p_rises() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((500, 6))
    costs = np.array([1.0, 0.6, 0.3, 0.1, 0.05, 0.01])
    previous = np.full(500, np.inf)
    for p in np.concatenate([[0], np.geomspace(1e-3, 1e3, 60)]):
        chosen = costs[choose(scores, costs, p)]
        assert np.all(chosen <= previous + 1e-12)
        previous = chosen


def test_calibration_stays_within_the_budget() -> None:
    rng = np.random.default_rng(1)
    correct = (rng.random((400, 3)) < [0.95, 0.85, 0.6]).astype(float)
    cost_usd = np.tile([0.01, 0.001, 0.0001], (400, 1))
    scores = correct * 0.6 + rng.random((400, 3)) * 0.4
    pts = sweep(scores, np.array([1.0, 0.1, 0.01]), correct, cost_usd)
    for budget in (1.0, 5.0, 20.0, 100.0):
        assert calibrate(pts, budget).cost_per_10k <= budget + 1e-9
        assert calibrate(pts, budget, n_val=400).cost_per_10k <= calibrate(pts, budget).cost_per_10k
    # no point fits: the cheapest one
    assert calibrate(pts, 0.0).cost_per_10k == min(p.cost_per_10k for p in pts)
    with pytest.raises(ConfigError, match="budget"):
        calibrate([SweepPoint(0.0, 1.0, 1.0)], -1.0)
