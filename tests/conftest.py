"""Shared fixtures. Tests that need the recorded data sets skip locally when they are
absent, and fail under CI (CI=true) with a message that says where to get them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bandit.datasets import resolve_data_dir
from bandit.embedder import Embedder, EmbedderConfig
from bandit.errors import DataNotFoundError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    try:
        return resolve_data_dir()
    except DataNotFoundError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the recorded data sets: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    cache = tmp_path_factory.mktemp("embeddings")
    return Embedder(EmbedderConfig(cache_dir=str(cache), max_seq_length=128))
