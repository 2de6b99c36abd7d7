"""``metallm route``, ``learn`` and ``serve``: the stream workers."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bandit.errors import MetalLMError
from workers.cli.options import (
    CACHE_DIR_HELP,
    add_config_source,
    add_redis_options,
    routing_config,
    service_settings,
)
from workers.service.settings import DEFAULT_BATCH_SIZE, DEFAULT_REWARD_WAIT_S

ROLES = {"route": ("router",), "learn": ("learner",), "serve": ("router", "learner")}
ENV_EPILOG = (
    "Every setting can also come from the config file's [service] table or the environment: "
    "METALLM_<SETTING> (e.g. METALLM_MAX_IN_FLIGHT, METALLM_BUDGET_USD_PER_10K), REDIS_URL; "
    "the providers read OPENAI_API_KEY, OPENAI_BASE_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY, METALLM_REPLAY_URL, METALLM_OPENAI_TRANSPORT."
)


def register(sub: Any) -> None:
    for name, help_text, desc in (
        ("route", "run a router worker", "Read the queries stream in the 'routers' consumer group, "
         "embed and decide each batch, call the chosen LLMs and write the responses stream."),
        ("learn", "run the learner", "Read the feedback stream in the 'learners' group, join each "
         "label with its decision, update the policy and publish model snapshots."),
        ("serve", "run router and learner in one process", "Router and learner in one process "
         "(the embedded default)."),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help_text, description=desc + " First SIGTERM/SIGINT: "
                           "finish the work in flight, acknowledge, save the model. Second: exit at once. "
                           "SIGHUP: re-read --config and apply its arms and prices without a restart.",
                           epilog=ENV_EPILOG)  # fmt: skip
        _add_worker_options(p, ROLES[name])
        p.set_defaults(handler=cmd_worker)


def _add_worker_options(p: argparse.ArgumentParser, roles: tuple[str, ...]) -> None:
    add_config_source(p)
    add_redis_options(p)
    p.add_argument(
        "--consumer", help="consumer name in the group (default: random, unique per process)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics and the probes /healthz "
        "(event loop turning) and /readyz (Redis answers and a model is held) on this port (default: off)",
    )
    p.add_argument(
        "--model-dir", help="also write model snapshots here, and load the newest on start"
    )
    p.add_argument(
        "--model",
        type=Path,
        metavar="SNAPSHOT",
        help="start from this policy snapshot (metallm train --out); the deployment's own "
        "snapshot in Redis (or --model-dir) is taken instead when its version is at least as "
        "high. A snapshot trained for other arms than the config's is refused",
    )
    p.add_argument(
        "--migrate-arms",
        action="store_true",
        help="with --model: start from a snapshot trained for other arms anyway (arms kept keep "
        "what they learned, new arms start untrained; logged)",
    )
    p.add_argument(
        "--reward-wait-s",
        type=float,
        help=f"how long a decision waits for its label (default {DEFAULT_REWARD_WAIT_S})",
    )
    p.add_argument(
        "--budget-usd-per-10k",
        type=float,
        help="spend target, USD per 10,000 queries: the learner's pacing controller moves p to "
        "hold it (decoupled mode only; default: the config's [budget] table, else none)",
    )
    p.add_argument(
        "--budget-usd-per-hour",
        type=float,
        help="spend target of all routers together, USD per hour, held like --budget-usd-per-10k "
        "(the lower of the two binds) and exported as metallm_budget_usd_per_hour "
        "(default: the config's [budget] table, else none)",
    )
    p.add_argument(
        "--accuracy-floor",
        type=float,
        help="lowest acceptable router accuracy over labelled "
        "answers (0-1), exported as metallm_accuracy_floor for the accuracy alert (default 0 = none)",
    )
    if "router" in roles:
        p.add_argument(
            "--batch-size", type=int, help=f"queries per XREADGROUP (default {DEFAULT_BATCH_SIZE})"
        )
        p.add_argument(
            "--embed-in-process",
            dest="embedder_process",
            action="store_const",
            const=False,
            help="run the embedding model in a thread of the router instead of a child process "
            "of its own (default: a child process; setting embedder_process)",
        )
        p.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    if "learner" in roles:
        p.add_argument("--default-reward", type=float,
                       help="reward learned when no label comes in time (default: none)")  # fmt: skip


def cmd_worker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from workers.service.app import Service, run_service
    from workers.service.model_start import load_model

    cfg = routing_config(args, env)
    if args.migrate_arms and not args.model:
        raise MetalLMError("--migrate-arms needs --model SNAPSHOT: it migrates that snapshot")
    given = load_model(args.model, cfg, args.migrate_arms) if args.model else None
    service = Service(service_settings(args, env, cfg), cfg, roles=ROLES[args.command], env=env,
                      initial_policy=given, initial_name=f"--model {args.model}",
                      config_path=args.config)  # fmt: skip
    asyncio.run(run_service(service))
    return 0
