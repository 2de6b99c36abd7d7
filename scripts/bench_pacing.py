"""Budget pacing on recorded outcomes (not a test): the table that chose the controller's
update rule and step size, and its spend error at each target.

For each (rule, step, window) it runs the paced online replay of ``bandit.pacing_replay``
(warm start on train; validation + test streamed in seeded orders, one per seed) at targets
of 25 / 50 / 75 % of the dearest arm's cost per query, and prints the mean spend error
after the first 10 % of the stream, the worst over seeds, and the accuracy against the
offline router's frontier at the realised cost.

    .venv/bin/python scripts/bench_pacing.py --dataset overruling --seeds 0 1 2 3 4 \\
        --rules multiplicative additive --steps 0.005 0.02 0.05 [--windows 0 100]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bandit.config import builtin_config
from bandit.datasets import load_dataset, make_split
from bandit.embedder import DiskCache, Embedder, default_cache_dir, text_key
from bandit.evaluation import Experiment
from bandit.pacing import DEFAULT_WARMUP_QUERIES, PacingConfig
from bandit.pacing_replay import BUDGET_SHARES, DEFAULT_BATCH, budget_study


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", required=True, choices=("overruling", "imdb", "arc"))
    ap.add_argument("--data-dir", default=os.environ.get("METALLM_DATA_DIR"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--shares", type=float, nargs="+", default=list(BUDGET_SHARES))
    ap.add_argument("--rules", nargs="+", default=["multiplicative", "additive"])
    ap.add_argument("--steps", type=float, nargs="+", default=[0.005, 0.02, 0.05])
    ap.add_argument("--windows", type=float, nargs="+", default=[0.0])
    ap.add_argument("--warmups", type=int, nargs="+", default=[DEFAULT_WARMUP_QUERIES])
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--price-change", metavar="ARM", help="also double ARM's price halfway")
    ap.add_argument("--passes", type=int, default=1, help="seeded passes over val+test per run")
    ap.add_argument(
        "--cached-only",
        action="store_true",
        help="use only the queries whose embeddings are already cached (while a long "
        "embedding run, e.g. IMDB's, is still filling the cache)",
    )
    ap.add_argument("--greedy", action="store_true", help="no exploration (ε = 0)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cfg = builtin_config(args.dataset)
    cache = str(default_cache_dir() / "embeddings")  # the cache `metallm evaluate` fills
    cfg = replace(cfg, embedder=replace(cfg.embedder, cache_dir=cache))
    ds = load_dataset(args.dataset, args.data_dir)
    if args.cached_only:
        store = DiskCache(Path(cache) / cfg.embedder.model_key)
        found = store.lookup([text_key(t) for t in ds.texts])
        ds = ds.subset(np.flatnonzero([v is not None for v in found]))
        print(f"{args.dataset}: {len(ds)} queries have cached embeddings; using those")
    vectors = Embedder(cfg.embedder).embed_cached(list(ds.texts))
    ex = Experiment(ds, vectors, make_split(ds), cfg)
    t0 = time.perf_counter()
    warm = ex.warm_policy(cfg.policy.replace(mode="decoupled")).to_bytes()
    print(f"{args.dataset}: warm start on {len(ex.split.train)} rows in "
          f"{time.perf_counter() - t0:.0f} s; streaming {len(ex.split.val) + len(ex.split.test)} "
          f"rows × {args.passes} passes × seeds {args.seeds}, batch {args.batch}, greedy {args.greedy}")  # fmt: skip
    print(f"{'rule':>14} {'step':>6} {'window':>6} {'warmup':>6} {'share':>5} {'target':>8} "
          f"{'realised':>8} {'err':>6} {'max err':>7} {'acc':>6} {'offline':>7} {'gap pp':>6} "
          f"{'p end':>7} {'p=0 cost':>8} {'price ×2':>10} {'recovery':>8}")  # fmt: skip
    for rule in args.rules:
        for step in args.steps:
            for window in args.windows:
                for warmup in args.warmups:
                    pacing = PacingConfig(usd_per_10k_queries=1.0, rule=rule, step=step,
                                          window_queries=window, warmup_queries=warmup)  # fmt: skip
                    t0 = time.perf_counter()
                    rows = budget_study(
                        ex, args.shares, seeds=args.seeds, pacing=replace(pacing),
                        price_change_arm=args.price_change, batch=args.batch, warm=warm,
                        greedy=args.greedy, passes=args.passes,
                    )  # fmt: skip
                    for r in rows:
                        rec = (
                            "-" if r.price_change_arm is None
                            else f"{r.recovery_queries:.0f}" if r.recovery_queries is not None
                            else "never"
                        )  # fmt: skip
                        print(f"{rule:>14} {step:>6g} {window:>6g} {warmup:>6} {r.share:>5.2f} "
                              f"{r.target_cost_per_10k:>8.3f} {r.realised_cost_per_10k:>8.3f} "
                              f"{r.spend_error:>6.2%} {r.spend_error_max:>7.2%} "
                              f"{r.acc:>6.2%} {r.offline_acc_at_cost:>7.2%} {r.acc_gap_pp:>+6.2f} "
                              f"{r.p_final:>7.3g} {r.p0_cost_per_10k:>8.3f} {r.price_change_arm or '-':>10} {rec:>8}")  # fmt: skip
                    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
