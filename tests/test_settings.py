from pathlib import Path

import pytest

from bandit.errors import ConfigError
from workers.cli import main
from workers.service.retry import compute_backoff
from workers.service.settings import ServiceSettings


def test_file_then_env_then_options() -> None:
    file = {"batch_size": 8, "block_ms": 100, "prefix": "from-file:"}
    env = {
        "METALLM_BATCH_SIZE": "16",
        "REDIS_URL": "redis://example:6380/1",
        "METALLM_DEFAULT_REWARD": "0.25",
    }
    s = ServiceSettings.from_env(env, file, batch_size=64, prefix=None)
    assert (s.batch_size, s.block_ms, s.prefix) == (64, 100, "from-file:")
    assert s.redis_url == "redis://example:6380/1" and s.default_reward == 0.25
    assert s.embedder_process is True  # the default: the embedder in a child process
    for word, value in (("false", False), ("0", False), ("Yes", True), ("on", True)):
        assert (
            ServiceSettings.from_env({"METALLM_EMBEDDER_PROCESS": word}).embedder_process is value
        )
    assert ServiceSettings.from_env({}, {"embedder_process": False}).embedder_process is False
    bounded = ServiceSettings.from_env(
        {"METALLM_FEEDBACK_MAXLEN": "5000", "METALLM_SHUTDOWN_DEADLINE_S": "12.5"}
    )
    assert (bounded.feedback_maxlen, bounded.shutdown_deadline_s) == (5000, 12.5)
    assert (bounded.responses_maxlen, bounded.dead_maxlen) == (1_000_000, 100_000)
    limits = ServiceSettings.from_env({"METALLM_MAX_TEXT_CHARS": "1000", "METALLM_MAX_LABELS": "8",
                                       "METALLM_MAX_LABEL_CHARS": "20"})  # fmt: skip
    assert (limits.max_text_chars, limits.max_labels, limits.max_label_chars) == (1000, 8, 20)
    defaults = ServiceSettings()
    assert (defaults.max_text_chars, defaults.max_labels, defaults.max_label_chars) == (
        32_000,
        64,
        200,
    )


@pytest.mark.parametrize(
    ("env", "file", "match"),
    [
        ({"METALLM_BATCH_SIZE": "many"}, None, "METALLM_BATCH_SIZE = 'many' is not a valid int"),
        ({"METALLM_BATCH_SIZE": "0"}, None, "batch_size = 0 must be ≥ 1"),
        ({"METALLM_DEFAULT_REWARD": "2"}, None, r"default_reward = 2.0 must be in \[0, 1\]"),
        ({}, {"batchsize": 3}, r"unknown setting\(s\) \['batchsize'\]"),
        ({}, {"reward_wait_s": -1}, "reward_wait_s = -1 must be > 0 seconds"),
        (
            {"METALLM_EMBEDDER_PROCESS": "maybe"},
            None,
            r"METALLM_EMBEDDER_PROCESS = 'maybe' is not a valid bool \(use true or false\)",
        ),
        ({}, {"embedder_process": "no"}, "embedder_process = 'no' must be true or false"),
        ({"METALLM_EMBEDDER_THREADS": "-1"}, None, "embedder_threads = -1 must be ≥ 0"),
        ({"METALLM_RESPONSES_MAXLEN": "0"}, None, "responses_maxlen = 0 must be ≥ 1"),
        ({}, {"dead_maxlen": -5}, "dead_maxlen = -5 must be ≥ 1"),
        ({"METALLM_SHUTDOWN_DEADLINE_S": "0"}, None, "shutdown_deadline_s = 0.0 must be > 0"),
        ({}, {"repeat_wait_s": 0}, "repeat_wait_s = 0 must be > 0 seconds"),
        (
            {"METALLM_MAX_TEXT_CHARS": "0"},
            None,
            "max_text_chars = 0 must be between 1 and 10000000",
        ),
        (
            {"METALLM_MAX_TEXT_CHARS": "lots"},
            None,
            "METALLM_MAX_TEXT_CHARS = 'lots' is not a valid int",
        ),
        ({}, {"max_labels": 0}, "max_labels = 0 must be between 1 and 10000"),
        ({}, {"max_label_chars": 10**6}, "max_label_chars = 1000000 must be between 1 and 100000"),
    ],
)
def test_bad_settings(env: dict, file: dict | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServiceSettings.from_env(env, file)


def test_bad_settings_from_the_command_line_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "arms.toml"
    cfg.write_text('[service]\nmax_in_flight = 0\n[[arms]]\nname = "a"\nprovider = "replay"\nmodel_id = "a"\n'
                   'price_per_call_usd = 0.001\nendpoint = "http://127.0.0.1:9"\n')  # fmt: skip
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err == "metallm: error: max_in_flight = 0 must be ≥ 1\n"


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    import random

    rng = random.Random(0)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (10, 5.0)):
        draws = [compute_backoff(attempt, 0.1, 5.0, rng) for _ in range(200)]
        assert min(draws) >= 0 and max(draws) <= ceiling and max(draws) > ceiling * 0.8
