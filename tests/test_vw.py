"""The Vowpal Wabbit adapter (bandit/vw.py) and the snapshot format (bandit/snapshot.py)."""

import numpy as np
import pytest

from bandit.errors import PolicyError
from bandit.features import FeatureBuilder
from bandit.policy import PolicyConfig
from bandit.snapshot import SNAPSHOT_MAGIC, Snapshot
from bandit.vw import FAST_CALLS_AVAILABLE, VWModel

DIM = 8
ARMS = ("dear", "cheap", "bad")
COSTS = np.array([1.0, 0.1, 0.05])


def test_the_pinned_vowpal_wabbit_has_the_fast_calls() -> None:
    # Otherwise the comparison below would compare the public API with itself.
    assert FAST_CALLS_AVAILABLE
    assert VWModel(PolicyConfig().vw_args()).fast
    assert not VWModel(PolicyConfig().vw_args(), fast=False).fast


@pytest.mark.parametrize("mode", ["decoupled", "paper"])
def test_fast_and_public_calls_learn_and_predict_the_same(mode: str) -> None:
    """The binding calls on parsed examples and pyvw's public learn/predict, fed the same
    updates, give bit-identical predictions."""
    loss = "logistic" if mode == "decoupled" else "squared"
    cfg = PolicyConfig(mode=mode, loss=loss, p=0.3, word_features=False)
    fast, public = VWModel(cfg.vw_args(), fast=True), VWModel(cfg.vw_args(), fast=False)
    fb = FeatureBuilder(ARMS, DIM, word_features=False)
    rng = np.random.default_rng(3)
    lines = fb.shared_batch(rng.normal(size=(300, DIM)))
    for i, line in enumerate(lines):
        arm = i % len(ARMS)
        right = float(rng.random() < 0.5)
        cost = -(right - 0.3 * COSTS[arm]) if mode == "paper" else (-1.0 if right else 1.0)
        example = fb.learn_example(line, arm, cost, 0.5)
        fast.learn(example)
        public.learn(example)
    for line in lines[:20]:
        want = public.predict(fb.predict_example(line))
        assert fast.predict(fb.predict_example(line)) == want
        assert len(want) == len(ARMS)
    assert fast.predict(fb.predict_example(lines[0])) != fast.predict(fb.predict_example(lines[1]))


def test_a_saved_model_loads_with_the_same_predictions() -> None:
    cfg = PolicyConfig(word_features=False)
    fb = FeatureBuilder(ARMS, DIM, word_features=False)
    lines = fb.shared_batch(np.random.default_rng(0).normal(size=(50, DIM)))
    vw = VWModel(cfg.vw_args())
    for i, line in enumerate(lines):
        vw.learn(fb.learn_example(line, i % 3, -1.0 if i % 2 else 1.0, 1.0))
    for fast in (True, False):
        copy = VWModel(cfg.vw_args(), vw.to_bytes(), fast=fast)
        for line in lines[:5]:
            assert copy.predict(fb.predict_example(line)) == vw.predict(fb.predict_example(line))


def test_snapshot_round_trip() -> None:
    snap = Snapshot({"dim": 8, "arm_names": ["a"]}, b"\x00model\xff")
    data = snap.to_bytes()
    assert data.startswith(SNAPSHOT_MAGIC)
    assert Snapshot.parse(data) == snap


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not a model", "bad magic bytes"),
        (SNAPSHOT_MAGIC + b"\x00\x00", "truncated"),
        (SNAPSHOT_MAGIC + b"\x00\x00\x00\x03{x}model", "header is corrupt"),
        (SNAPSHOT_MAGIC + b"\x00\x00\x00\x02[]model", "header is a list, not an object"),
    ],
)
def test_bad_snapshots_are_rejected(data: bytes, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        Snapshot.parse(data)
