"""deploy/ against the code: every metric an alert rule or a dashboard panel uses is one the
workers export, the settings the deploy files set exist, the Kubernetes manifests refer to
each other correctly, and the image's entry point turns secret files into the environment.
These are the pure checks of workers/harness/deploy_checks.py; scripts/check_observability
adds the tool checks (promtool, the schemas) and a live Prometheus."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from bandit.errors import ConfigError
from workers.harness.deploy_checks import (
    PURE_CHECKS,
    STATIC_CHECKS,
    TOOL_CHECKS,
    Report,
    check_compose_services,
    check_custom_resource,
    check_dockerfile,
    check_entrypoint,
    check_env_names,
    check_grafana,
    check_k8s_objects,
    check_metric_names,
    checkout_deploy_dir,
    dashboard_targets,
    k8s_docs,
    metric_names,
    rules,
    run_checks,
)
from workers.harness.deploy_live import (
    FAULT_PANELS,
    SHOULD_BE_QUIET,
    SHOULD_FIRE,
    LiveOptions,
    prometheus_config,
)

DEPLOY = checkout_deploy_dir()


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def _k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_docs(DEPLOY)}


def _arms_toml() -> str:
    return (DEPLOY / "config" / "arms.toml").read_text()


def test_the_pure_checks_pass_on_deploy() -> None:
    rep = Report()
    run_checks(rep, DEPLOY, PURE_CHECKS)
    assert rep.failures == []
    assert len(rep.passed) > 50


def test_static_checks_are_the_pure_and_the_tool_checks_in_report_order() -> None:
    assert set(STATIC_CHECKS) == set(PURE_CHECKS) | set(TOOL_CHECKS)
    assert not set(PURE_CHECKS) & set(TOOL_CHECKS)
    assert len(STATIC_CHECKS) == len(PURE_CHECKS) + len(TOOL_CHECKS)


def test_rules_and_panels_use_only_exported_metrics() -> None:
    rep = Report()
    check_grafana(rep, DEPLOY)
    assert rep.failures == []


def test_a_renamed_metric_would_be_caught() -> None:
    rep = Report()
    check_metric_names(rep, "x", ["rate(metallm_no_such_thing_total[5m])"], metric_names())
    assert rep.failures == [
        "x: every metric name used (1) is exported by workers/service/metrics.py: unknown ['metallm_no_such_thing_total']"
    ]


def test_every_required_alert_and_panel_is_there() -> None:
    alerts = {r["alert"] for r in rules(DEPLOY)}
    assert {"MetallmModelStale", "MetallmStreamLagGrowing", "MetallmPendingGrowing", "MetallmDeadLetters",
            "MetallmProviderErrorRateHigh", "MetallmFallbackRateHigh", "MetallmSpendAboveBudget",
            "MetallmAccuracyLow", "MetallmArmDrift"} <= alerts  # fmt: skip
    assert set(SHOULD_FIRE) | set(SHOULD_BE_QUIET) <= alerts
    titles = {t for t, _ in dashboard_targets(DEPLOY)}
    assert set(FAULT_PANELS) <= titles
    assert {"Spend against the pacing target (USD per 10k queries)",
            "Price weight p (cost against accuracy)", "Drift detections and boosted arms"} <= titles  # fmt: skip
    for r in rules(DEPLOY):
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_entrypoint_turns_secret_files_into_the_environment() -> None:
    rep = Report()
    check_entrypoint(rep, DEPLOY)
    assert rep.failures == []


@pytest.mark.parametrize(
    ("env", "failure"),
    [
        ({"METALLM_NO_SUCH_SETTING": "1"}, "x: METALLM_* variables are real settings: unknown ['METALLM_NO_SUCH_SETTING']"),
        ({"OPENAI_API_KEY": "sk-live"}, "x: no secret written in the file: literal values for ['OPENAI_API_KEY']"),
    ],
)  # fmt: skip
def test_env_names_and_literal_secrets_are_caught(env: dict[str, str], failure: str) -> None:
    rep = Report()
    check_env_names(rep, "x", {"METALLM_PREFIX": "metallm:", **env})
    assert rep.failures == [failure]


def test_secrets_by_reference_or_file_pass() -> None:
    rep = Report()
    env = {
        "OPENAI_API_KEY": "${OPENAI_API_KEY}",
        "REDIS_PASSWORD_FILE": "/run/secrets/pw",
        "TOKEN": "",
    }
    check_env_names(rep, "x", env)
    assert rep.failures == []


def test_compose_mistakes_are_caught() -> None:
    doc = _compose()
    rep = Report()
    check_compose_services(rep, DEPLOY, doc)
    assert rep.failures == []
    doc["services"]["learner"]["deploy"]["replicas"] = 2
    router = doc["services"]["router"]  # a copy: compose shares the env through a YAML anchor
    router["environment"] = {**router["environment"], "METALLM_ROUTER_THREADS": "4"}
    doc["services"]["grafana"]["volumes"].append("./grafana/no-such-dir:/x:ro")
    check_compose_services(rep, DEPLOY, doc)
    assert rep.failures == [
        "compose.yaml: exactly one learner",
        "compose.yaml service router: METALLM_* variables are real settings: unknown ['METALLM_ROUTER_THREADS']",
        "compose.yaml grafana: mounted ./grafana/no-such-dir exists",
    ]


def _mutated(change: str) -> dict[tuple[str, str], dict[str, Any]]:
    objs = copy.deepcopy(_k8s())
    learner = objs[("Deployment", "metallm-learner")]
    router = objs[("Deployment", "metallm-router")]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    if change == "two learners":
        learner["spec"]["replicas"] = 2
    elif change == "liveness on /readyz":
        container["livenessProbe"]["httpGet"]["path"] = "/readyz"
    elif change == "missing ConfigMap":
        container["envFrom"].append({"configMapRef": {"name": "metallm-nope"}})
    elif change == "literal secret":
        container["env"].append({"name": "OPENAI_API_KEY", "value": "sk-live"})
    elif change == "keda on another stream":
        objs[("ScaledObject", "metallm-router")]["spec"]["triggers"][0]["metadata"]["stream"] = "q"
    return objs


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        ("two learners", "k8s learner: one replica, Recreate (never two)"),
        ("liveness on /readyz", "k8s router: readiness on /readyz, liveness and startup on /healthz, on the metrics port"),
        ("missing ConfigMap", "k8s router: ConfigMaps it refers to exist: "),
        ("literal secret", "k8s router: secrets by reference only (metallm-secrets)"),
        ("keda on another stream", "k8s KEDA ScaledObject scales on the lag of the routers' group on the queries stream"),
    ],
)  # fmt: skip
def test_kubernetes_cross_reference_mistakes_are_caught(change: str, failure: str) -> None:
    rep = Report()
    check_k8s_objects(rep, _k8s(), _arms_toml())
    assert rep.failures == []
    check_k8s_objects(rep, _mutated(change), _arms_toml())
    assert len(rep.failures) == 1 and rep.failures[0].startswith(failure), rep.failures


def test_the_arms_configmap_must_hold_deploy_config_arms_toml() -> None:
    rep = Report()
    check_k8s_objects(rep, _k8s(), _arms_toml() + "\n# edited\n")
    assert rep.failures == ["k8s ConfigMap metallm-arms holds deploy/config/arms.toml"]


def test_custom_resources_get_their_minimal_check() -> None:
    crds = [(path, doc) for path, doc in k8s_docs(DEPLOY) if doc["kind"] in ("PodMonitor", "ScaledObject")]  # fmt: skip
    assert len(crds) == 2
    rep = Report()
    for path, doc in crds:
        assert check_custom_resource(rep, path, doc)
    assert rep.failures == []
    path, doc = crds[0]
    broken = copy.deepcopy(doc)
    del broken["spec"]["selector" if doc["kind"] == "PodMonitor" else "triggers"]
    assert check_custom_resource(rep, path, broken)
    assert len(rep.failures) == 1 and "missing ['spec." in rep.failures[0]
    namespace = next(doc for _, doc in k8s_docs(DEPLOY) if doc["kind"] == "Namespace")
    assert not check_custom_resource(rep, Path("k8s/namespace.yaml"), namespace)


def test_a_check_that_raises_is_one_failure_and_the_next_still_runs(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nUSER root\n")
    rep = Report()
    run_checks(rep, tmp_path, (check_grafana, check_dockerfile))
    assert rep.failures[0].startswith("check_grafana: FileNotFoundError: ")
    assert rep.failures[1:] == ["Dockerfile runs as a non-root user", "Dockerfile: slim base, CPU torch"]  # fmt: skip
    assert rep.passed == ["Dockerfile bakes no secret into the image"]


def test_report_writes_one_line_per_item_when_asked() -> None:
    out = io.StringIO()
    rep = Report(out=out)
    assert rep.check(True, "a")
    assert not rep.check(False, "b", "why")
    rep.skip("c")
    rep.note("d")
    assert out.getvalue() == "ok    a\nFAIL  b: why\nskip  c\nd\n"
    assert (rep.passed, rep.failures, rep.skipped) == (["a"], ["b: why"], ["c"])
    quiet = Report()
    quiet.fail("e")
    assert quiet.failures == ["e"]


def test_the_live_prometheus_scrapes_the_demo_with_the_production_rules(tmp_path: Path) -> None:
    path = prometheus_config(DEPLOY, tmp_path, metrics_port=20100, prom_port=20200)
    cfg = yaml.safe_load(path.read_text())
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["rule_files"] == [str(DEPLOY / "prometheus" / "rules/*.yml")]
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert targets == {"metallm-router": ["127.0.0.1:20100"], "metallm-learner": ["127.0.0.1:20101"],
                       "prometheus": ["127.0.0.1:20200"]}  # fmt: skip
    assert not any("dns_sd_configs" in j for j in cfg["scrape_configs"])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rate": 0}, "rate must be > 0, got 0"),
        ({"error_rate": 1.5}, r"error_rate must be in \[0, 1\], got 1.5"),
        ({"floor": -0.1}, r"floor must be in \[0, 1\], got -0.1"),
        ({"limit": 0}, "limit must be >= 1"),
        ({"min_labels": -1}, "min_labels must be >= 0, got -1"),
        ({"timeout_s": -5.0}, "timeout_s must be > 0, got -5.0"),
    ],
)
def test_live_options_name_the_bad_value(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LiveOptions(**kw)


def test_grace_periods_outlast_the_shutdown_deadline() -> None:
    """A router stopped by compose or Kubernetes gets to abandon its calls cleanly (and mark
    them so) before SIGKILL: the grace period exceeds the default deadline with time to
    spare."""
    import yaml

    from workers.service.settings import DEFAULT_SHUTDOWN_DEADLINE_S

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    graces = {"compose": compose["x-worker"]["stop_grace_period"]}
    for doc in yaml.safe_load_all((DEPLOY / "k8s" / "router.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment":
            graces["k8s"] = f"{doc['spec']['template']['spec']['terminationGracePeriodSeconds']}s"
    assert set(graces) == {"compose", "k8s"}
    for where, grace in graces.items():
        assert grace.endswith("s") and float(grace[:-1]) >= DEFAULT_SHUTDOWN_DEADLINE_S + 10, where
