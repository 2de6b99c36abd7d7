"""``metallm train``: a policy snapshot the service starts from (``serve --model``), and
``metallm evaluate --model``: a snapshot beside the warm-started policy on the test split."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bandit.errors import MetalLMError
from workers.cli.options import add_dataset_options, dataset, embed, routing_config

COMPARE_P = (0.0, 0.02, 0.05, 0.1)  # p of `evaluate --model`'s table


def register(sub: Any) -> None:
    tr = sub.add_parser(
        "train",
        help="train a policy snapshot on recorded outcomes, for serve/route/learn --model",
        description="Full information (every arm's outcome per query): the warm start on the "
        "train split, with the learning rate, passes and word features picked by the router's "
        "AIQ on validation (as `metallm tune`; --no-tune keeps the config's). Logged bandit "
        "feedback (an exported service log, with `prob`): one off-policy pass over the log, "
        "each decision importance-weighted by its logged probability. Writes the snapshot "
        "(arm names, costs and settings in its header) to --out.",
    )
    add_dataset_options(tr, data_file=True)
    tr.add_argument("--out", type=Path, required=True, metavar="SNAPSHOT", help="file to write")
    tr.add_argument("--no-tune", action="store_true",
                    help="use the config's [policy] settings as they are (no search on validation)")  # fmt: skip
    tr.add_argument("--passes", type=int, default=1,
                    help="with a logged file: passes over the log (default 1, as the service learned it)")  # fmt: skip
    tr.add_argument("--max-weight", type=float, metavar="W", help="with a logged file: cap each "
                    "row's importance weight 1 / prob at W (1 = unweighted, inf = no cap; default: "
                    "no cap, 10 or 1, whichever cross-validates best)")  # fmt: skip
    tr.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from bandit.datasets import make_split
    from bandit.fitting import fit

    if args.passes < 1 or (args.max_weight is not None and not args.max_weight >= 1):
        raise MetalLMError(f"--passes {args.passes} and --max-weight {args.max_weight} must be ≥ 1")
    ds = dataset(args, env)
    cfg = routing_config(args, env, ds)  # with --data and no --config: the file's arms
    vectors = embed(ds, cfg)
    # A log has one arm per query: no row can be scored on every arm, so nothing to split.
    split = make_split(ds, args.seed) if ds.logged_prob is None else None
    fitted = fit(ds, vectors, split, cfg, tune_settings=not args.no_tune, seed=args.seed,
                 passes=args.passes, max_weight=args.max_weight)  # fmt: skip
    data = fitted.policy.to_bytes()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    pol = fitted.policy
    print(f"trained on {ds.name}: {fitted.rows} queries, {fitted.kind}, {fitted.updates} updates")
    print(f"arms ({pol.n_arms}): {', '.join(pol.arm_names)}")
    how = ("the config's" if not fitted.tuned else "tuned on validation" if split
           else "tuned by 5-fold cross-validation on the log")  # fmt: skip
    print(f"settings ({how}): " + ", ".join(f"{k} {v}" for k, v in fitted.settings.items()))
    if fitted.figures:
        where = f"on validation ({len(split.val)} queries)" if split else "on the log"
        print(f"{where}:{'':>4}{'accuracy':>10} {'USD/10k':>9}")
        for label, (acc, cost) in fitted.figures.items():
            print(f"  {label:<56} {acc:>8.2%} {cost:>9.3f}")
    if fitted.val_aiq is not None:
        print(f"  router AIQ on validation: {fitted.val_aiq:.4f}")
    if fitted.val_log_loss is not None:
        print(f"  importance-weighted log loss, 5-fold cross-validated: {fitted.val_log_loss:.4f}")
    print(f"wrote {args.out} (model version {pol.version}, {len(data):,} bytes); start from it "
          f"with: metallm serve --config FILE --model {args.out}")  # fmt: skip
    return 0


def cmd_evaluate_model(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``evaluate --model SNAPSHOT``: the snapshot's greedy choices on the test split at a few
    p, beside the policy warm-started on the train split with the config (full information)."""
    from bandit.datasets import make_split
    from bandit.evaluation import Experiment
    from workers.service.model_start import load_model

    ds = dataset(args, env)
    cfg = routing_config(args, env, ds)
    given = load_model(args.model, cfg)
    vectors = embed(ds, cfg)
    split = make_split(ds, args.seed)
    ex = Experiment(ds, vectors, split, cfg)
    warm = ex.warm_policy(cfg.policy, args.seed)
    test = split.test
    rows = []
    for name, pol in (("warm start (full information on train)", warm), (f"--model {args.model}", given)):  # fmt: skip
        lines = pol.features.shared_batch(vectors[test], list(ds.texts[test]))
        cols = np.array([ds.arms.index(n) for n in pol.arm_names])
        for p in COMPARE_P if pol.config.mode == "decoupled" else (pol.config.p,):
            arms = cols[[d.arm for d in pol.decide_lines(lines, p=p, greedy=True)]]
            acc = float(ds.correct[test, arms].mean())
            cost = float(ds.cost_usd[test, arms].mean() * 10_000)
            rows.append({"policy": name, "p": p, "acc": acc, "cost_per_10k": cost})
    print(f"{ds.name}: test split, {len(test)} queries, greedy (no exploration)")
    print(f"{'policy':<48} {'p':>5} {'accuracy':>9} {'USD/10k':>9}")
    for r in rows:
        print(f"{r['policy']:<48} {r['p']:>5g} {r['acc']:>9.2%} {r['cost_per_10k']:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps({"dataset": ds.name, "test_queries": len(test), "rows": rows}, indent=2))  # fmt: skip
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
