"""``metallm submit``, ``feedback`` and ``tail``: what an application does with the streams."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bandit.config import RoutingConfig, builtin_config, load_config
from bandit.datasets import LOADERS
from bandit.errors import MetalLMError
from workers.cli.options import CONFIG_HELP, add_redis_options, service_settings
from workers.service.messages import (
    BadFeedback,
    BadQuery,
    Feedback,
    check_feedback_label,
    parse_feedback,
    parse_query,
    show,
)
from workers.service.settings import Keys


def register(sub: Any) -> None:
    submit = sub.add_parser("submit", help="send queries (JSON lines) to the queries stream",
                            description="Read JSON objects, one per line, with 'id' and 'text' (and "
                            "optionally 'task', 'labels', 'meta') from FILE or stdin, check each as the "
                            "router does (sizes from max_text_chars, max_labels, max_label_chars), and "
                            "XADD them; nothing is sent when one is refused (exit status 2).")  # fmt: skip
    add_redis_options(submit)
    src = submit.add_mutually_exclusive_group()
    src.add_argument(
        "--config", help=f"{CONFIG_HELP}: also check 'task' and take [service] limits from it"
    )
    src.add_argument("--dataset", choices=sorted(LOADERS), help="check 'task' against this data set's built-in config")  # fmt: skip
    submit.add_argument("file", nargs="?", default="-", help="JSONL file (default: stdin)")
    submit.set_defaults(handler=cmd_submit)

    fb = sub.add_parser("feedback", help="send a label or reward for an answered query",
                        description="XADD one feedback entry (id and label, or id and reward in [0, 1]), "
                        "or JSON lines of them from --file. Each is checked as the learner does: the "
                        "query's decision record must exist and be answered, and a label must be one "
                        "of the query's labels (matched case-insensitively, ignoring surrounding "
                        "whitespace); nothing is sent when one is refused (exit status 2).")  # fmt: skip
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


def read_jsonl(path: str) -> list[tuple[str, dict[str, Any]]]:
    """The JSON objects of a JSON-lines file ('-': stdin), each with where it was
    ("FILE line N")."""
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        lines = text.decode("utf-8").splitlines()
    except OSError as exc:
        raise MetalLMError(f"cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MetalLMError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                reason = exc if isinstance(exc, ValueError) else "nested too deeply"
                raise MetalLMError(f"{name} line {n}: not JSON: {reason}") from None
            if not isinstance(obj, dict):
                raise MetalLMError(f"{name} line {n}: expected a JSON object")
            out.append((f"{name} line {n}", obj))
    return out


def _flat(obj: dict[str, Any]) -> dict[str, str]:
    """Stream fields: strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items() if v is not None}


def _task_config(args: argparse.Namespace) -> RoutingConfig | None:
    if args.config:
        return load_config(args.config)
    return builtin_config(args.dataset) if args.dataset else None


def cmd_submit(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    items = read_jsonl(args.file)
    cfg = _task_config(args)
    settings = service_settings(args, env, cfg)
    queries = []
    for where, obj in items:
        fields = _flat(obj)
        try:
            parse_query(fields, settings, cfg.task if cfg else None)
        except BadQuery as exc:
            raise MetalLMError(f"{where}: {exc}") from None
        queries.append(fields)
    stream = Keys(settings.prefix).queries
    with _redis(args, env) as r, r.pipeline(transaction=False) as pipe:
        for fields in queries:
            pipe.xadd(stream, dict(fields))
        pipe.execute()
    print(f"submitted {len(queries)} queries to {stream}")
    return 0


def cmd_feedback(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.file:
        items = read_jsonl(args.file)
    elif args.id and (args.label is not None or args.reward is not None):
        items = [(f"--id {args.id}", {"id": args.id, "label": args.label, "reward": args.reward})]
    else:
        raise MetalLMError("give --id with --label or --reward, or --file with JSON lines")
    settings = service_settings(args, env)
    keys = Keys(settings.prefix)
    checked: list[tuple[str, dict[str, str], Feedback]] = []
    for where, obj in items:
        fields = _flat(obj)
        try:
            checked.append((where, fields, parse_feedback(fields, settings)))
        except BadFeedback as exc:
            raise MetalLMError(f"{where}: {exc}") from None
    with _redis(args, env) as r:
        # What the learner will join each one with: its query's label set, and whether the
        # query was answered (a record without 'label' is not).
        with r.pipeline(transaction=False) as pipe:
            for _, _, fb in checked:
                pipe.hmget(keys.decision(fb.id), ["labels", "label"])
            records = pipe.execute()
        for (where, _, fb), (labels, answered) in zip(checked, records, strict=True):
            if labels is None and answered is None:
                raise MetalLMError(
                    f"{where}: no decision record for query {show(fb.id)} under prefix "
                    f"{settings.prefix!r} (never routed, or older than reward_wait_s): the "
                    "learner would count this feedback unknown"
                )
            if answered is None:
                raise MetalLMError(
                    f"{where}: query {show(fb.id)} is not answered yet: the learner would count "
                    "this feedback unknown; send it after the response"
                )
            try:
                check_feedback_label(fb, None if labels is None else labels.decode())
            except BadFeedback as exc:
                raise MetalLMError(f"{where}: {exc}") from None
        with r.pipeline(transaction=False) as pipe:
            for _, fields, _ in checked:
                pipe.xadd(keys.feedback, dict(fields))
            pipe.execute()
    print(f"sent {len(checked)} feedback entries to {keys.feedback}")
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
