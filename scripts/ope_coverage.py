"""Off-policy estimates against truth, on a recorded data set (issue 13, "Estimates against
truth").

The recorded data sets hold every arm's outcome for every query, so the true accuracy and
cost of any target policy on the streamed queries is known. For each seed: warm-start the
decoupled policy (full information) on a part of the data set, stream ``--labels`` other
queries in a seeded order through ε-greedy at ``--p`` (the live policy, learning online
from bandit feedback with its logged probability, as the service and `metallm evaluate`'s
online replay do), feed each labelled decision to ``bandit.ope.OffPolicyEvaluator`` and
compare its estimates with the truth on the same queries:

- ``live``: Σ_j pmf_j·outcome_j per query (the logging policy's expected value);
- ``always:ARM``: that arm's recorded outcomes;
- ``greedy:p=P``: the outcomes of the arm argmax P̂ − P·c picks per query (P̂ as logged);
- ``shadow:warm``: a candidate snapshot (the warm-started policy, frozen), greedy at ``--p``.

It prints, per target, how many seeds' 95 % intervals covered the truth (SNIPS with the
Gaussian interval, IPS with Clopper-Pearson, the confidence sequence; cumulative, and over
the recent window against the truth on the window's queries) and the mean absolute error
of SNIPS and IPS after all labels. ``--json PATH`` writes the same.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/ope_coverage.py --dataset overruling
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bandit.config import builtin_config
from bandit.datasets import DATA_DIR_ENV, Split, load_dataset
from bandit.embedder import Embedder, default_cache_dir
from bandit.evaluation import Experiment
from bandit.ope import (
    CS_MODES,
    LIVE,
    PER_10K,
    LoggedDecision,
    OffPolicyEvaluator,
    OPEConfig,
    PolicyEstimate,
    arm_policy,
    greedy_policy,
    shadow_policy,
)

INTERVALS = ("gaussian", "clopper_pearson", "cs")
SHADOW = "warm"


def stream_rows(n_rows: int, labels: int, dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(warm-start rows, streamed rows), disjoint, in a seeded order."""
    perm = np.random.default_rng(seed).permutation(n_rows)
    if labels >= n_rows:
        raise SystemExit(f"--labels {labels} must be below the data set's {n_rows} rows")
    # IMDB has rows to spare: warm-start on 10,000 (its train split's size); overruling
    # (2,160 rows) keeps what the stream leaves (160 at 2,000 labels).
    warm = perm[labels : labels + 10_000] if dataset == "imdb" else perm[labels:]
    return np.sort(warm), perm[:labels]


def run_seed(ex: Experiment, args: argparse.Namespace, ope_cfg: OPEConfig, seed: int) -> dict:
    warm, stream = stream_rows(len(ex.ds), args.labels, ex.ds.name, seed)
    base = ex.config.policy.replace(mode="decoupled", p=args.p, seed=seed)
    if args.epsilon is not None:
        base = base.replace(epsilon=args.epsilon)
    frozen = ex.warm_policy_on(base, warm, seed)
    live = frozen.with_config(base.for_online())
    live.reseed(seed)
    ev = OffPolicyEvaluator(ope_cfg, ex.costs)
    ev.add_shadow(SHADOW)

    k = len(ex.arm_names)
    truth_acc: dict[str, list[float]] = defaultdict(list)
    truth_cost: dict[str, list[float]] = defaultdict(list)
    update_s = 0.0
    for i in stream:
        line = ex.shared[i]
        predicted = live.correctness([line])[0]
        (d,) = live.decide_lines([line])
        (cand,) = frozen.decide_lines([line], greedy=True)
        a, c = float(ex.correct[i, d.arm]), float(ex.cost_usd[i, d.arm])
        t = time.perf_counter()
        ev.update(LoggedDecision(d.pmf, d.arm, a, c, predicted), {SHADOW: cand.arm})
        update_s += time.perf_counter() - t
        live.learn_line(line, d.arm, d.prob, a, float(ex.reward_cost[i, d.arm]))

        picks = {LIVE: None, shadow_policy(SHADOW): cand.arm}
        picks |= {arm_policy(n): j for j, n in enumerate(ex.arm_names)}
        picks |= {greedy_policy(p): int(j) for p, j in zip(ope_cfg.p_grid, ev.greedy_arms(predicted), strict=True)}  # fmt: skip
        for name, j in picks.items():
            weights = d.pmf if j is None else np.eye(k)[j]
            truth_acc[name].append(float(weights @ ex.correct[i]))
            truth_cost[name].append(float(weights @ ex.cost_usd[i]) * PER_10K)

    out: dict[str, Any] = {}
    for scope in ("cumulative", "window"):
        for est in ev.estimates(scope):
            n = est.labels  # the window's labels are the last n streamed
            true_acc = float(np.mean(truth_acc[est.policy][-n:]))
            true_cost = float(np.mean(truth_cost[est.policy][-n:]))
            out[f"{scope}/{est.policy}"] = judge(est, true_acc, true_cost)
    out["clipped_costs"] = ev.clipped_costs
    out["update_ms"] = 1e3 * update_s / len(stream)
    return out


