"""Trained snapshots: `metallm train`, a snapshot checked against the config before a worker
starts from it (--model, --migrate-arms), and off-policy training on a logged policy's data."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from bandit.arms import ArmCatalogue
from bandit.config import RoutingConfig
from bandit.datasets import Dataset, make_split
from bandit.embedder import EMBEDDING_DIM
from bandit.errors import PolicyError
from bandit.features import FeatureBuilder
from bandit.model_check import fit_to_config
from bandit.policy import Policy, PolicyConfig
from bandit.training import TrainingData, train_logged
from workers.cli import main
from workers.service.app import Service
from workers.service.settings import ServiceSettings


def _with_arms(cfg: RoutingConfig, drop: str, add: str | None = None) -> RoutingConfig:
    arms = [a for a in cfg.arms.arms if a.name != drop]
    if add:
        arms.append(dataclasses.replace(arms[0], name=add))
    return dataclasses.replace(cfg, arms=ArmCatalogue(tuple(arms)))


def _policy_for(cfg: RoutingConfig) -> Policy:
    return Policy(cfg.policy, cfg.arms.names, cfg.arms.normalised_costs(), EMBEDDING_DIM)


def test_a_snapshot_for_other_arms_is_refused_naming_the_difference_unless_migrated(
    overruling: tuple[Dataset, RoutingConfig],
) -> None:
    _, cfg = overruling
    trained = _policy_for(cfg)
    other = _with_arms(cfg, drop="gpt-4", add="claude-3")
    with pytest.raises(PolicyError, match=r"adds \['claude-3'\]; the config drops \['gpt-4'\]"):
        fit_to_config(trained, other, EMBEDDING_DIM, source="--model x.bin")
    migrated, notes = fit_to_config(trained, other, EMBEDDING_DIM, migrate=True)
    assert migrated.arm_names == other.arms.names
    assert any("migrated" in n and "claude-3" in n for n in notes)
    fitted, notes = fit_to_config(trained, cfg, EMBEDDING_DIM)
    assert fitted.arm_names == cfg.arms.names and notes == []


def test_a_snapshot_of_another_dimension_or_mode_is_refused(
    overruling: tuple[Dataset, RoutingConfig],
) -> None:
    _, cfg = overruling
    small = Policy(cfg.policy, cfg.arms.names, cfg.arms.normalised_costs(), 16)
    with pytest.raises(PolicyError, match=r"16-dimensional embeddings.*384"):
        fit_to_config(small, cfg, EMBEDDING_DIM)
    paper = Policy(cfg.policy.replace(mode="paper", loss="squared"), cfg.arms.names,
                   cfg.arms.normalised_costs(), EMBEDDING_DIM)  # fmt: skip
    with pytest.raises(PolicyError, match=r"'paper' mode.*'decoupled'"):
        fit_to_config(paper, cfg, EMBEDDING_DIM)


def test_serve_refuses_a_mismatched_model_with_one_line_and_exit_2(
    overruling: tuple[Dataset, RoutingConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = overruling
    snap = tmp_path / "other.bin"
    snap.write_bytes(_policy_for(_with_arms(cfg, drop="medium")).to_bytes())
    assert main(["serve", "--dataset", "overruling", "--model", str(snap)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "trained for other arms" in err[0] and "the config adds ['medium']" in err[0]
    assert "--migrate-arms" in err[0]


def test_train_writes_a_snapshot_that_beats_random_on_held_out_rows(
    overruling: tuple[Dataset, RoutingConfig], tmp_path: Path
) -> None:
    ds, cfg = overruling
    out, report = tmp_path / "policy.bin", tmp_path / "model.json"
    subset = ["--dataset", "overruling", "--limit", "400"]
    assert main(["train", *subset, "--no-tune", "--out", str(out)]) == 0
    policy = Policy.from_bytes(out.read_bytes())
    assert policy.arm_names == cfg.arms.names
    assert policy.version > 0
    # evaluate --model: the snapshot's greedy choices on the test rows of the same seeded
    # subset and split, which train never learned from
    assert main(["evaluate", *subset, "--model", str(out), "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    mine = next(r for r in rows if r["policy"].startswith("--model") and r["p"] == 0)
    sub = ds.subset(np.sort(np.random.default_rng(0).permutation(len(ds))[:400]))
    random = sub.correct[make_split(sub, 0).test].mean()
    assert mine["acc"] > random + 0.05


def test_off_policy_training_learns_the_right_arm_from_a_biased_log() -> None:
    """Arm "a" is right when x₀ > 0, arm "b" otherwise; the logging policy drew "a" 90 % of
    the time whatever x was. Learned with those probabilities, the policy picks the right
    arm on fresh contexts."""
    rng = np.random.default_rng(3)
    dim, n = 8, 3000
    names = ("a", "b")
    vectors = rng.normal(size=(n, dim))
    right = np.where(vectors[:, 0] > 0, 0, 1)
    correct = np.stack([(right == 0), (right == 1)], axis=1).astype(float)
    drawn = np.where(rng.random(n) < 0.9, 0, 1)
    observed = np.zeros((n, 2), bool)
    observed[np.arange(n), drawn] = True
    prob = np.where(observed, np.where(drawn == 0, 0.9, 0.1)[:, None], 0.0)
    cfg = PolicyConfig(learning_rate=0.5, word_features=False)
    policy = Policy(cfg, names, np.array([1.0, 1.0]), dim)
    shared = FeatureBuilder(names, dim, word_features=False).shared_batch(vectors, None)
    data = TrainingData(shared, correct, np.ones((n, 2)), np.ones((n, 2)))
    assert train_logged(policy, data, observed, prob, seed=0, passes=2) == 2 * n
    fresh = rng.normal(size=(500, dim))
    lines = FeatureBuilder(names, dim, word_features=False).shared_batch(fresh, None)
    chosen = np.array([d.arm for d in policy.decide_lines(lines, greedy=True)])
    assert (chosen == np.where(fresh[:, 0] > 0, 0, 1)).mean() > 0.9
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        train_logged(policy, data, observed, np.zeros((n, 2)))


def test_a_worker_says_which_model_it_starts_from(
    redis_url: str, prefix: str, overruling: tuple[Dataset, RoutingConfig],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Cold: a warning saying how to start warm. --model: that snapshot. Once the deployment
    has a snapshot at least as new, that one (and, when newer, a warning that --model is not used)."""
    _, cfg = overruling
    s = ServiceSettings(redis_url=redis_url, prefix=prefix)
    trained = _policy_for(cfg)
    trained.updates = 5

    def start(given: Policy | None) -> int:
        svc = Service(
            s, cfg, roles=("learner",), initial_policy=given, initial_name="--model x.bin"
        )

        async def run() -> int:
            await svc.start()
            version = svc.learner.policy.version if svc.learner else -1
            await svc.close()
            return version

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="workers.service.model_start"):
            return asyncio.run(run())

    other = ServiceSettings(redis_url=redis_url, prefix=prefix + "cold:")
    svc = Service(other, cfg, roles=("learner",))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workers.service.model_start"):
        asyncio.run(_start_and_close(svc))
    (cold,) = caplog.records
    assert cold.levelno == logging.WARNING
    assert "cold (model version 0" in cold.getMessage() and "--model" in cold.getMessage()

    assert start(trained) == 5  # publishes version 5 to the deployment
    assert "from --model x.bin, model version 5" in caplog.text
    assert start(trained) == 5  # the deployment holds that same version: no warning
    (same,) = caplog.records
    assert same.levelno == logging.INFO and "the version of --model x.bin" in same.getMessage()
    trained.updates = 3
    assert start(trained) == 5  # the deployment's version 5 is newer than --model's 3
    (warned,) = caplog.records
    assert warned.levelno == logging.WARNING and "which is not used" in warned.getMessage()
    trained.updates = 9
    assert start(trained) == 9  # a newer --model wins


async def _start_and_close(svc: Service) -> None:
    await svc.start()
    await svc.close()
