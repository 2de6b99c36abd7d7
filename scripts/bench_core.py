"""Benchmark of the learning core (not a test): prints numbers and ratios measured in one run.

1. Embedder throughput at batch 1 / 32 / 256 on SST-2 sentences: metallm's Embedder vs raw
   sentence-transformers ``encode`` on the same model and batch size; and the LRU cache.
2. Policy rounds/s (feature building + predict + learn) vs raw Vowpal Wabbit on lines
   built in advance, and feature building alone vs a naive per-float f-string.

    .venv/bin/python scripts/bench_core.py [--data-dir DIR] [--sentences N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from bandit.datasets import resolve_data_dir
from bandit.embedder import Embedder, EmbedderConfig, TorchSentenceModel, default_model_path
from bandit.policy import Policy, PolicyConfig


def rate(fn: Callable[[], int], min_seconds: float = 2.0) -> float:
    """Items per second of ``fn`` (which returns how many items it did), best of ≥ 2 runs."""
    best = 0.0
    runs = 0
    start = time.perf_counter()
    while runs < 2 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
        runs += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("METALLM_DATA_DIR"),
        help="recorded data sets (default: $METALLM_DATA_DIR, else ../shared/data)",
    )
    ap.add_argument("--sentences", type=int, default=512)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_data_dir(args.data_dir) / "sst2" / "train_full.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    sentences = [ln.split("\t")[0] for ln in lines if ln.strip()][: args.sentences * 4]

    print(f"1. embedder, {args.sentences} SST-2 sentences per run (sentences/s)")
    print(f"   {'batch':>5} {'raw s-t':>9} {'metallm':>9} {'ratio':>6}")
    for batch in (1, 32, 256):
        emb = Embedder(EmbedderConfig(batch_size=batch, lru_size=0))  # the onnx backend
        model = TorchSentenceModel(default_model_path(), EmbedderConfig()).model  # raw s-t
        n = args.sentences if batch > 1 else min(args.sentences, 128)
        chunk = sentences[:n]

        def raw(chunk: list[str] = chunk, model: object = model, batch: int = batch) -> int:
            model.encode(
                chunk, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
            )  # type: ignore[attr-defined]
            return len(chunk)

        def ours(chunk: list[str] = chunk, emb: Embedder = emb) -> int:
            if emb.config.batch_size == 1:
                for s in chunk:
                    emb.embed([s])
            else:
                emb.embed(chunk)
            return len(chunk)

        r_raw, r_ours = rate(raw), rate(ours)
        print(f"   {batch:>5} {r_raw:>9.1f} {r_ours:>9.1f} {r_ours / r_raw:>6.2f}")
    cached = Embedder(EmbedderConfig(batch_size=32))
    cached.embed(sentences[:256])
    r_hit = rate(lambda: len(cached.embed(sentences[:256])))
    print(f"   LRU hits: {r_hit:,.0f} sentences/s")

    print("2. policy, 12 arms, 384-dim embeddings + word features (rounds/s)")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(2000, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = sentences[:2000]
    names = tuple(f"arm{j}" for j in range(12))
    costs = np.linspace(1.0, 0.05, 12)
    policy = Policy(PolicyConfig(), names, costs, 384)
    fb = policy.features
    prebuilt = [fb.shared(v, t) for v, t in zip(vecs, texts, strict=True)]

    def naive_build() -> int:
        for v, t in zip(vecs, texts, strict=True):
            "shared |x " + " ".join(f"{i}:{x}" for i, x in enumerate(v)) + " |w " + t.lower()
        return len(vecs)

    def our_build() -> int:
        fb.shared_batch(vecs, texts)
        return len(vecs)

    r_naive, r_build = rate(naive_build), rate(our_build)
    print(
        f"   feature building: naive f-string {r_naive:,.0f}/s, metallm {r_build:,.0f}/s ({r_build / r_naive:.1f}×)"
    )

    from vowpalwabbit import Workspace

    raw_vw = Workspace(policy.config.vw_args(), enable_logging=False)
    raw_examples = [
        (fb.predict_example(s), fb.learn_example(s, i % 12, -1.0, 0.5))
        for i, s in enumerate(prebuilt)
    ]

    def raw_round() -> int:
        for pred, learn in raw_examples:
            raw_vw.predict(pred)
            raw_vw.learn(learn)
        return len(raw_examples)

    def our_round() -> int:
        ds = policy.decide(vecs, texts)
        for i, d in enumerate(ds):
            policy.learn(vecs[i], texts[i], d.arm, d.prob, float(i % 2))
        return len(vecs)

    r_vw, r_ours = rate(raw_round), rate(our_round)
    print(
        f"   raw VW predict+learn on prebuilt lines {r_vw:,.0f}/s; metallm build+decide+learn "
        f"{r_ours:,.0f}/s (ratio {r_ours / r_vw:.2f})"
    )


if __name__ == "__main__":
    main()
