"""The ``metallm`` command line: one module per group of commands.

- ``service``: route, learn, serve (the stream workers);
- ``client``: submit, feedback, tail (what an application does with the streams);
- ``local``: demo, produce, replay-llm (the harness on one machine);
- ``offline``: evaluate, tune (the learning core on recorded outcomes);
- ``train``: train, a policy snapshot for ``serve --model``; ``export``: the decision log;
- ``report``: the learner's off-policy estimates (router against each arm);
- ``shadow``: candidate policies evaluated beside the live one, and their promotion.

``main`` reads the environment once and hands it to the command; settings come from the
config file, then the environment, then options. A bad setting is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import redis.exceptions

from bandit.errors import MetalLMError
from workers.cli import client, export, local, offline, report, service, shadow, train

# What redis-py raises when Redis goes away (not the builtin ConnectionError); the
# service's reconnect module, which says the same, imports far more than the CLI needs.
REDIS_OUTAGE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

GROUPS = (service, client, local, offline, train, export, report, shadow)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metallm",
        description="metallm routes each query to the LLM with the best expected reward a − p·c "
        "(MetaLLM), learning online which one that is. Run the service (serve, or route and "
        "learn), talk to it (submit, feedback, tail), try it on one machine (demo, produce, "
        "replay-llm), or study the learning core offline (evaluate, tune). Each command has "
        "its own --help.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # The model ships in a package: never ask the hub (it hangs without internet).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = dict(os.environ)
    try:
        return int(args.handler(args, env))
    except MetalLMError as exc:
        print(f"metallm: error: {exc}", file=sys.stderr)
        return 2
    except REDIS_OUTAGE as exc:  # an outage after the command's first contact with Redis
        print(f"metallm: error: lost Redis: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError) as exc:
        print(f"metallm: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
