"""deploy/ against the code: every metric an alert rule or a dashboard panel uses is one the
workers export, the settings the deploy files set exist, and the image's entry point turns
secret files into the environment. (scripts/check_observability does the rest, with
promtool, the schemas and a live Prometheus.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_observability", ROOT / "scripts" / "check_observability.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_observability"] = module
    spec.loader.exec_module(module)
    return module


def test_rules_and_panels_use_only_exported_metrics(check: ModuleType) -> None:
    rep = check.Report()
    check.check_grafana(rep, check.metric_names())
    assert rep.failures == []


def test_a_renamed_metric_would_be_caught(check: ModuleType) -> None:
    rep = check.Report()
    check.check_metric_names(
        rep, "x", ["rate(metallm_no_such_thing_total[5m])"], check.metric_names()
    )
    assert rep.failures == [
        "x: every metric name used (1) is exported by workers/service/metrics.py: unknown ['metallm_no_such_thing_total']"
    ]


def test_every_required_alert_and_panel_is_there(check: ModuleType) -> None:
    alerts = {r["alert"] for r in check.rules()}
    assert {"MetallmModelStale", "MetallmStreamLagGrowing", "MetallmPendingGrowing", "MetallmDeadLetters",
            "MetallmProviderErrorRateHigh", "MetallmFallbackRateHigh", "MetallmSpendAboveBudget",
            "MetallmAccuracyLow"} <= alerts  # fmt: skip
    assert set(check.SHOULD_FIRE) | set(check.SHOULD_BE_QUIET) <= alerts
    titles = {t for t, _ in check.dashboard_targets()}
    assert set(check.FAULT_PANELS) <= titles
    for r in check.rules():
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_entrypoint_turns_secret_files_into_the_environment(check: ModuleType) -> None:
    rep = check.Report()
    check.check_entrypoint(rep)
    assert rep.failures == []


def test_grace_periods_outlast_the_shutdown_deadline() -> None:
    """A router stopped by compose or Kubernetes gets to abandon its calls cleanly (and mark
    them so) before SIGKILL: the grace period exceeds the default deadline with time to
    spare."""
    import yaml

    from workers.service.settings import DEFAULT_SHUTDOWN_DEADLINE_S

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    graces = {"compose": compose["x-worker"]["stop_grace_period"]}
    for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "router.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment":
            graces["k8s"] = f"{doc['spec']['template']['spec']['terminationGracePeriodSeconds']}s"
    assert set(graces) == {"compose", "k8s"}
    for where, grace in graces.items():
        assert grace.endswith("s") and float(grace[:-1]) >= DEFAULT_SHUTDOWN_DEADLINE_S + 10, where
