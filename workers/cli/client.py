"""``metallm submit``, ``feedback`` and ``tail``: what an application does with the streams."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bandit.errors import MetalLMError
from workers.cli.options import add_redis_options, service_settings
from workers.service.settings import Keys


def register(sub: Any) -> None:
    submit = sub.add_parser("submit", help="send queries (JSON lines) to the queries stream",
                            description="Read JSON objects, one per line, with 'id' and 'text' (and "
                            "optionally 'task', 'labels', 'meta') from FILE or stdin, and XADD them.")  # fmt: skip
    add_redis_options(submit)
    submit.add_argument("file", nargs="?", default="-", help="JSONL file (default: stdin)")
    submit.set_defaults(handler=cmd_submit)

    fb = sub.add_parser("feedback", help="send a label or reward for an answered query",
                        description="XADD one feedback entry (id and label, or id and reward in [0, 1]), "
                        "or JSON lines of them from --file.")  # fmt: skip
    add_redis_options(fb)
    fb.add_argument("--id", help="the query id")
    group = fb.add_mutually_exclusive_group()
    group.add_argument("--label", help="the true label")
    group.add_argument("--reward", type=float, help="an explicit reward in [0, 1]")
    fb.add_argument("--file", help="JSONL of {id, label} or {id, reward} ('-' for stdin)")
    fb.set_defaults(handler=cmd_feedback)

    tail = sub.add_parser("tail", help="follow the responses stream", description="Print responses as JSON lines.")  # fmt: skip
    add_redis_options(tail)
    tail.add_argument("--from-start", action="store_true", help="start at the first response, not the next")  # fmt: skip
    tail.add_argument("--count", type=int, help="exit after this many responses")
    tail.set_defaults(handler=cmd_tail)


@contextmanager
def _redis(args: argparse.Namespace, env: Mapping[str, str], **kw: Any) -> Iterator[Any]:
    """A client on the Redis the settings name, closed on the way out."""
    import redis

    from workers.service.reconnect import check_reachable

    url = service_settings(args, env).redis_url
    check_reachable(url)  # one line, not a traceback, for a wrong URL or a Redis not up
    client = redis.Redis.from_url(url, **kw)
    try:
        yield client
    finally:
        client.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
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
    """Stream fields: strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items() if v is not None}


def cmd_submit(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    items = read_jsonl(args.file)
    for n, obj in enumerate(items, 1):
        if not obj.get("id") or not str(obj.get("text", "")).strip():
            raise MetalLMError(f"query {n} needs non-empty 'id' and 'text'")
    stream = Keys(service_settings(args, env).prefix).queries
    with _redis(args, env) as r, r.pipeline(transaction=False) as pipe:
        for obj in items:
            pipe.xadd(stream, _flat(obj))
        pipe.execute()
    print(f"submitted {len(items)} queries to {stream}")
    return 0


def cmd_feedback(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.file:
        items = read_jsonl(args.file)
    elif args.id and (args.label is not None or args.reward is not None):
        items = [{"id": args.id, "label": args.label, "reward": args.reward}]
    else:
        raise MetalLMError("give --id with --label or --reward, or --file with JSON lines")
    stream = Keys(service_settings(args, env).prefix).feedback
    with _redis(args, env) as r, r.pipeline(transaction=False) as pipe:
        for obj in items:
            pipe.xadd(stream, _flat(obj))
        pipe.execute()
    print(f"sent {len(items)} feedback entries to {stream}")
    return 0


def cmd_tail(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    stream = Keys(service_settings(args, env).prefix).responses
    last, seen = ("0-0" if args.from_start else "$"), 0
    with _redis(args, env, decode_responses=True) as r:
        while args.count is None or seen < args.count:
            reply: Any = r.xread({stream: last}, count=100, block=1000)
            for _, entries in reply or []:
                for eid, fields in entries:
                    last = eid
                    print(json.dumps(fields), flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
    return 0
