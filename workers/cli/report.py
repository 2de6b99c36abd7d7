"""``metallm report``: what the learner's off-policy estimates say about the live policy,
each single arm, greedy at other p and the shadow candidates, on the labelled traffic."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from bandit.errors import MetalLMError
from bandit.ope import LIVE, SCOPES, OffPolicyEvaluator, PolicyEstimate
from workers.cli.client import _redis
from workers.cli.options import add_redis_options, service_settings
from workers.service.evaluation import OPEKeys

ARM_PREFIX = "always:"
WIDE_INTERVAL = 0.2  # an accuracy interval wider than this (20 pp) is flagged in the headline


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="estimated accuracy and cost of the router against each arm",
                       description="Print the learner's off-policy estimates: for the live policy, "
                       "every single arm ('always:ARM'), greedy at other p ('greedy:p=P') and each "
                       "shadow candidate ('shadow:NAME'), the estimated accuracy with its 95 %% "
                       "interval (SNIPS, Gaussian), the estimated cost per 10k queries and the labels "
                       "they rest on; then what the router saves against the most accurate single arm.")  # fmt: skip
    add_redis_options(p)
    p.add_argument("--scope", choices=SCOPES, default="cumulative",
                   help="every label learned, or the recent window (default cumulative)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(handler=cmd_report)


def read_evaluator(r: Any, prefix: str) -> OffPolicyEvaluator:
    """The estimator state the learner committed last."""
    raw = r.get(OPEKeys(prefix).state)
    if raw is None:
        raise MetalLMError(
            f"no off-policy estimates under prefix {prefix!r}: a learner writes them at its "
            "first commit (is one running on this prefix?)"
        )
    try:
        return OffPolicyEvaluator.from_state(json.loads(raw))
    except ValueError as exc:  # EstimatorError too
        raise MetalLMError(f"the off-policy state under {prefix!r} cannot be read: {exc}") from None


@dataclass(frozen=True)
class Headline:
    """The router against the single arm with the highest estimated accuracy; ``saved``:
    1 − router cost / that arm's cost (negative: the router spent more), None when a
    figure is missing."""

    router: PolicyEstimate
    best: PolicyEstimate | None
    saved: float | None

    def text(self) -> str:
        r, b = self.router, self.best
        if b is None or r.acc.value is None or r.cost_per_10k.value is None:
            return "router: no labelled decisions yet"
        out = f"router: {_pct(r.acc.value)} at {_usd(r.cost_per_10k.value)} per 10k; "
        out += f"{b.policy}: {_pct(b.acc.value)} at {_usd(b.cost_per_10k.value)} per 10k; "
        if self.saved is None:
            return out + "saved: unknown"
        if self.saved >= 0:
            return out + f"saved {self.saved * 100:.1f} %"
        return out + f"spent {-self.saved * 100:.1f} % more"

    def to_json(self) -> dict[str, Any]:
        return {"router": self.router.policy, "best_arm": self.best.policy if self.best else None,
                "saved": self.saved, "text": self.text()}  # fmt: skip


def headline(estimates: Sequence[PolicyEstimate]) -> Headline:
    router = next(e for e in estimates if e.policy == LIVE)
    arms = [e for e in estimates if e.policy.startswith(ARM_PREFIX) and e.acc.value is not None]
    best = max(arms, key=lambda e: e.acc.value or 0.0, default=None)
    saved = None
    if best is not None and router.cost_per_10k.value is not None and best.cost_per_10k.value:
        saved = 1.0 - router.cost_per_10k.value / best.cost_per_10k.value
    return Headline(router, best, saved)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def _usd(x: float | None) -> str:
    return "–" if x is None else f"${x:.2f}"


def _span(bounds: tuple[float | None, float | None], fmt: Any) -> str:
    lo, hi = bounds
    return "–" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def print_table(estimates: Sequence[PolicyEstimate], out: TextIO) -> None:
    width = max(len("policy"), *(len(e.policy) for e in estimates))
    print(f"{'policy':<{width}}  {'accuracy':>8}  {'95 % interval':<18}  {'cost/10k':>9}  "
          f"{'95 % interval':<20}  {'labels':>7}", file=out)  # fmt: skip
    for e in estimates:
        acc, cost = e.acc, e.cost_per_10k
        print(f"{e.policy:<{width}}  {_pct(acc.value):>8}  {_span(acc.gaussian, _pct):<18}  "
              f"{_usd(cost.value):>9}  {_span(cost.gaussian, _usd):<20}  {e.labels:>7}",
              file=out)  # fmt: skip


def cmd_report(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    prefix = service_settings(args, env).prefix
    with _redis(args, env) as r:
        ev = read_evaluator(r, prefix)
    estimates = ev.estimates(args.scope)
    head = headline(estimates)
    if args.json:
        doc = {"scope": args.scope, "labels": ev.labels, "clipped_costs": ev.clipped_costs,
               "policies": [e.to_json() for e in estimates], "headline": head.to_json()}  # fmt: skip
        print(json.dumps(doc, indent=1))
        return 0
    print(f"off-policy estimates, {args.scope}, over {ev.labels} labelled decisions "
          "(SNIPS; Gaussian 95 % intervals)")  # fmt: skip
    print_table(estimates, sys.stdout)
    print(head.text())
    lo, hi = head.best.acc.gaussian if head.best else (None, None)
    if lo is not None and hi is not None and hi - lo > WIDE_INTERVAL:
        # A rarely drawn arm's SNIPS rests on a few explored labels: say so beside the claim.
        print(f"(few labels for {head.best.policy if head.best else ''}: its accuracy's 95 % "
              f"interval is [{_pct(lo)}, {_pct(hi)}])")  # fmt: skip
    return 0