def judge(est: PolicyEstimate, true_acc: float, true_cost: float) -> dict[str, Any]:
    """One seed's estimates of one target against its truth. An interval the estimator
    left undefined (None bounds) counts as a miss."""
    row: dict[str, Any] = {"labels": est.labels, "true_acc": true_acc, "true_cost": true_cost}
    for metric, truth in (("acc", true_acc), ("cost", true_cost)):
        m = est.acc if metric == "acc" else est.cost_per_10k
        row[f"{metric}_snips"], row[f"{metric}_ips"] = m.value, m.ips
        for kind in INTERVALS:
            bounds = getattr(m, kind)
            if bounds is None:  # the confidence sequence, in the window
                continue
            lo, hi = bounds
            defined = lo is not None and hi is not None
            row[f"{metric}_{kind}_covers"] = defined and lo - 1e-9 <= truth <= hi + 1e-9
            row[f"{metric}_{kind}_width"] = hi - lo if defined else None
    return row


def summarise(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per scope/policy over the seeds: truth, mean |error| of SNIPS and IPS, and per
    interval how many seeds it covered, how many it was undefined in, its mean width."""
    out: dict[str, dict[str, Any]] = {}
    for key in runs[0]:
        if key in ("clipped_costs", "update_ms"):
            continue
        rows = [r[key] for r in runs]
        s: dict[str, Any] = {"seeds": len(rows), "labels": rows[0]["labels"]}
        for metric in ("acc", "cost"):
            truth = np.array([r[f"true_{metric}"] for r in rows])
            s[f"true_{metric}"] = float(truth.mean())
            for est in ("snips", "ips"):
                vals = np.array([r[f"{metric}_{est}"] for r in rows], dtype=float)
                errors = np.abs(vals - truth)[~np.isnan(vals)]  # NaN: the arm was never drawn
                s[f"{metric}_{est}_mae"] = float(errors.mean()) if errors.size else float("nan")
            for kind in INTERVALS:
                col = f"{metric}_{kind}"
                if f"{col}_covers" not in rows[0]:
                    continue
                widths = [r[f"{col}_width"] for r in rows if r[f"{col}_width"] is not None]
                s[f"{col}_covered"] = int(sum(r[f"{col}_covers"] for r in rows))
                s[f"{col}_undefined"] = len(rows) - len(widths)
                s[f"{col}_n"] = len(rows)
                s[f"{col}_width"] = float(np.mean(widths)) if widths else None
        out[key] = s
    return out


def totals(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Coverage over every (seed, target) pair, per scope, metric and interval; and the
    worst target's coverage."""
    out: dict[str, dict[str, Any]] = {}
    for scope in ("cumulative", "window"):
        scoped = [s for k, s in summary.items() if k.startswith(scope + "/")]
        for metric in ("acc", "cost"):
            for kind in INTERVALS:
                col = f"{metric}_{kind}"
                rows = [s for s in scoped if f"{col}_n" in s]
                if not rows:
                    continue
                hit, n = sum(s[f"{col}_covered"] for s in rows), sum(s[f"{col}_n"] for s in rows)
                widths = [s[f"{col}_width"] for s in rows if s[f"{col}_width"] is not None]
                out[f"{scope}/{metric}/{kind}"] = {
                    "covered": hit,
                    "n": n,
                    "rate": hit / n,
                    "worst_target": min(s[f"{col}_covered"] / s[f"{col}_n"] for s in rows),
                    "undefined": sum(s[f"{col}_undefined"] for s in rows),
                    "mean_width": float(np.mean(widths)) if widths else None,
                }
    return out


def _times(scale: float, x: float | None) -> float:
    return float("nan") if x is None else scale * x


SHORT = {"gaussian": "Gauss", "clopper_pearson": "CP", "cs": "CS"}


def print_table(summary: dict[str, dict[str, Any]], tot: dict[str, dict[str, Any]]) -> None:
    for scope in ("cumulative", "window"):
        for metric, unit, scale in (("acc", "pp", 100.0), ("cost", "$/10k", 1.0)):
            kinds = [k for k in INTERVALS if f"{metric}_{k}_n" in summary[f"{scope}/{LIVE}"]]
            print(
                f"\n{scope}, {'accuracy' if metric == 'acc' else 'USD per 10k queries'}: "
                f"seeds whose 95 % interval covered the truth; mean |error| and the "
                f"Gaussian interval's mean width ({unit})"
            )
            head = "".join(f" {SHORT[k]:>8}" for k in kinds)
            print(
                f"  {'policy':<24} {'labels':>6} {'truth':>8}{head} {'SNIPS':>7} {'IPS':>7}"
                f" {'Gauss width':>11}"
            )
            for key, s in summary.items():
                if not key.startswith(scope + "/"):
                    continue
                cells = "".join(
                    f" {s[f'{metric}_{k}_covered']:>5}/{s[f'{metric}_{k}_n']:<2}"
                    if f"{metric}_{k}_n" in s
                    else f" {'-':>8}"
                    for k in kinds
                )
                print(
                    f"  {key.split('/', 1)[1]:<24} {s['labels']:>6} "
                    f"{scale * s[f'true_{metric}']:>8.2f}{cells}"
                    f" {scale * s[f'{metric}_snips_mae']:>7.2f} {scale * s[f'{metric}_ips_mae']:>7.2f}"
                    f" {_times(scale, s[f'{metric}_gaussian_width']):>11.2f}"
                )
    print("\ncoverage over every (seed, target); the worst target's; mean width (pp, $/10k)")
    for key, t in tot.items():
        width = t["mean_width"]
        scale = 100 if "/acc/" in key else 1
        print(
            f"  {key:<32} {t['covered']:>4}/{t['n']:<4} {100 * t['rate']:6.1f} %"
            f"   worst {100 * t['worst_target']:5.1f} %"
            f"   width {'-' if width is None else f'{scale * width:7.2f}':>7}"
            f"   undefined {t['undefined']}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="overruling", choices=("overruling", "imdb", "arc"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--labels", type=int, default=2000, help="labelled decisions per seed")
    ap.add_argument("--p", type=float, default=0.05, help="the live policy's p")
    ap.add_argument("--epsilon", type=float, default=None, help="default: the config's")
    ap.add_argument("--window", type=int, default=1000, help="window_labels (10 blocks)")
    ap.add_argument(
        "--cs", default="all", choices=CS_MODES, help="targets with a confidence sequence"
    )
    ap.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV),
        help="default: $METALLM_DATA_DIR, else ../shared/data",
    )
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--json", default=None, help="write the figures to this path")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    cfg = builtin_config(args.dataset)
    emb = dataclasses.replace(cfg.embedder, cache_dir=str(Path(args.cache_dir) / "embeddings"))
    cfg = dataclasses.replace(cfg, embedder=emb)
    ds = load_dataset(args.dataset, args.data_dir)
    vectors = Embedder(cfg.embedder).embed_cached(list(ds.texts))
    empty = np.array([], dtype=np.int64)
    ex = Experiment(ds, vectors, Split(np.arange(len(ds)), empty, empty), cfg)
    # the dearest call in the data set: no cost is clipped
    ope_cfg = OPEConfig(
        ex.arm_names,
        cost_cap_usd=float(ex.cost_usd.max()),
        window_labels=args.window,
        confidence_sequence=args.cs,
    )
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(ex, args, ope_cfg, seed))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    summary = summarise(runs)
    tot = totals(summary)
    eps = args.epsilon if args.epsilon is not None else cfg.policy.epsilon
    print(
        f"{args.dataset}: {args.seeds} seeds × {args.labels} labels, live policy ε-greedy "
        f"ε = {eps} at p = {args.p}, cost cap ${ope_cfg.cost_cap_usd:.4g} per query, "
        f"window {args.window} labels ({time.perf_counter() - t0:.0f} s)"
    )
    update_ms = float(np.mean([r["update_ms"] for r in runs]))
    print(
        f"OffPolicyEvaluator.update: {update_ms:.3f} ms per label for {len(summary) // 2} "
        f"targets (confidence sequence: {args.cs})"
    )
    print_table(summary, tot)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "seeds": args.seeds,
                    "labels": args.labels,
                    "p": args.p,
                    "epsilon": eps,
                    "ope_config": ope_cfg.to_json(),
                    "policies": summary,
                    "coverage": tot,
                    "clipped_costs": sum(r["clipped_costs"] for r in runs),
                    "update_ms_per_label": update_ms,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
