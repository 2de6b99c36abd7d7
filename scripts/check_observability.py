"""Check deploy/ as an operator would use it; run through scripts/check_observability.

Static: the compose file against the compose-spec schema (check-jsonschema's vendored copy)
plus what a schema cannot see (mounted files exist, METALLM_* names are real settings, no
secret in the file); the Kubernetes manifests against the Kubernetes schemas
(kubernetes-validate, --strict) plus cross-references (ConfigMaps, probes, ports, one
learner); `promtool check config` and `promtool check rules`; the Grafana dashboard's
datasource and the metric names of every rule and panel against workers/service/metrics.py.

Live: a Redis 7 of its own, `metallm demo` with its router and learner metrics endpoints,
faults injected (LLM errors, bad queries), a budget below its spend and an accuracy floor
above its accuracy, and a Prometheus of its own (the production scrape config with static
targets, the production rules) on a free port. Through Prometheus's HTTP API every alert
rule and every dashboard query must evaluate without error, every dashboard query must
return a finite value, the rules must be healthy, the fault panels must show the faults,
and the alerts those faults should raise must have data while the others stay quiet.
Exit status 1 on any failure, with one line per failed item.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(ROOT))


JOBS = ("metallm-router", "metallm-learner")
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY)", re.I)
# The live run injects these faults; these alerts must then have data, those stay quiet.
SHOULD_FIRE = ("MetallmDeadLetters", "MetallmProviderErrorRateHigh", "MetallmSpendAboveBudget",
               "MetallmAccuracyLow")  # fmt: skip
SHOULD_BE_QUIET = ("MetallmWorkerDown", "MetallmLearnerNotSingle", "MetallmModelStale",
                   "MetallmFeedbackNotJoining", "MetallmQueriesFailing")  # fmt: skip
FAULT_PANELS = ("Fallbacks per arm", "Provider errors per arm and kind",
                "Dead letters (last hour) and failed queries")  # fmt: skip


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        print(f"ok    {what}", flush=True)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"FAIL  {what}", flush=True)

    def check(self, cond: bool, what: str, why: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + why if why else ''}")
        return cond


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# -- static checks -------------------------------------------------------------------------
def metric_names() -> set[str]:
    from prometheus_client import CollectorRegistry

    from workers.service.metrics import Metrics

    names = set()
    for metric in Metrics(CollectorRegistry()).registry.collect():
        names.add(metric.name)
        names.update(s.name for s in metric.samples)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names.update(metric.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def check_metric_names(rep: Report, where: str, exprs: list[str], known: set[str]) -> None:
    used = {m for e in exprs for m in re.findall(r"\bmetallm_[a-z_]+", e)}
    unknown = sorted(used - known)
    rep.check(not unknown, f"{where}: every metric name used ({len(used)}) is exported by workers/service/metrics.py",
              f"unknown {unknown}")  # fmt: skip


def settings_names() -> set[str]:
    from workers.service.settings import ServiceSettings

    return {f"METALLM_{f.name.upper()}" for f in fields(ServiceSettings)}


def check_env_names(rep: Report, where: str, env: dict[str, Any]) -> None:
    allowed = settings_names() | {"METALLM_REPLAY_URL", "METALLM_DATA_DIR", "METALLM_CACHE_DIR"}
    bad = sorted(k for k in env if k.startswith("METALLM_") and k not in allowed)
    rep.check(not bad, f"{where}: METALLM_* variables are real settings", f"unknown {bad}")
    literal = sorted(k for k, v in env.items() if SECRET_NAME.search(k) and not k.endswith("_FILE")
                     and v not in (None, "") and not str(v).startswith("${"))  # fmt: skip
    rep.check(
        not literal, f"{where}: no secret written in the file", f"literal values for {literal}"
    )


def check_compose(rep: Report) -> None:
    from bandit.config import load_config
    from workers.service.settings import ServiceSettings

    path = DEPLOY / "compose.yaml"
    res = run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ]
    )
    rep.check(res.returncode == 0, "compose.yaml validates against the compose-spec schema (check-jsonschema)",
              (res.stdout + res.stderr).strip().replace("\n", " | "))  # fmt: skip
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    rep.check({"redis", "router", "learner", "prometheus", "grafana"} <= set(services),
              "compose.yaml has redis, router, learner, prometheus and grafana")  # fmt: skip
    demo = sorted(n for n, s in services.items() if "demo" in s.get("profiles", []))
    rep.check(
        demo == ["producer", "replay-llm"],
        "compose.yaml demo profile adds replay-llm and producer",
        str(demo),
    )
    rep.check(
        "--appendonly yes" in " ".join(services["redis"]["command"]),
        "compose.yaml: Redis with AOF persistence",
    )
    rep.check(
        services["learner"].get("deploy", {}).get("replicas") == 1,
        "compose.yaml: exactly one learner",
    )
    for name, svc in services.items():
        env = svc.get("environment") or {}
        check_env_names(rep, f"compose.yaml service {name}", env)
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            src = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", src)
            if src.startswith((".", "/")):
                target = (DEPLOY / src).resolve()
                # The recorded data sets live outside the project (never copied into it).
                if "shared/data" in src and not target.exists():
                    rep.ok(f"compose.yaml {name}: {src} is outside this checkout (recorded data)")
                    continue
                rep.check(target.exists(), f"compose.yaml {name}: mounted {src} exists")
    for secret, spec in doc.get("secrets", {}).items():
        rep.check(
            spec["file"].startswith("./secrets/"),
            f"compose.yaml secret {secret} is a file under deploy/secrets/ (git-ignored)",
        )
    ignored = run(["git", "check-ignore", "-q", "deploy/secrets/redis_password"], cwd=ROOT)
    rep.check(ignored.returncode == 0, "deploy/secrets/ is git-ignored")
    cfg = load_config(DEPLOY / "config" / "arms.toml")
    ServiceSettings.from_env({}, file=cfg.service)
    rep.ok(f"deploy/config/arms.toml loads: arms {', '.join(cfg.arms.names)}; [service] valid")
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        res = run([docker, "compose", "-f", str(path), "config", "--quiet"], cwd=DEPLOY)
        rep.check(res.returncode == 0, "docker compose config", res.stderr.strip())
    else:
        print(
            "skip  docker compose config: no docker compose plugin here (schema check above instead)"
        )
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    rep.check(
        re.search(r"^USER 10001$", dockerfile, re.M) is not None,
        "Dockerfile runs as a non-root user",
    )
    rep.check("whl/cpu" in dockerfile and "slim" in dockerfile, "Dockerfile: slim base, CPU torch")
    env_lines = " ".join(re.findall(r"^ENV .*(?:\n\s+.*)*", dockerfile, re.M))
    rep.check(not SECRET_NAME.search(env_lines), "Dockerfile bakes no secret into the image")


def check_entrypoint(rep: Report) -> None:
    """The image's entry point reads *_FILE secrets and builds REDIS_URL (run here with a stub)."""
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp, "metallm")
        stub.write_text(
            '#!/bin/sh\necho "REDIS_URL=$REDIS_URL OPENAI_API_KEY=$OPENAI_API_KEY args=$*"\n'
        )
        stub.chmod(0o755)
        Path(tmp, "pw").write_text("p@ss/word")
        Path(tmp, "key").write_text("sk-test")
        env = {"PATH": f"{tmp}:{os.path.dirname(sys.executable)}:/usr/bin:/bin", "REDIS_HOST": "redis",
               "REDIS_PASSWORD_FILE": f"{tmp}/pw", "OPENAI_API_KEY_FILE": f"{tmp}/key"}  # fmt: skip
        res = run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "route", "--config", "x"], env=env)
        want = "REDIS_URL=redis://:p%40ss%2Fword@redis:6379/0 OPENAI_API_KEY=sk-test args=route --config x"
        rep.check(res.stdout.strip() == want, "docker-entrypoint.sh reads *_FILE secrets and builds REDIS_URL",
                  f"got {res.stdout.strip()!r} {res.stderr.strip()!r}")  # fmt: skip
        env["OPENAI_API_KEY_FILE"] = f"{tmp}/missing"
        res = run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "route"], env=env)
        rep.check(res.returncode == 2 and "is not a readable file" in res.stderr,
                  "docker-entrypoint.sh refuses a missing secret file in one line")  # fmt: skip


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(DEPLOY.glob("k8s/**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.relative_to(DEPLOY), doc


CRD_REQUIRED = {  # minimal structural checks of the custom resources (no schema ships here)
    ("monitoring.coreos.com/v1", "PodMonitor"): ("spec.selector", "spec.podMetricsEndpoints"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("spec.scaleTargetRef.name", "spec.triggers"),
}


def dig(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def check_k8s(rep: Report) -> None:
    import kubernetes_validate

    from workers.service.health import PATHS

    docs = list(k8s_docs())
    by_kind: dict[tuple[str, str], dict[str, Any]] = {}
    for path, doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        by_kind[(kind, name)] = doc
        key = (doc["apiVersion"], kind)
        if key in CRD_REQUIRED:
            missing = [f for f in CRD_REQUIRED[key] if dig(doc, f) in (None, [], {})]
            rep.check(
                not missing,
                f"{path} {kind}/{name}: required fields present (minimal CRD check)",
                f"missing {missing}",
            )
            continue
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            rep.ok(
                f"{path} {kind}/{name} validates against the Kubernetes {kubernetes_validate.latest_version()} schema (strict)"
            )
        except kubernetes_validate.ValidationError as exc:
            rep.fail(f"{path} {kind}/{name}: {exc.message} at {'.'.join(map(str, exc.path))}")
    env_cm = by_kind[("ConfigMap", "metallm-env")]["data"]
    check_env_names(rep, "k8s ConfigMap metallm-env", env_cm)
    arms = by_kind[("ConfigMap", "metallm-arms")]["data"]["arms.toml"]
    rep.check(
        arms == (DEPLOY / "config" / "arms.toml").read_text(),
        "k8s ConfigMap metallm-arms holds deploy/config/arms.toml",
    )
    tomllib.loads(arms)
    for comp in ("router", "learner"):
        dep = by_kind[("Deployment", f"metallm-{comp}")]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        port = {p["name"]: p["containerPort"] for p in c["ports"]}.get("metrics")
        rep.check(
            port == int(env_cm["METALLM_METRICS_PORT"]),
            f"k8s {comp}: container port 'metrics' = METALLM_METRICS_PORT",
        )
        probes = {
            k: c.get(k, {}).get("httpGet", {})
            for k in ("readinessProbe", "livenessProbe", "startupProbe")
        }
        rep.check(probes["readinessProbe"].get("path") == "/readyz" and probes["livenessProbe"].get("path") == "/healthz"
                  and all(p.get("port") == "metrics" and p.get("path") in PATHS for p in probes.values()),
                  f"k8s {comp}: readiness on /readyz, liveness and startup on /healthz, on the metrics port")  # fmt: skip
        rep.check(
            c["args"][0] == {"router": "route", "learner": "learn"}[comp],
            f"k8s {comp}: runs `metallm {c['args'][0]}`",
        )
        refs = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        refs |= {e["configMapRef"]["name"] for e in c.get("envFrom", [])}
        rep.check(
            all(("ConfigMap", r) in by_kind for r in refs),
            f"k8s {comp}: ConfigMaps it refers to exist",
            str(refs),
        )
        secrets = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        literal = [
            e["name"] for e in c.get("env", []) if SECRET_NAME.search(e["name"]) and "value" in e
        ]
        rep.check(
            secrets == {"metallm-secrets"} and not literal,
            f"k8s {comp}: secrets by reference only (metallm-secrets)",
        )
        labels = dep["spec"]["template"]["metadata"]["labels"]
        rep.check(
            labels.get("app.kubernetes.io/component") == comp,
            f"k8s {comp}: component label the PodMonitor maps to job metallm-{comp}",
        )
    learner = by_kind[("Deployment", "metallm-learner")]["spec"]
    rep.check(
        learner["replicas"] == 1 and learner["strategy"]["type"] == "Recreate",
        "k8s learner: one replica, Recreate (never two)",
    )
    hpa = by_kind[("HorizontalPodAutoscaler", "metallm-router")]["spec"]["scaleTargetRef"]
    rep.check(hpa["name"] == "metallm-router", "k8s HPA scales the router Deployment")
    keda = by_kind[("ScaledObject", "metallm-router")]["spec"]["triggers"][0]
    rep.check(keda["type"] == "redis-streams" and keda["metadata"]["consumerGroup"] == "routers"
              and keda["metadata"]["stream"] == env_cm["METALLM_PREFIX"] + "queries",
              "k8s KEDA ScaledObject scales on the lag of the routers' group on the queries stream")  # fmt: skip
    kubectl = shutil.which("kubectl")
    if kubectl and run([kubectl, "version", "--request-timeout=3s"]).returncode == 0:
        res = run(
            [
                "kubectl",
                "apply",
                "--dry-run=client",
                "--validate=false",
                "-f",
                str(DEPLOY / "k8s"),
                "--recursive",
            ]
        )
        rep.check(res.returncode == 0, "kubectl apply --dry-run=client", res.stderr.strip())
    else:
        print(
            "skip  kubectl apply --dry-run: no Kubernetes API server reachable here (schema checks above instead)"
        )


def check_promtool(rep: Report) -> None:
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", *map(str, sorted(DEPLOY.glob("prometheus/rules/*.yml")))]):  # fmt: skip
        res = run(["promtool", *args])
        out = (res.stdout + res.stderr).strip()
        rep.check(res.returncode == 0, f"promtool {' '.join(args[:2])}: {' | '.join(ln.strip() for ln in out.splitlines() if 'SUCCESS' in ln)}",
                  out.replace("\n", " | "))  # fmt: skip


def rules() -> list[dict[str, Any]]:
    out = []
    for path in sorted(DEPLOY.glob("prometheus/rules/*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "metallm.json").read_text())
    return [
        (p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]
    ]


def check_grafana(rep: Report, known: set[str]) -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "metallm.json").read_text())
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ][0]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    rep.check(all(p["datasource"]["uid"] == ds["uid"] and all(t["datasource"]["uid"] == ds["uid"] for t in p["targets"])
                  for p in panels), f"dashboard: all {len(panels)} panels use the provisioned datasource {ds['uid']}")  # fmt: skip
    rep.check(ds["url"] == "http://prometheus:9090", "datasource points at the compose Prometheus")
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/metallm.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    rep.check(any(m.startswith("./grafana/dashboards:" + prov["providers"][0]["options"]["path"]) for m in mounts),
              "dashboard provider path is where compose mounts deploy/grafana/dashboards")  # fmt: skip
    exprs = [e for _, e in dashboard_targets()]
    rep.check(
        not any("$" in e for e in exprs),
        "dashboard queries use no Grafana variables (evaluable as they are)",
    )
    check_metric_names(rep, "dashboard", exprs, known)
    check_metric_names(rep, "alert rules", [r["expr"] for r in rules()], known)


# -- live check ----------------------------------------------------------------------------
class Prometheus:
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
    import random
    import socket

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


def _seconds_until(cond: Any, timeout_s: float) -> float | None:
    """Seconds until ``cond()`` held, or None when it did not within ``timeout_s``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            return None
        time.sleep(0.5)
    return time.monotonic() - t0


def wait_until(
    what: str, cond: Any, timeout_s: float, procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: {p.args[0]} exited with status {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(1)


def prometheus_config(tmp: Path, metrics_port: int, prom_port: int) -> Path:
    """The production scrape config and rules, with the demo's endpoints as static targets."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / r) for r in cfg["rule_files"]]
    targets = {
        "metallm-router": metrics_port,
        "metallm-learner": metrics_port + 1,
        "prometheus": prom_port,
    }
    jobs = {j["job_name"] for j in cfg["scrape_configs"]}
    assert set(JOBS) <= jobs, f"prometheus.yml lacks the jobs {JOBS}"
    for job in cfg["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_live(rep: Report, args: argparse.Namespace) -> None:
    from workers.harness.demo import free_port

    tmp = Path(tempfile.mkdtemp(prefix="metallm-observability-"))
    redis_port, prom_port = free_port(), free_port()
    metrics_port = free_port_pair()
    config = prometheus_config(tmp, metrics_port, prom_port)
    res = run(["promtool", "check", "config", str(config)])
    rep.check(res.returncode == 0, "promtool check config of the check's Prometheus (production jobs, static targets)",
              res.stdout + res.stderr)  # fmt: skip
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")
    demo_env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "METALLM_BUDGET_USD_PER_HOUR": str(args.budget), "METALLM_ACCURACY_FLOOR": str(args.floor)}  # fmt: skip
    demo_cmd = [str(Path(sys.executable).parent / "metallm"), "demo", "--dataset", "overruling", "--rate", str(args.rate),
                "--metrics-port", str(metrics_port), "--llm-error-rate", str(args.error_rate), "--bad-queries", "3"]  # fmt: skip
    if args.limit:
        demo_cmd += ["--limit", str(args.limit)]
    print(f"live: redis-server :{redis_port}, demo metrics :{metrics_port}/:{metrics_port + 1}, "
          f"prometheus :{prom_port}, logs in {tmp}", flush=True)  # fmt: skip
    with (
        process(
            [
                "/usr/bin/redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            tmp / "redis.log",
        ),  # fmt: skip
        process(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            tmp / "prometheus.log",
        ) as prom_proc,  # fmt: skip
    ):
        wait_until("prometheus ready", lambda: _http_ok(f"{prom.url}/-/ready"), 60, [prom_proc])
        time.sleep(0.5)
        with process(demo_cmd, tmp / "demo.log", env=demo_env) as demo:
            procs = [prom_proc, demo]

            def up() -> bool:
                return len(finite(prom.query('up{job=~"metallm-.*"} == 1')[1])) == 2

            wait_until("both demo workers scraped (up == 1)", up, args.timeout_s, procs)
            rep.ok("Prometheus scrapes the live router and learner (up == 1)")
            for name, port in (("router", metrics_port), ("learner", metrics_port + 1)):
                # Unready while starting (a router until its embedder child has the model
                # loaded), then ready: wait for it, as Kubernetes would.
                url = f"http://127.0.0.1:{port}/readyz"
                rep.check(
                    _seconds_until(lambda url=url: _http_ok(url), 60) is not None,
                    f"live {name}: /readyz 200 (Redis reached, model held)",
                    "not within 60 s",
                )
                rep.check(
                    _http_ok(f"http://127.0.0.1:{port}/healthz"), f"live {name}: /healthz 200"
                )
            t_up = time.monotonic()

            def enough() -> bool:
                """Enough labels, and the injected faults seen by Prometheus (rate windows
                need a sample before and after the first event)."""
                for expr, least in (("sum(metallm_labelled_total)", args.min_labels),
                                    ("sum(metallm_dead_letters_total)", 1),
                                    ("sum(metallm_fallbacks_total)", 1)):  # fmt: skip
                    values = finite(prom.query(expr)[1])
                    if not values or values[0] < least:
                        return False
                return time.monotonic() - t_up >= 20

            wait_until(f"{args.min_labels} labels learned, a dead letter and a fallback seen",
                       enough, args.timeout_s, procs)  # fmt: skip
            evaluate(rep, prom, demo, args)
            rc = demo.wait(timeout=args.timeout_s)
            log = (tmp / "demo.log").read_text(errors="replace")
            rep.check(rc == 0 and "metallm router" in log, "the demo ran to its report",
                      f"exit {rc}; last lines: {' | '.join(log.splitlines()[-3:])}")  # fmt: skip
            summary = [
                ln
                for ln in log.splitlines()
                if ln.startswith(("metallm demo —", "  metallm router"))
            ]
            print("\n".join(f"      {ln.strip()}" for ln in summary))
            check_workers_gone(rep, prom, [prom_proc])
    shutil.rmtree(tmp, ignore_errors=True) if not rep.failures else print(f"logs kept in {tmp}")


def check_workers_gone(rep: Report, prom: Prometheus, procs: list[subprocess.Popen[bytes]]) -> None:
    """Once the demo has exited its workers cannot be scraped: the alerts on workers must see it."""
    by_name = {r.get("alert"): r["expr"] for r in rules()}

    def down() -> bool:
        return len(finite(prom.query('up{job=~"metallm-.*"} == 0')[1])) == 2

    wait_until("the stopped demo's workers scraped as down", down, 30, procs)
    for name in ("MetallmWorkerDown", "MetallmLearnerNotSingle"):
        err, result = prom.query(by_name[name])
        rep.check(err is None and bool(result), f"alert {name} has data once the workers are gone")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def evaluate(
    rep: Report, prom: Prometheus, demo: subprocess.Popen[bytes], args: argparse.Namespace
) -> None:
    # Alert rules: each expression evaluates without error; the injected faults raise theirs.
    fired = []
    for rule in rules():
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
    targets = dashboard_targets()
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
        n == len(rules()) and not bad,
        f"Prometheus loaded and evaluates all {n} rules with health ok",
        str(bad),
    )


def main() -> int:
    p = argparse.ArgumentParser(
        prog="scripts/check_observability",
        description="Check deploy/ (compose, Kubernetes, Prometheus, Grafana) statically, then run a short "
        "demo scraped by a Prometheus of its own and evaluate every alert rule and dashboard query "
        "through its HTTP API. Exit status 1 on any failure.",
    )
    p.add_argument("--static-only", action="store_true", help="skip the live demo and Prometheus")
    p.add_argument("--rate", type=float, default=6.0, help="demo queries per second (default 6)")
    p.add_argument(
        "--limit", type=int, help="demo queries (default: the 432 of overruling's test split)"
    )
    p.add_argument(
        "--error-rate",
        type=float,
        default=0.3,
        help="share of LLM calls failed by the replay server (default 0.3)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0.1,
        help="USD per hour budget given to the demo, below its spend (default 0.1)",
    )
    p.add_argument(
        "--floor",
        type=float,
        default=0.99,
        help="accuracy floor given to the demo, above its accuracy (default 0.99)",
    )
    p.add_argument(
        "--min-labels", type=int, default=80, help="labels learned before evaluating (default 80)"
    )
    p.add_argument("--timeout-s", type=float, default=300, help="limit of each wait (default 300)")
    args = p.parse_args()
    rep = Report()
    known = metric_names()
    t0 = time.monotonic()
    for step in (check_compose, check_entrypoint, check_k8s, check_promtool):
        try:
            step(rep)
        except Exception as exc:  # a broken file must fail the check, not crash it
            rep.fail(f"{step.__name__}: {exc.__class__.__name__}: {exc}")
    check_grafana(rep, known)
    if not args.static_only:
        try:
            check_live(rep, args)
        except Exception as exc:
            rep.fail(f"live check: {exc.__class__.__name__}: {exc}")
    took = time.monotonic() - t0
    if rep.failures:
        print(
            f"\ncheck_observability: {len(rep.failures)} failure(s) in {took:.0f} s:",
            file=sys.stderr,
        )
        for f in rep.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"\ncheck_observability: all checks passed in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
