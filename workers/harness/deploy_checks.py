"""Static checks of deploy/ against the code: what an operator would trip over before running it.

Two kinds, kept apart so that tests run the first without the tools the second needs:

- pure checks (``PURE_CHECKS``): read the files and the code only (compose services, mounts
  and settings names, the Dockerfile, the image's entry point run with a stub, Kubernetes
  cross-references, the Grafana dashboard and the metric names of every rule and panel);
- tool checks (``TOOL_CHECKS``): the compose-spec schema (check-jsonschema), the Kubernetes
  schemas (kubernetes-validate), promtool, and ``docker compose`` / ``kubectl`` where they
  answer (skipped otherwise).

``STATIC_CHECKS`` is both, in the order ``scripts/check_observability`` reports them. Every
check takes a ``Report`` and the deploy directory and adds one line per item.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import yaml

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY)", re.I)
# Variables the image and the demo read besides ServiceSettings' fields.
EXTRA_ENV = frozenset({"METALLM_REPLAY_URL", "METALLM_DATA_DIR", "METALLM_CACHE_DIR"})
CRD_REQUIRED = {  # minimal structural checks of the custom resources (no schema ships here)
    ("monitoring.coreos.com/v1", "PodMonitor"): ("spec.selector", "spec.podMetricsEndpoints"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("spec.scaleTargetRef.name", "spec.triggers"),
}
DASHBOARD = Path("grafana", "dashboards", "metallm.json")


@dataclass
class Report:
    """What a run of checks found, one line per item: ``passed``, ``failures`` (each with the
    reason) and ``skipped``. With ``out`` set, each line is also written there as it is found
    (``ok    …``, ``FAIL  …``, ``skip  …``)."""

    out: TextIO | None = None
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        """A line for the reader only (progress, figures); not a result."""
        if self.out is not None:
            print(line, file=self.out, flush=True)

    def ok(self, what: str) -> None:
        self.passed.append(what)
        self.note(f"ok    {what}")

    def fail(self, what: str) -> None:
        self.failures.append(what)
        self.note(f"FAIL  {what}")

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        self.note(f"skip  {what}")

    def check(self, cond: bool, what: str, why: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + why if why else ''}")
        return cond


Check = Callable[[Report, Path], None]


def checkout_deploy_dir() -> Path:
    """deploy/ of the checkout this module is in (the files are not part of the package)."""
    return Path(__file__).resolve().parents[2] / "deploy"


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# -- what the files hold -------------------------------------------------------------------
def rules(deploy: Path) -> list[dict[str, Any]]:
    """Every alert and recording rule of deploy/prometheus/rules/*.yml, in file order."""
    out = []
    for path in sorted(deploy.glob("prometheus/rules/*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def dashboard_targets(deploy: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query of the Grafana dashboard."""
    dash = json.loads((deploy / DASHBOARD).read_text())
    return [
        (p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]
    ]


def k8s_docs(deploy: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path relative to deploy/, document) of every Kubernetes manifest, in path order."""
    for path in sorted(deploy.glob("k8s/**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.relative_to(deploy), doc


def dig(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


# -- names the code defines ----------------------------------------------------------------
def metric_names() -> set[str]:
    """Every series name workers/service/metrics.py exports, with counter and histogram suffixes."""
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


def settings_names() -> set[str]:
    """The METALLM_* variable of every ServiceSettings field."""
    from workers.service.settings import ServiceSettings

    return {f"METALLM_{f.name.upper()}" for f in fields(ServiceSettings)}


def check_metric_names(rep: Report, where: str, exprs: list[str], known: set[str]) -> None:
    used = {m for e in exprs for m in re.findall(r"\bmetallm_[a-z0-9_]+", e)}
    unknown = sorted(used - known)
    rep.check(not unknown, f"{where}: every metric name used ({len(used)}) is exported by workers/service/metrics.py",
              f"unknown {unknown}")  # fmt: skip


def check_env_names(rep: Report, where: str, env: dict[str, Any]) -> None:
    allowed = settings_names() | EXTRA_ENV
    bad = sorted(k for k in env if k.startswith("METALLM_") and k not in allowed)
    rep.check(not bad, f"{where}: METALLM_* variables are real settings", f"unknown {bad}")
    literal = sorted(k for k, v in env.items() if SECRET_NAME.search(k) and not k.endswith("_FILE")
                     and v not in (None, "") and not str(v).startswith("${"))  # fmt: skip
    rep.check(
        not literal, f"{where}: no secret written in the file", f"literal values for {literal}"
    )


# -- pure checks ---------------------------------------------------------------------------
def check_compose(rep: Report, deploy: Path) -> None:
    """compose.yaml beyond its schema: services, mounts, settings names, secrets, arms.toml."""
    from bandit.config import load_config
    from workers.service.settings import ServiceSettings

    doc = yaml.safe_load((deploy / "compose.yaml").read_text())
    check_compose_services(rep, deploy, doc)
    ignored = run(["git", "check-ignore", "-q", "deploy/secrets/redis_password"], cwd=deploy.parent)
    rep.check(ignored.returncode == 0, "deploy/secrets/ is git-ignored")
    cfg = load_config(deploy / "config" / "arms.toml")
    ServiceSettings.from_env({}, file=cfg.service)
    rep.ok(f"deploy/config/arms.toml loads: arms {', '.join(cfg.arms.names)}; [service] valid")


def check_compose_services(rep: Report, deploy: Path, doc: dict[str, Any]) -> None:
    """The parsed compose file ``doc``; mounts are resolved against ``deploy``."""
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
                target = (deploy / src).resolve()
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


def check_dockerfile(rep: Report, deploy: Path) -> None:
    dockerfile = (deploy / "Dockerfile").read_text()
    rep.check(
        re.search(r"^USER 10001$", dockerfile, re.M) is not None,
        "Dockerfile runs as a non-root user",
    )
    rep.check("whl/cpu" in dockerfile and "slim" in dockerfile, "Dockerfile: slim base, CPU torch")
    env_lines = " ".join(re.findall(r"^ENV .*(?:\n\s+.*)*", dockerfile, re.M))
    rep.check(not SECRET_NAME.search(env_lines), "Dockerfile bakes no secret into the image")


def check_entrypoint(rep: Report, deploy: Path) -> None:
    """The image's entry point reads *_FILE secrets and builds REDIS_URL (run here with a stub)."""
    script = str(deploy / "docker-entrypoint.sh")
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
        res = run(["sh", script, "route", "--config", "x"], env=env)
        want = "REDIS_URL=redis://:p%40ss%2Fword@redis:6379/0 OPENAI_API_KEY=sk-test args=route --config x"
        rep.check(res.stdout.strip() == want, "docker-entrypoint.sh reads *_FILE secrets and builds REDIS_URL",
                  f"got {res.stdout.strip()!r} {res.stderr.strip()!r}")  # fmt: skip
        env["OPENAI_API_KEY_FILE"] = f"{tmp}/missing"
        res = run(["sh", script, "route"], env=env)
        rep.check(res.returncode == 2 and "is not a readable file" in res.stderr,
                  "docker-entrypoint.sh refuses a missing secret file in one line")  # fmt: skip


def check_custom_resource(rep: Report, path: Path, doc: dict[str, Any]) -> bool:
    """Checks ``doc`` when it is a custom resource no schema ships for; False when it is not."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    required = CRD_REQUIRED.get((doc["apiVersion"], kind))
    if required is None:
        return False
    missing = [f for f in required if dig(doc, f) in (None, [], {})]
    rep.check(
        not missing,
        f"{path} {kind}/{name}: required fields present (minimal CRD check)",
        f"missing {missing}",
    )
    return True


def check_k8s(rep: Report, deploy: Path) -> None:
    """Cross-references of the Kubernetes manifests (their schemas: ``check_k8s_schemas``)."""
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_docs(deploy)}
    check_k8s_objects(rep, by_kind, (deploy / "config" / "arms.toml").read_text())


def check_k8s_objects(rep: Report, by_kind: dict[tuple[str, str], dict[str, Any]], arms_toml: str) -> None:  # fmt: skip
    """``by_kind``: every manifest by (kind, name); ``arms_toml``: deploy/config/arms.toml."""
    from workers.service.health import PATHS

    env_cm = by_kind[("ConfigMap", "metallm-env")]["data"]
    check_env_names(rep, "k8s ConfigMap metallm-env", env_cm)
    arms = by_kind[("ConfigMap", "metallm-arms")]["data"]["arms.toml"]
    rep.check(arms == arms_toml, "k8s ConfigMap metallm-arms holds deploy/config/arms.toml")
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


def check_grafana(rep: Report, deploy: Path) -> None:
    """The dashboard's datasource and mount, and the metric names of every panel and rule."""
    dash = json.loads((deploy / DASHBOARD).read_text())
    ds = yaml.safe_load((deploy / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ][0]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    rep.check(all(p["datasource"]["uid"] == ds["uid"] and all(t["datasource"]["uid"] == ds["uid"] for t in p["targets"])
                  for p in panels), f"dashboard: all {len(panels)} panels use the provisioned datasource {ds['uid']}")  # fmt: skip
    rep.check(ds["url"] == "http://prometheus:9090", "datasource points at the compose Prometheus")
    prov = yaml.safe_load((deploy / "grafana/provisioning/dashboards/metallm.yaml").read_text())
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    rep.check(any(m.startswith("./grafana/dashboards:" + prov["providers"][0]["options"]["path"]) for m in mounts),
              "dashboard provider path is where compose mounts deploy/grafana/dashboards")  # fmt: skip
    exprs = [e for _, e in dashboard_targets(deploy)]
    rep.check(
        not any("$" in e for e in exprs),
        "dashboard queries use no Grafana variables (evaluable as they are)",
    )
    known = metric_names()
    check_metric_names(rep, "dashboard", exprs, known)
    check_metric_names(rep, "alert rules", [r["expr"] for r in rules(deploy)], known)
    # An alert per arm, stream, … names it: {{ $labels.X }} in its summary for each "by (X)".
    unnamed = sorted({(r["alert"], x.strip()) for r in rules(deploy) if "alert" in r for g in re.findall(r"\bby \(([^)]*)\)", r["expr"])
                      for x in g.split(",") if f"$labels.{x.strip()}" not in r["annotations"]["summary"]})  # fmt: skip
    rep.check(not unnamed, "alert rules: each names what it groups by (arm, stream, …) in its summary", f"unnamed {unnamed}")  # fmt: skip


# -- checks that need a tool ---------------------------------------------------------------
def check_compose_schema(rep: Report, deploy: Path) -> None:
    """compose.yaml against check-jsonschema's vendored compose-spec schema."""
    path = deploy / "compose.yaml"
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    res = run([*cmd, str(path)])
    rep.check(res.returncode == 0, "compose.yaml validates against the compose-spec schema (check-jsonschema)",
              (res.stdout + res.stderr).strip().replace("\n", " | "))  # fmt: skip


def check_docker_compose(rep: Report, deploy: Path) -> None:
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        res = run([docker, "compose", "-f", str(deploy / "compose.yaml"), "config", "--quiet"],
                  cwd=deploy)  # fmt: skip
        rep.check(res.returncode == 0, "docker compose config", res.stderr.strip())
    else:
        rep.skip(
            "docker compose config: no docker compose plugin here (schema check above instead)"
        )


def check_k8s_schemas(rep: Report, deploy: Path) -> None:
    """Every manifest against the Kubernetes schemas (kubernetes-validate, strict); the custom
    resources, which have none here, for their required fields."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for path, doc in k8s_docs(deploy):
        if check_custom_resource(rep, path, doc):
            continue
        kind, name = doc["kind"], doc["metadata"]["name"]
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            rep.ok(
                f"{path} {kind}/{name} validates against the Kubernetes {version} schema (strict)"
            )
        except kubernetes_validate.ValidationError as exc:
            rep.fail(f"{path} {kind}/{name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def check_kubectl(rep: Report, deploy: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl and run([kubectl, "version", "--request-timeout=3s"]).returncode == 0:
        cmd = ["apply", "--dry-run=client", "--validate=false", "-f", str(deploy / "k8s")]
        res = run([kubectl, *cmd, "--recursive"])
        rep.check(res.returncode == 0, "kubectl apply --dry-run=client", res.stderr.strip())
    else:
        rep.skip("kubectl apply --dry-run: no Kubernetes API server reachable here (schema checks above instead)")  # fmt: skip


def check_promtool(rep: Report, deploy: Path) -> None:
    for args in (["check", "config", str(deploy / "prometheus" / "prometheus.yml")],
                 ["check", "rules", *map(str, sorted(deploy.glob("prometheus/rules/*.yml")))]):  # fmt: skip
        res = run(["promtool", *args])
        out = (res.stdout + res.stderr).strip()
        rep.check(res.returncode == 0, f"promtool {' '.join(args[:2])}: {' | '.join(ln.strip() for ln in out.splitlines() if 'SUCCESS' in ln)}",
                  out.replace("\n", " | "))  # fmt: skip


PURE_CHECKS: tuple[Check, ...] = (
    check_compose, check_dockerfile, check_entrypoint, check_k8s, check_grafana,
)  # fmt: skip
TOOL_CHECKS: tuple[Check, ...] = (
    check_compose_schema, check_docker_compose, check_k8s_schemas, check_kubectl, check_promtool,
)  # fmt: skip
STATIC_CHECKS: tuple[Check, ...] = (
    check_compose_schema, check_compose, check_docker_compose, check_dockerfile, check_entrypoint,
    check_k8s_schemas, check_k8s, check_kubectl, check_promtool, check_grafana,
)  # fmt: skip


def run_checks(rep: Report, deploy: Path, checks: tuple[Check, ...] = STATIC_CHECKS) -> None:
    """Runs ``checks`` in order; one that raises is one failure, and the next still runs."""
    for check in checks:
        try:
            check(rep, deploy)
        except Exception as exc:  # a broken file must fail the check, not crash it
            rep.fail(f"{check.__name__}: {exc.__class__.__name__}: {exc}")
