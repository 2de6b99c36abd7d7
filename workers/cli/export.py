"""``metallm export``: the service's decision log as the long import format (JSON lines)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers.cli.options import add_redis_options, service_settings


def register(sub: Any) -> None:
    ex = sub.add_parser(
        "export",
        help="write the service's decision log as JSON lines that train and evaluate read",
        description="Read the decision log the learner keeps in Redis ({prefix}decisions: each "
        "decision joined with its label or reward) and write one JSON line per decision in the "
        "long import format: id, text, arm (the chosen one), correct or score, cost_usd, label, "
        "answer, and the logged bandit feedback prob, pmf, p, model_version, time, reward. "
        "`metallm train --data FILE` learns from it importance-weighted by prob.",
    )
    add_redis_options(ex)
    ex.add_argument(
        "--since",
        metavar="TIME",
        help="only decisions made at TIME or later: unix seconds, an ISO time (UTC unless it "
        "names its zone) or a span back from now such as 90m, 24h, 7d (default: all kept)",
    )
    ex.add_argument("--out", type=Path, help="file to write (default: standard output)")
    ex.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from workers.service.decision_log import export_log, parse_since
    from workers.service.reconnect import check_reachable

    s = service_settings(args, env)
    since = parse_since(args.since) if args.since else None
    check_reachable(s.redis_url)
    if args.out:
        with args.out.open("w", encoding="utf-8") as out:
            n = asyncio.run(export_log(s.redis_url, s.prefix, out, since))
        print(f"exported {n} decisions from {s.prefix}decisions to {args.out}", file=sys.stderr)
    else:
        n = asyncio.run(export_log(s.redis_url, s.prefix, sys.stdout, since))
        print(f"exported {n} decisions from {s.prefix}decisions", file=sys.stderr)
    if n == 0 and since is None:
        print(f"{s.prefix}decisions is empty: the learner keeps the decision log only with "
              "decision_log_maxlen > 0 (METALLM_DECISION_LOG_MAXLEN or [service]; off by "
              "default), from then on", file=sys.stderr)  # fmt: skip
    return 0
