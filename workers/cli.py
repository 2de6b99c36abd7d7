"""The ``metallm`` command line.

Settings come from options, then environment variables (METALLM_DATA_DIR,
METALLM_CACHE_DIR), then defaults; bad settings are reported in one line, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bandit.config import RoutingConfig, builtin_config, load_config
from bandit.datasets import DATA_DIR_ENV, LOADERS, Dataset, load_dataset, make_split
from bandit.embedder import Embedder
from bandit.errors import MetalLMError
from bandit.policy import VW_EXPLORERS

log = logging.getLogger("metallm")
CACHE_DIR_ENV = "METALLM_CACHE_DIR"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "metallm"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", required=True, choices=sorted(LOADERS), help="recorded data set to use"
    )
    p.add_argument(
        "--data-dir",
        help=f"folder with the recorded data sets (default: ${DATA_DIR_ENV}, else ../shared/data)",
    )
    p.add_argument(
        "--config",
        help="TOML file with [task], [policy], [embedder] and [[arms]] "
        "(default: the built-in config of the data set, bandit/configs/NAME.toml)",
    )
    p.add_argument(
        "--cache-dir",
        help=f"where embeddings of data sets are cached (default: ${CACHE_DIR_ENV}, else {DEFAULT_CACHE_DIR})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, training order and sampling (default 0)",
    )
    p.add_argument(
        "--limit", type=int, help="use a seeded random subset of this many queries (for quick runs)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metallm",
        description="metallm routes each query to the LLM with the best expected reward a − p·c "
        "(MetaLLM). These commands train and evaluate the router offline on recorded outcomes of "
        "real LLMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = sub.add_parser(
        "evaluate",
        help="train, calibrate and evaluate the router on a recorded data set",
        description="Embed the data set's queries (cached on disk), train the Vowpal Wabbit "
        "policy on the train split, calibrate p on validation and print, for the test split: "
        "every arm alone, the oracle, a random router, the router at several p and at the "
        "budget of each arm (both reward modes), AIQ, and an online replay.",
    )
    _add_common(ev)
    ev.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
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

    tu = sub.add_parser(
        "tune",
        help="pick learning rates, passes and word features without looking at test",
        description="Grid-search the policy's learning rate, warm-start passes and word features "
        "by the router's AIQ on the validation split, and the cold-start online learning rate by "
        "progressive accuracy over train+validation; prints every trial, best first. Put the "
        "winners in the [policy] table of the config.",
    )
    _add_common(tu)

    rp = sub.add_parser(
        "replay-llm",
        help="serve recorded answers of real LLMs over the OpenAI and Bedrock protocols",
        description="A local LLM stand-in: answers POST /v1/chat/completions (OpenAI) and "
        "POST /model/{modelId}/converse (Bedrock Runtime) with what that real model answered "
        "to the same query in a recorded data set, with token usage that reproduces the "
        "recorded cost under the arm's prices. Runs until SIGTERM or Ctrl-C.",
    )
    _add_common(rp)
    rp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    rp.add_argument("--port", type=int, default=8089, help="port to listen on (default 8089)")
    rp.add_argument("--latency-ms", type=float, default=0.0, help="mean injected latency (ms)")
    rp.add_argument("--latency-sd-ms", type=float, default=0.0, help="its standard deviation (ms)")
    rp.add_argument(
        "--error-rate", type=float, default=0.0, help="share of requests answered with HTTP 503"
    )
    return parser


def _config(args: argparse.Namespace) -> RoutingConfig:
    cfg = load_config(args.config) if args.config else builtin_config(args.dataset)
    cache = args.cache_dir or os.environ.get(CACHE_DIR_ENV) or str(DEFAULT_CACHE_DIR)
    return dataclasses.replace(
        cfg, embedder=dataclasses.replace(cfg.embedder, cache_dir=str(Path(cache) / "embeddings"))
    )


def _dataset(args: argparse.Namespace) -> Dataset:
    ds = load_dataset(args.dataset, args.data_dir)
    if args.limit:
        if not 10 <= args.limit <= len(ds):
            raise MetalLMError(
                f"--limit {args.limit} must be between 10 and {len(ds)} (the data set's size)"
            )
        ds = ds.subset(np.sort(np.random.default_rng(args.seed).permutation(len(ds))[: args.limit]))
    return ds


def _embed(ds: Dataset, cfg: RoutingConfig) -> np.ndarray:
    t0 = time.perf_counter()
    vectors = Embedder(cfg.embedder).embed_cached(list(ds.texts), progress=True)
    log.info("embeddings of %d queries ready in %.1f s", len(ds), time.perf_counter() - t0)
    return vectors


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bandit.evaluation import evaluate
    from workers.report import print_report, write_json, write_plot

    cfg = _config(args)
    ds = _dataset(args)
    vectors = _embed(ds, cfg)
    t0 = time.perf_counter()
    explorers = args.compare_explorers
    if explorers is not None and not explorers:
        explorers = list(VW_EXPLORERS)
    report = evaluate(
        ds, vectors, make_split(ds, args.seed), cfg, seed=args.seed, explorers=explorers or ()
    )
    log.info("evaluation done in %.1f s", time.perf_counter() - t0)
    print_report(report, sys.stdout)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from bandit.evaluation import Experiment
    from bandit.tuning import tune, tune_online

    cfg = _config(args)
    ds = _dataset(args)
    ex = Experiment(ds, _embed(ds, cfg), make_split(ds, args.seed), cfg)
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


def cmd_replay_llm(args: argparse.Namespace) -> int:
    import signal

    from workers.replay_server import Faults, ReplayBook, ReplayServer

    cfg = load_config(args.config) if args.config else builtin_config(args.dataset)
    faults = Faults(args.latency_ms, args.latency_sd_ms, args.error_rate, args.seed)
    server = ReplayServer(ReplayBook(_dataset(args), cfg), faults, args.host, args.port)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(
        f"replay-llm: {args.dataset} on {server.url} (OpenAI base_url {server.url}/v1)", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "tune": cmd_tune, "replay-llm": cmd_replay_llm}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return COMMANDS[args.command](args)
    except MetalLMError as exc:
        print(f"metallm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
