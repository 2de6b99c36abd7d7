"""The live check of deploy/: the production Prometheus config and rules against a running demo.

A Redis 7 of its own, ``metallm demo`` with its router and learner metrics endpoints, faults
injected (LLM errors, bad queries), a budget below its spend and an accuracy floor above its
accuracy, and a Prometheus of its own (the production scrape config with static targets, the
production rules) on free ports. Through Prometheus's HTTP API every alert rule and every
dashboard query must evaluate without error, every dashboard query must return a finite
value, the rules must be healthy, the fault panels must show the faults, and the alerts those
faults should raise must have data while the others stay quiet. Needs ``prometheus``,
``promtool`` and ``/usr/bin/redis-server``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bandit.errors import ConfigError
from workers.harness.deploy_checks import Report, dashboard_targets, rules, run

JOBS = ("metallm-router", "metallm-learner")
# The live run injects these faults; these alerts must then have data, those stay quiet.
# The budget per hour is below even the cheapest arm's spend at the demo's rate: the pacing
# controller holds p at p_max and spend stays off its target.
SHOULD_FIRE = ("MetallmDeadLetters", "MetallmProviderErrorRateHigh", "MetallmSpendAboveBudget",
               "MetallmSpendOffTarget", "MetallmAccuracyLow")  # fmt: skip
SHOULD_BE_QUIET = ("MetallmWorkerDown", "MetallmLearnerNotSingle", "MetallmModelStale",
                   "MetallmFeedbackNotJoining", "MetallmQueriesFailing", "MetallmArmDrift")  # fmt: skip
FAULT_PANELS = ("Fallbacks per arm", "Provider errors per arm and kind",
                "Dead letters (last hour) and failed queries")  # fmt: skip
DEFAULT_RATE_QPS = 6.0
DEFAULT_ERROR_RATE = 0.3
# Paced: the controller routes to the cheapest arm (~1.5 USD per hour at 6 q/s),
# and the alert's 30-minute rate over a run of a minute or two is a small share of that.
DEFAULT_BUDGET_USD_PER_HOUR = 0.005
DEFAULT_ACCURACY_FLOOR = 0.99
DEFAULT_MIN_LABELS = 80
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class LiveOptions:
    """How the live run drives the demo.

    rate: demo queries per second; limit: demo queries (None: the 432 of overruling's test
    split); error_rate: share of LLM calls the replay server fails; budget: USD per hour given
    to the demo, below its spend (paced: p goes to p_max, the shortfall shows); floor: accuracy floor given to the demo, above its accuracy;
    min_labels: labels learned before evaluating; timeout_s: limit of each wait, seconds.
    """

    rate: float = DEFAULT_RATE_QPS
    limit: int | None = None
    error_rate: float = DEFAULT_ERROR_RATE
    budget: float = DEFAULT_BUDGET_USD_PER_HOUR
    floor: float = DEFAULT_ACCURACY_FLOOR
    min_labels: int = DEFAULT_MIN_LABELS
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("rate", "budget", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("error_rate", "floor"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(
                f"limit must be >= 1 (or unset for the whole split), got {self.limit}"
            )
        if self.min_labels < 0:
            raise ConfigError(f"min_labels must be >= 0, got {self.min_labels}")


class Prometheus:
    """Prometheus's HTTP API at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as resp:
            return json.load(resp)

    def query(self, expr: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(error or None, result vector)."""
        try:
            body = self.api("query", query=expr)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {json.load(exc).get('error')}", []
        if body["status"] != "success":
            return body.get("error", "error"), []
        data = body["data"]
        result = data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]
        return None, result


def finite(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


@contextlib.contextmanager
def process(cmd: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` running with its output in ``log``; terminated (then killed) on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port_pair() -> int:
    """P with P and P + 1 free on all addresses (the demo's router and learner), below the
    ephemeral range, where an outgoing connection could take P + 1 before the learner binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low - 1)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("0.0.0.0", port))
                b.bind(("0.0.0.0", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free consecutive ports below the ephemeral range")


def _seconds_until(cond: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``cond()`` held, or None when it did not within ``timeout_s``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            return None
        time.sleep(0.5)
    return time.monotonic() - t0


def wait_until(
    what: str, cond: Callable[[], bool], timeout_s: float, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for p in procs:
            if p.poll() is not None:
                prog = str(p.args[0]) if isinstance(p.args, list) else str(p.args)
                raise RuntimeError(f"{what}: {prog} exited with status {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def prometheus_config(deploy: Path, tmp: Path, metrics_port: int, prom_port: int) -> Path:
    """The production scrape config and rules, with the demo's endpoints as static targets."""
    cfg = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(deploy / "prometheus" / r) for r in cfg["rule_files"]]
    targets = {
        "metallm-router": metrics_port,
        "metallm-learner": metrics_port + 1,
        "prometheus": prom_port,
    }
    jobs = {j["job_name"] for j in cfg["scrape_configs"]}
    if not set(JOBS) <= jobs:
        raise RuntimeError(f"prometheus.yml lacks the jobs {JOBS}")
    for job in cfg["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_live(rep: Report, deploy: Path, opts: LiveOptions) -> None:
    """The whole live run; logs stay in a temporary directory when anything failed."""
    from workers.harness.demo import free_port

    tmp = Path(tempfile.mkdtemp(prefix="metallm-observability-"))
    redis_port, prom_port = free_port(), free_port()
    metrics_port = free_port_pair()
    config = prometheus_config(deploy, tmp, metrics_port, prom_port)
    res = run(["promtool", "check", "config", str(config)])
    rep.check(res.returncode == 0, "promtool check config of the check's Prometheus (production jobs, static targets)",
              res.stdout + res.stderr)  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")
    demo_env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "METALLM_BUDGET_USD_PER_HOUR": str(opts.budget), "METALLM_ACCURACY_FLOOR": str(opts.floor)}  # fmt: skip
    demo_cmd = [str(Path(sys.executable).parent / "metallm"), "demo", "--dataset", "overruling", "--rate", str(opts.rate),
                "--metrics-port", str(metrics_port), "--llm-error-rate", str(opts.error_rate), "--bad-queries", "3"]  # fmt: skip
    if opts.limit:
        demo_cmd += ["--limit", str(opts.limit)]
    rep.note(f"live: redis-server :{redis_port}, demo metrics :{metrics_port}/:{metrics_port + 1}, "
             f"prometheus :{prom_port}, logs in {tmp}")  # fmt: skip
    redis_cmd = ["/usr/bin/redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
    prom_cmd = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]  # fmt: skip
    with (
        process(redis_cmd, tmp / "redis.log"),
        process(prom_cmd, tmp / "prometheus.log") as prom_proc,
    ):
        wait_until("prometheus ready", lambda: _http_ok(f"{prom.url}/-/ready"), 60, [prom_proc])
        time.sleep(0.5)
        with process(demo_cmd, tmp / "demo.log", env=demo_env) as demo:
            _run_against_demo(rep, deploy, opts, prom, prom_proc, demo, metrics_port)
            log = (tmp / "demo.log").read_text(errors="replace")
            rc = demo.returncode
            rep.check(rc == 0 and "metallm router" in log, "the demo ran to its report",
                      f"exit {rc}; last lines: {' | '.join(log.splitlines()[-3:])}")  # fmt: skip
            summary = [
                ln
                for ln in log.splitlines()
                if ln.startswith(("metallm demo —", "  metallm router"))
            ]
            rep.note("\n".join(f"      {ln.strip()}" for ln in summary))
            check_workers_gone(rep, deploy, prom, [prom_proc])
    shutil.rmtree(tmp, ignore_errors=True) if not rep.failures else rep.note(f"logs kept in {tmp}")


def _run_against_demo(
    rep: Report,
    deploy: Path,
    opts: LiveOptions,
    prom: Prometheus,
    prom_proc: subprocess.Popen[bytes],
    demo: subprocess.Popen[bytes],
    metrics_port: int,
) -> None:
    """From the first scrape to the demo's exit: probes, then every rule and query."""
    procs = [prom_proc, demo]

    def up() -> bool:
        return len(finite(prom.query('up{job=~"metallm-.*"} == 1')[1])) == 2

    wait_until("both demo workers scraped (up == 1)", up, opts.timeout_s, procs)
    rep.ok("Prometheus scrapes the live router and learner (up == 1)")
    for name, port in (("router", metrics_port), ("learner", metrics_port + 1)):
        # Unready while starting (a router until its embedder child has the model loaded),
        # then ready: wait for it, as Kubernetes would.
        url = f"http://127.0.0.1:{port}/readyz"
        rep.check(
            _seconds_until(lambda url=url: _http_ok(url), 60) is not None,  # type: ignore[misc]
            f"live {name}: /readyz 200 (Redis reached, model held)",
            "not within 60 s",
        )
        rep.check(_http_ok(f"http://127.0.0.1:{port}/healthz"), f"live {name}: /healthz 200")
    t_up = time.monotonic()

    def enough() -> bool:
        """Enough labels, and the injected faults seen by Prometheus (rate windows need a
        sample before and after the first event)."""
        for expr, least in (("sum(metallm_labelled_total)", opts.min_labels),
                            ("sum(metallm_dead_letters_total)", 1),
                            ("sum(metallm_fallbacks_total)", 1)):  # fmt: skip
            values = finite(prom.query(expr)[1])
            if not values or values[0] < least:
                return False
        return time.monotonic() - t_up >= 20

    wait_until(f"{opts.min_labels} labels learned, a dead letter and a fallback seen",
               enough, opts.timeout_s, procs)  # fmt: skip
    evaluate(rep, deploy, prom, demo)
    demo.wait(timeout=opts.timeout_s)


def check_workers_gone(
    rep: Report, deploy: Path, prom: Prometheus, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Once the demo has exited its workers cannot be scraped: the alerts on workers must see it."""
    by_name = {r.get("alert"): r["expr"] for r in rules(deploy)}

    def down() -> bool:
        return len(finite(prom.query('up{job=~"metallm-.*"} == 0')[1])) == 2

    wait_until("the stopped demo's workers scraped as down", down, 30, procs)
    for name in ("MetallmWorkerDown", "MetallmLearnerNotSingle"):
        err, result = prom.query(by_name[name])
        rep.check(err is None and bool(result), f"alert {name} has data once the workers are gone")


def evaluate(rep: Report, deploy: Path, prom: Prometheus, demo: subprocess.Popen[bytes]) -> None:
    """Every rule and dashboard query through the API, while ``demo`` still serves metrics."""
    # Alert rules: each expression evaluates without error; the injected faults raise theirs.
    all_rules = rules(deploy)
    fired = []
    for rule in all_rules:
        err, result = prom.query(rule["expr"])
        name = rule.get("alert") or rule.get("record")
        if rep.check(err is None, f"rule {name} evaluates", str(err)) and result:
            fired.append(name)
    for name in SHOULD_FIRE:
        rep.check(
            name in fired, f"alert {name} has data under the injected fault / configured threshold"
        )
    for name in SHOULD_BE_QUIET:
        rep.check(name not in fired, f"alert {name} stays quiet on a healthy run")
    # Dashboard: each query evaluates and returns a finite value (empty ones are asked again
    # for a while, as rate windows fill, but only while the demo still serves metrics).
    targets = dashboard_targets(deploy)
    results: dict[int, tuple[str | None, list[float]]] = {}
    deadline = time.monotonic() + 30
    while True:
        for k, (_, expr) in enumerate(targets):
            if k not in results or (results[k][0] is None and not results[k][1]):
                err, result = prom.query(expr)
                results[k] = (err, finite(result))
        empty = [k for k, (err, values) in results.items() if err is None and not values]
        if not empty or time.monotonic() > deadline or demo.poll() is not None:
            break
        time.sleep(2)
    for k, (title, expr) in enumerate(targets):
        err, values = results[k]
        if err:
            rep.fail(f"panel {title!r}: {expr} → {err}")
        elif not values:
            rep.fail(f"panel {title!r}: no data for {expr}")
        elif title in FAULT_PANELS and "failed" not in expr and max(values) <= 0:
            rep.fail(f"panel {title!r}: the injected faults do not show in {expr}")
        else:
            rep.ok(f"panel {title!r}: {len(values)} series, max {max(values):.4g} — {expr[:70]}")
    # Rules as Prometheus itself evaluates them (every 1 s here): healthy, no error.
    groups = prom.api("rules")["data"]["groups"]
    bad = [
        (r["name"], r.get("lastError"))
        for g in groups
        for r in g["rules"]
        if r.get("health") != "ok"
    ]
    n = sum(len(g["rules"]) for g in groups)
    rep.check(
        n == len(all_rules) and not bad,
        f"Prometheus loaded and evaluates all {n} rules with health ok",
        str(bad),
    )
