"""Check deploy/ as an operator would use it; run through scripts/check_observability.

Static (workers/harness/deploy_checks.py): the compose file against the compose-spec schema
(check-jsonschema's vendored copy) plus what a schema cannot see (mounted files exist,
METALLM_* names are real settings, no secret in the file); the Kubernetes manifests against
the Kubernetes schemas (kubernetes-validate, --strict) plus cross-references (ConfigMaps,
probes, ports, one learner); `promtool check config` and `promtool check rules`; the Grafana
dashboard's datasource and the metric names of every rule and panel against
workers/service/metrics.py.

Live (workers/harness/deploy_live.py): a Redis 7 of its own, `metallm demo` with its router
and learner metrics endpoints, faults injected, and a Prometheus of its own through whose HTTP
API every alert rule and every dashboard query is evaluated.
Exit status 1 on any failure, with one line per failed item.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from workers.harness import deploy_live as live
from workers.harness.deploy_checks import Report, run_checks

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/check_observability",
        description="Check deploy/ (compose, Kubernetes, Prometheus, Grafana) statically, then run a short "
        "demo scraped by a Prometheus of its own and evaluate every alert rule and dashboard query "
        "through its HTTP API. Exit status 1 on any failure.",
    )
    p.add_argument("--static-only", action="store_true", help="skip the live demo and Prometheus")
    p.add_argument("--rate", type=float, default=live.DEFAULT_RATE_QPS,
                   help="demo queries per second (default %(default)g)")  # fmt: skip
    p.add_argument(
        "--limit", type=int, help="demo queries (default: the 432 of overruling's test split)"
    )
    p.add_argument("--error-rate", type=float, default=live.DEFAULT_ERROR_RATE,
                   help="share of LLM calls failed by the replay server (default %(default)g)")  # fmt: skip
    p.add_argument("--budget", type=float, default=live.DEFAULT_BUDGET_USD_PER_HOUR,
                   help="USD per hour budget given to the demo, below its spend (default %(default)g)")  # fmt: skip
    p.add_argument("--floor", type=float, default=live.DEFAULT_ACCURACY_FLOOR,
                   help="accuracy floor given to the demo, above its accuracy (default %(default)g)")  # fmt: skip
    p.add_argument("--min-labels", type=int, default=live.DEFAULT_MIN_LABELS,
                   help="labels learned before evaluating (default %(default)d)")  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=live.DEFAULT_TIMEOUT_S,
                   help="limit of each wait (default %(default)g)")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = live.LiveOptions(rate=args.rate, limit=args.limit, error_rate=args.error_rate,
                            budget=args.budget, floor=args.floor, min_labels=args.min_labels,
                            timeout_s=args.timeout_s)  # fmt: skip
    rep = Report(out=sys.stdout)
    t0 = time.monotonic()
    run_checks(rep, DEPLOY)
    if not args.static_only:
        try:
            live.check_live(rep, DEPLOY, opts)
        except Exception as exc:
            rep.fail(f"live check: {exc.__class__.__name__}: {exc}")
    took = time.monotonic() - t0
    if rep.failures:
        print(f"\ncheck_observability: {len(rep.failures)} failure(s) in {took:.0f} s:",
              file=sys.stderr)  # fmt: skip
        for f in rep.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"\ncheck_observability: all checks passed in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
