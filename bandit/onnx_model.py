"""The sentence model on ONNX Runtime: sentence-transformers' vectors at less CPU and memory.

sentence-transformers runs all-MiniLM-L6-v2 through torch. ``OnnxSentenceModel`` runs the
same network, exported once to an ONNX file, on ONNX Runtime, and does the rest of
sentence-transformers' work itself: the model's own tokenizer (``tokenizer.json``, through
the ``tokenizers`` library), mean pooling over the attention mask, unit length. Its vectors
equal sentence-transformers' to 1e-6 (tests/test_embedder.py); it embeds 1.1-1.4× faster
on 2 cores (scripts/bench_service.py measures both backends) and its process needs no
torch: the router's embedder child holds 300-350 MB against 600-730 MB with torch
(README, the RSS of the service benchmark).

The export needs torch and the ``onnx`` package and takes a few seconds; it happens the
first time a model is used and is kept in ``onnx_dir`` under a name that changes when the
model's files change. Only models whose pooling is the mean of token vectors (the
all-MiniLM family) are supported; others are refused with a message that names
``backend = "torch"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit.errors import EmbedderError

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-4  # largest difference to torch's vectors an export may show
_PROBES = ["an exported model must agree with torch", "short", "ünïcödé and punctuation!?"]


def onnx_file(model_dir: str, onnx_dir: Path) -> Path:
    """Where the export of ``model_dir`` is kept: named after the model's files, so that
    a changed model is exported again."""
    digest = hashlib.blake2b(str(Path(model_dir).resolve()).encode(), digest_size=8)
    for name in sorted(os.listdir(model_dir)):
        path = Path(model_dir, name)
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return onnx_dir / f"{Path(model_dir).name}-{digest.hexdigest()}.onnx"


def check_mean_pooling(model_dir: str) -> None:
    """Refuse a model that is not transformer → mean pooling (→ normalize)."""
    try:
        modules = json.loads(Path(model_dir, "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads(Path(model_dir, pooling_dir, "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise EmbedderError(
            f"cannot read the model's modules at {model_dir} ({exc}); "
            'set embedder.backend = "torch" to run it through sentence-transformers'
        ) from exc
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    if (
        kinds[:2] != ["Transformer", "Pooling"]
        or modes != {"pooling_mode_mean_tokens"}
        or any(k not in ("Transformer", "Pooling", "Normalize") for k in kinds)
    ):
        raise EmbedderError(
            f"the onnx backend runs transformer + mean-pooling models only; the model at "
            f"{model_dir} has modules {kinds} and pooling {sorted(modes)}: "
            'set embedder.backend = "torch"'
        )


def export(model_dir: str, dest: Path) -> None:
    """Export the model's transformer to ``dest`` (atomically) and check it against torch."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EmbedderError(
            f"exporting the model to ONNX needs torch, onnx and sentence-transformers ({exc}); "
            'install them or set embedder.backend = "torch"'
        ) from exc

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    log.info("exporting the sentence model at %s to ONNX (once): %s", model_dir, dest)
    st = SentenceTransformer(model_dir, device="cpu")
    encoded = st[0].tokenizer(_PROBES[:2], padding=True, return_tensors="pt")  # type: ignore[operator]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in encoded:
        encoded["token_type_ids"] = torch.zeros_like(encoded["input_ids"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name, suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer warns about shape checks it folds; the probes below check the graph.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(st[0].auto_model).eval(),
                tuple(encoded[n] for n in names),
                tmp,
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        want = st.encode(_PROBES, normalize_embeddings=True, convert_to_numpy=True)
        seq = int(st.max_seq_length or 256)
        got = OnnxSentenceModel(model_dir, Path(tmp), seq, threads=1).encode(_PROBES)
        diff = float(np.abs(want - got).max())
        if diff > EXPORT_TOLERANCE:
            raise EmbedderError(
                f"the ONNX export of {model_dir} differs from torch by {diff:.1e} "
                f'(tolerance {EXPORT_TOLERANCE:.0e}); set embedder.backend = "torch"'
            )
        os.chmod(tmp, 0o644)  # mkstemp made it private; the export is a shared cache
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxSentenceModel:
    """Tokenize → ONNX Runtime → mean pooling → unit length, for one exported model."""

    def __init__(self, model_dir: str, path: Path, max_seq_length: int, threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle model threads sleep instead of spinning: beside the router's event loop on
        # few cores, spinning took CPU from it (README, "Benchmark of the service").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.threads = threads or (os.cpu_count() or 1)
        self.tokenizer = Tokenizer.from_file(str(Path(model_dir, "tokenizer.json")))
        self.tokenizer.enable_truncation(max_seq_length)
        pad = _special_token(model_dir, "pad_token", "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)
        self.lower_case = _sbert_config(model_dir).get("do_lower_case", False)

    @classmethod
    def load(
        cls, model_dir: str, onnx_dir: Path, max_seq_length: int, threads: int = 0
    ) -> OnnxSentenceModel:
        """The model from its export in ``onnx_dir``, exporting it first if needed (or
        again, if the file there cannot be loaded)."""
        check_mean_pooling(model_dir)
        path = onnx_file(model_dir, onnx_dir)
        if path.is_file():
            try:
                return cls(model_dir, path, max_seq_length, threads)
            except Exception as exc:  # a truncated or foreign file: export again
                log.warning("cannot load %s (%s); exporting the model again", path, exc)
        export(model_dir, path)
        return cls(model_dir, path, max_seq_length, threads)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length vectors of ``texts``, longest first in batches of ``batch_size``
        (as sentence-transformers batches them), returned in the order given."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = [texts[i].strip() for i in rows]  # sentence-transformers strips too
            if self.lower_case:
                batch = [t.lower() for t in batch]
            encodings = self.tokenizer.encode_batch(batch)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})[0]
            weights = mask[..., None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _special_token(model_dir: str, name: str, default: str) -> str:
    try:
        value = json.loads(Path(model_dir, "special_tokens_map.json").read_text()).get(name)
    except (OSError, ValueError):
        return default
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _sbert_config(model_dir: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(model_dir, "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
