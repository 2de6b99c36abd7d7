"""``metallm evaluate`` and ``tune``: the learning core, offline, on recorded outcomes."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bandit.config import RoutingConfig
from bandit.datasets import make_split
from bandit.errors import MetalLMError
from bandit.pacing import check_pacing_mode
from bandit.policy import VW_EXPLORERS
from workers.cli.options import add_dataset_options, dataset, embed, routing_config

log = logging.getLogger("metallm")


def register(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="train, calibrate and evaluate the router on a recorded data set or your own file",
        description="Embed the queries of a bundled data set or of your own --data file "
        "(cached on disk), train the Vowpal Wabbit policy on the train split, calibrate p on "
        "validation and print, for the test split: every arm alone, the oracle, a random router, the router at several p and at the "
        "budget of each arm (both reward modes), AIQ, and an online replay.",
    )
    add_dataset_options(ev, data_file=True)
    ev.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    ev.add_argument("--model", type=Path, metavar="SNAPSHOT", help="instead: this snapshot's "
                    "greedy accuracy and cost on the test split at a few p, beside the warm start")  # fmt: skip
    ev.add_argument(
        "--plot", type=Path, help="write the cost–accuracy frontier as PNG to this file"
    )
    ev.add_argument(
        "--compare-explorers",
        nargs="*",
        metavar="EXPLORER",
        choices=VW_EXPLORERS,
        help="also replay online with Vowpal Wabbit's own explorers (paper mode, p = 0); "
        f"no names means all: {', '.join(VW_EXPLORERS)}",
    )
    ev.add_argument(
        "--budgets",
        nargs="+",
        type=float,
        metavar="SHARE",
        help="also pace a warm-started decoupled router online to each spend target, given as "
        "a share of the dearest arm's cost per query (e.g. 0.25 0.5 0.75), streaming "
        "validation + test in a seeded order; prints the spend error after the first 10%% "
        "and the accuracy against the offline router at the same cost",
    )
    ev.add_argument(
        "--price-change",
        metavar="ARM",
        help="with --budgets: also replay with ARM's price doubled halfway through, and count "
        "the queries until spend is back within 5%% of the target",
    )
    ev.add_argument(
        "--budget-seeds",
        type=int,
        default=1,
        metavar="N",
        help="with --budgets: replay each target in N seeded orders (seeds SEED..SEED+N-1) "
        "and report the mean and the worst (default 1)",
    )
    ev.add_argument(
        "--budget-passes",
        type=int,
        default=1,
        metavar="K",
        help="with --budgets: stream validation + test K times, each in its own seeded order "
        "(for small data sets; the router sees rows again) (default 1)",
    )

    ev.set_defaults(handler=cmd_evaluate)

    tu = sub.add_parser(
        "tune",
        help="pick learning rates, passes and word features without looking at test",
        description="Grid-search the policy's learning rate, warm-start passes and word features "
        "by the router's AIQ on the validation split, and the cold-start online learning rate by "
        "progressive accuracy over train+validation; prints every trial, best first. Put the "
        "winners in the [policy] table of the config.",
    )
    add_dataset_options(tu, data_file=True)
    tu.add_argument(
        "--cv",
        metavar="BUDGET_ARM",
        help="instead: cross-validate the warm start's learning rate × passes (5 folds × 2 "
        "repeats over train+validation; test is never read), scoring the out-of-fold "
        "cost-accuracy curve by AIQ, by its best accuracy within 60%% of BUDGET_ARM's cost, "
        "and by the budget rule at BUDGET_ARM's cost",
    )

    tu.set_defaults(handler=cmd_tune)


def cmd_evaluate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from bandit.evaluation import evaluate
    from workers.harness.report import print_report, write_json, write_plot

    if args.model:
        from workers.cli.train import cmd_evaluate_model

        return cmd_evaluate_model(args, env)
    ds = dataset(args, env) if args.data else None  # a --data file may make the config
    cfg = routing_config(args, env, ds)
    _check_budget_options(args, cfg)  # before the data set is embedded
    if ds is None:
        ds = dataset(args, env)
    vectors = embed(ds, cfg)
    t0 = time.perf_counter()
    explorers = args.compare_explorers
    if explorers is not None and not explorers:
        explorers = list(VW_EXPLORERS)
    report = evaluate(
        ds, vectors, make_split(ds, args.seed), cfg, seed=args.seed, explorers=explorers or (),
        budgets=args.budgets or (), price_change_arm=args.price_change,
        budget_seeds=range(args.seed, args.seed + args.budget_seeds),
        budget_passes=args.budget_passes,
    )  # fmt: skip
    log.info("evaluation done in %.1f s", time.perf_counter() - t0)
    print_report(report, sys.stdout)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _check_budget_options(args: argparse.Namespace, cfg: RoutingConfig) -> None:
    if args.price_change and not args.budgets:
        raise MetalLMError("--price-change needs --budgets: the price change is replayed under a budget")  # fmt: skip
    if args.budgets:
        check_pacing_mode(cfg.policy.mode)
        if args.price_change:
            cfg.arms.index(args.price_change)  # an unknown arm names the valid ones
        bad = [s for s in args.budgets if not s > 0]
        if bad or args.budget_seeds < 1 or args.budget_passes < 1:
            raise MetalLMError(
                f"--budgets {args.budgets} must be shares > 0 of the dearest arm's cost, and "
                f"--budget-seeds {args.budget_seeds}, --budget-passes {args.budget_passes} ≥ 1"
            )


def cmd_tune(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from bandit.evaluation import Experiment
    from bandit.tuning import tune, tune_online

    ds = dataset(args, env)
    cfg = routing_config(args, env, ds)
    ex = Experiment(ds, embed(ds, cfg), make_split(ds, args.seed), cfg)
    if args.cv:
        return _print_cross_validation(ex, cfg, args.cv)
    print("warm start (full information on train), by the router's AIQ on validation:")
    print(f"{'learning_rate':>13} {'passes':>6} {'words':>5} {'val AIQ':>8}")
    for r in tune(ex, cfg.policy, seed=args.seed):
        print(
            f"{r.learning_rate:>13g} {r.warm_start_passes:>6} {r.word_features!s:>5} {r.val_aiq:>8.4f}"
        )
    eps = cfg.policy.epsilon
    print(f"\ncold start, ε-greedy (ε = {eps:g}, p = 0), by progressive accuracy on train+val:")
    print(f"{'online_learning_rate':>20} {'progressive acc':>15} {'USD/10k':>8}")
    for o in tune_online(ex, cfg.policy, seed=args.seed):
        print(
            f"{o.online_learning_rate:>20g} {o.progressive_acc:>15.4f} {o.progressive_cost_per_10k:>8.3f}"
        )
    return 0


def _print_cross_validation(ex: Any, cfg: RoutingConfig, budget_arm: str) -> int:
    from bandit.tuning import CV_BUDGET_SHARE, CV_FOLDS, CV_REPEATS, cross_validate

    rows = len(ex.split.train) + len(ex.split.val)
    print(f"warm start, {CV_FOLDS}-fold cross-validation × {CV_REPEATS} over train+validation "
          f"({rows} rows), words {cfg.policy.word_features}; budget arm {budget_arm}:")  # fmt: skip
    share = f"acc ≤{CV_BUDGET_SHARE:.0%} cost"
    print(
        f"{'learning_rate':>13} {'passes':>6} {'CV AIQ':>7} {share:>15} {'budget rule: acc':>17} {'cost share':>10}"
    )
    for r in cross_validate(ex, cfg.policy, budget_arm):
        print(f"{r.learning_rate:>13g} {r.warm_start_passes:>6} {r.aiq:>7.4f} {r.acc_within_share:>15.4f} "
              f"{r.budget_acc:>17.4f} {r.budget_cost_share:>10.2f}")  # fmt: skip
    return 0
