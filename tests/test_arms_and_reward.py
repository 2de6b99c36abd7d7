import numpy as np
import pytest

from bandit.arms import ArmCatalogue, normalise_costs
from bandit.config import builtin_config, parse_config
from bandit.errors import ConfigError, UnknownArmError
from bandit.reward import explicit_reward, is_correct, reward


def catalogue() -> ArmCatalogue:
    return ArmCatalogue.from_dicts(
        [
            {
                "name": "big",
                "provider": "openai",
                "model_id": "gpt-4",
                "price_per_1k_input_usd": 0.03,
                "price_per_1k_output_usd": 0.06,
                "typical_tokens_in": 1000,
                "typical_tokens_out": 0,
            },
            {"name": "small", "provider": "bedrock", "model_id": "m", "price_per_call_usd": 0.003},
            {"name": "free", "provider": "replay", "model_id": "r"},
        ]
    )


def test_costs_normalise_so_the_dearest_arm_costs_one() -> None:
    cat = catalogue()
    np.testing.assert_allclose(cat.fixed_costs_usd(), [0.03, 0.003, 0.0])
    np.testing.assert_allclose(cat.normalised_costs(), [1.0, 0.1, 0.0])
    # dynamic costs share the fixed scale: a query that cost 0.06 USD on "big" counts 2
    np.testing.assert_allclose(cat.normalise_usd(np.array([0.06, 0.0015])), [2.0, 0.05])
    assert cat.arm("big").cost_usd(tokens_in=2000, tokens_out=500) == pytest.approx(0.09)
    np.testing.assert_allclose(normalise_costs(np.array([2.0, 4.0])), [0.5, 1.0])


def test_reward_is_correctness_minus_priced_cost() -> None:
    np.testing.assert_allclose(
        reward(np.array([1, 0, 1]), np.array([1.0, 0.1, 0.5]), 0.2), [0.8, -0.02, 0.9]
    )
    assert reward(1, 0.5, 0.0) == 1.0
    assert explicit_reward(0.7, 0.5, 0.2) == pytest.approx(0.6)
    assert is_correct(" yes ", "Yes") == 1.0
    assert is_correct(None, "Yes") == 0.0


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (
            {"name": "a", "provider": "openai", "model_id": "m", "price_per_call_usd": -1},
            "price_per_call_usd",
        ),
        ({"name": "a", "provider": "azure", "model_id": "m"}, "provider 'azure' is not one of"),
        ({"name": "", "provider": "openai", "model_id": "m"}, "name must be"),
        (
            {"name": "a", "provider": "openai", "model_id": "m", "prompt_template": "no slot"},
            r"\{text\}",
        ),
        ({"name": "a", "provider": "openai", "model_id": "m", "colour": "red"}, "unknown field"),
        ({"name": "a", "provider": "openai"}, "missing field"),
    ],
)
def test_bad_arms_are_rejected_with_the_field_named(entry: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ArmCatalogue.from_dicts(
            [entry, {"name": "b", "provider": "replay", "model_id": "x", "price_per_call_usd": 1}]
        )


def test_unknown_arm_lists_the_valid_ones() -> None:
    with pytest.raises(
        UnknownArmError, match="unknown arm 'gpt-5'; the catalogue has: big, small, free"
    ):
        catalogue().index("gpt-5")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"task": {"name": "t"}}, r"no \[\[arms\]\]"),
        ({"arms": [], "policy": {"mode": "greedy"}}, "empty|mode"),
        (
            {
                "arms": [
                    {"name": "a", "provider": "replay", "model_id": "m", "price_per_call_usd": 1}
                ],
                "policy": {"mode": "paper", "loss": "logistic"},
            },
            "needs mode = 'decoupled'",
        ),
        (
            {
                "arms": [
                    {"name": "a", "provider": "replay", "model_id": "m", "price_per_call_usd": 1}
                ],
                "policy": {"epsilon": 1.5},
            },
            r"epsilon = 1.5 must be in \[0, 1\]",
        ),
        (
            {
                "arms": [
                    {"name": "a", "provider": "replay", "model_id": "m", "price_per_call_usd": 1}
                ],
                "embedder": {"max_seq_length": 0},
            },
            "max_seq_length",
        ),
        ({"arms": [], "extra": {}}, "unknown section"),
    ],
)
def test_bad_configs_say_what_is_wrong(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


@pytest.mark.parametrize("name", ["overruling", "imdb", "arc"])
def test_builtin_configs_load(name: str) -> None:
    cfg = builtin_config(name)
    assert cfg.task.name == name
    assert cfg.arms.normalised_costs().max() == 1.0
