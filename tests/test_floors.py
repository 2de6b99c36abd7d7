"""Exploration floors (bandit/floors.py): pure state, and what the pmf does with it."""

from __future__ import annotations

import numpy as np
import pytest

from bandit.errors import ConfigError
from bandit.exploration import epsilon_greedy, with_floor
from bandit.floors import MAX_TOTAL_FLOOR, ArmFloors, FloorConfig

ARMS = ("a", "b", "new")


def test_a_new_arm_gets_its_share_until_n_labels() -> None:
    floors = ArmFloors(FloorConfig(share=0.05, labels=3), ARMS)
    floors.added("new")
    assert floors.floors().tolist() == [0.0, 0.0, 0.05]
    pmf = with_floor(epsilon_greedy(np.array([1.0, 0.5, 0.0]), 0.0), floors.floors())
    assert pmf[2] == pytest.approx(0.05) and pmf.sum() == pytest.approx(1.0)
    assert floors.labelled("a") is False  # another arm's label does not count
    assert [floors.labelled("new") for _ in range(3)] == [False, False, True]
    assert not floors.floors().any()


def test_the_floor_ends_at_the_spend_cap() -> None:
    floors = ArmFloors(FloorConfig(share=0.1, labels=100, max_spend_usd=0.05), ARMS)
    floors.added("new")
    assert floors.labelled("new", 0.03) is False
    assert floors.labelled("new", 0.03) is True  # 0.06 USD ≥ 0.05
    assert not floors.floors().any()


def test_boost_raises_never_lowers_and_survives_a_round_trip() -> None:
    config = FloorConfig(share=0.05, labels=10)
    floors = ArmFloors(config, ARMS)
    floors.added("new")
    floors.boost("new", 0.02, 5)  # lower: the floor stays
    floors.boost("b", 0.2, 4)
    assert floors.floors().tolist() == [0.0, 0.2, 0.05]
    back = ArmFloors.from_dict(config, floors.to_dict())
    assert back.floors().tolist() == floors.floors().tolist()
    assert back.active["new"].labels_left == 10
    back.set_arms(("a", "new"))  # b retired: its floor goes with it
    assert back.floors().tolist() == [0.0, 0.05]


def test_floors_together_never_take_more_than_half() -> None:
    floors = ArmFloors(FloorConfig(share=0.5, labels=1), ARMS)
    for arm in ARMS:
        floors.added(arm)
    assert floors.floors().sum() == pytest.approx(MAX_TOTAL_FLOOR)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"share": 0.7}, "floor share"),
        ({"share": -0.1}, "floor share"),
        ({"labels": 0}, "floor labels"),
        ({"max_spend_usd": 0.0}, "max_spend_usd"),
    ],
)
def test_bad_floor_settings_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FloorConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_arm_and_bad_state_are_refused() -> None:
    floors = ArmFloors(FloorConfig(), ARMS)
    with pytest.raises(ConfigError, match="no arm 'x'"):
        floors.boost("x", 0.1, 5)
    with pytest.raises(ConfigError, match="not usable"):
        ArmFloors.from_dict(FloorConfig(), {"arms": ["a"], "active": {"a": {"share": "?"}}})


def test_the_change_line_names_added_removed_and_repriced_arms() -> None:
    from workers.service.migration import arm_change

    line = arm_change(("a", "b", "c"), np.array([1.0, 0.5, 0.1]),
                      ("a", "c", "d"), np.array([1.0, 0.2, 0.3]))  # fmt: skip
    assert line == "added ['d']; removed ['b']; re-priced (normalised cost) c 0.1 → 0.2"
    assert arm_change(("a",), np.array([1.0]), ("a",), np.array([1.0])) is None


def test_a_boost_of_no_labels_is_none_and_a_big_share_is_capped() -> None:
    floors = ArmFloors(FloorConfig(), ARMS)
    floors.boost("b", 0.2, 0)
    assert not floors.floors().any()
    floors.boost("b", 0.9, 10)
    assert floors.floors().tolist() == [0.0, MAX_TOTAL_FLOOR, 0.0]
