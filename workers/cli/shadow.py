"""``metallm shadow add|list|remove|promote``: candidate policies the learner evaluates on
the live traffic without routing anything, and their promotion to the live model.

Candidates live in Redis (workers/service/evaluation.py's ``OPEKeys``); the learner picks
up a change within a few seconds. ``promote`` checks the committed estimates and asks the
learner to continue from the candidate; the learner publishes it as the next model version
at its next commit, and the routers hot-reload it."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bandit.errors import MetalLMError
from bandit.ope import LIVE, OffPolicyEvaluator, shadow_policy
from workers.cli.client import _redis
from workers.cli.options import (
    add_config_source,
    add_redis_options,
    routing_config,
    service_settings,
)
from workers.cli.report import read_evaluator
from workers.service.evaluation import OPEKeys, check_shadow_name, load_candidate
from workers.service.settings import Keys

log = logging.getLogger("metallm")
DEFAULT_PROMOTE_WAIT_S = 30.0
POLL_S = 0.2


def register(sub: Any) -> None:
    shadow = sub.add_parser("shadow", help="candidate policies evaluated beside the live one",
                            description="Register policy snapshots as shadow candidates: the "
                            "learner estimates, for every labelled decision, what each would "
                            "have scored and cost (metallm report shows them); promote one to "
                            "be the live model.")  # fmt: skip
    cmds = shadow.add_subparsers(dest="shadow_command", required=True, metavar="SUBCOMMAND")
    add = cmds.add_parser("add", help="register a policy snapshot as a candidate",
                          description="Register FILE (a policy snapshot, e.g. policy.bin of "
                          "--model-dir) as candidate NAME; refused when its arms differ from the "
                          "config's.")  # fmt: skip
    add.add_argument("file", help="policy snapshot file")
    add.add_argument("--name", required=True, help="the candidate's name (shadow:NAME in reports)")
    add_config_source(add)
    listing = cmds.add_parser("list", help="the candidates and their estimates")
    remove = cmds.add_parser("remove", help="stop evaluating a candidate")
    remove.add_argument("name")
    promote = cmds.add_parser("promote", help="make a candidate the live model",
                              description="Make candidate NAME the live model, only when the lower "
                              "bound of its estimated accuracy (95 %% confidence sequence) is at least "
                              "the live policy's estimate at no higher estimated cost (cumulative).")  # fmt: skip
    promote.add_argument("name")
    promote.add_argument("--force", action="store_true",
                         help="promote whatever the estimates say (logged as forced)")  # fmt: skip
    promote.add_argument("--wait-s", type=float, default=DEFAULT_PROMOTE_WAIT_S,
                         help="how long to wait for the learner to publish it "
                         f"(default {DEFAULT_PROMOTE_WAIT_S:g}; 0: do not wait)")  # fmt: skip
    for p, handler in ((add, cmd_add), (listing, cmd_list), (remove, cmd_remove),
                       (promote, cmd_promote)):  # fmt: skip
        add_redis_options(p)
        p.set_defaults(handler=handler)


def cmd_add(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    name = check_shadow_name(args.name)
    cfg = routing_config(args, env)
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise MetalLMError(f"cannot read {args.file}: {exc}") from None
    policy = load_candidate(data, cfg.arms.names, name)
    keys = OPEKeys(service_settings(args, env, cfg).prefix)
    with _redis(args, env) as r:
        if r.sismember(keys.shadows, name):
            raise MetalLMError(f"shadow candidate {name!r} exists: remove it first, or pick another name")  # fmt: skip
        with r.pipeline(transaction=True) as pipe:
            pipe.set(keys.shadow(name), data)
            pipe.sadd(keys.shadows, name)
            pipe.execute()
    print(f"added shadow candidate {name!r} ({policy.config.mode} mode, version {policy.version}); "
          "the learner evaluates it from its next labels on")  # fmt: skip
    return 0


def cmd_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    keys = OPEKeys(service_settings(args, env).prefix)
    with _redis(args, env) as r:
        names = sorted(n.decode() for n in r.smembers(keys.shadows))
        ev = read_evaluator(r, keys.prefix) if r.exists(keys.state) else None
    if not names:
        print("no shadow candidates")
    for name in names:
        if ev is None or name not in ev.shadows:
            print(f"{name}: not evaluated yet")
            continue
        print(f"{name}: {Verdict.of(ev, name).figures()}")
    return 0


def cmd_remove(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    keys = OPEKeys(service_settings(args, env).prefix)
    with _redis(args, env) as r, r.pipeline(transaction=True) as pipe:
        pipe.srem(keys.shadows, args.name)
        pipe.delete(keys.shadow(args.name))
        removed, _ = pipe.execute()
    if not removed:
        raise MetalLMError(f"no shadow candidate {args.name!r} (metallm shadow list)")
    print(f"removed shadow candidate {args.name!r}")
    return 0


@dataclass(frozen=True)
class Verdict:
    """Whether a candidate may be promoted: its accuracy's lower bound (the cumulative
    confidence sequence, valid however often it is checked) at least the live policy's
    estimate, at no higher estimated cost (USD per 10k queries)."""

    name: str
    labels: int
    lower: float | None
    live_acc: float | None
    cost: float | None
    live_cost: float | None

    @classmethod
    def of(cls, ev: OffPolicyEvaluator, name: str) -> Verdict:
        cand, live = ev.estimate(shadow_policy(name)), ev.estimate(LIVE)
        lower = cand.acc.cs[0] if cand.acc.cs is not None else None
        return cls(name, cand.labels, lower, live.acc.value, cand.cost_per_10k.value,
                   live.cost_per_10k.value)  # fmt: skip

    def why_not(self) -> str | None:
        """What stands against the promotion, or None."""
        if None in (self.lower, self.live_acc, self.cost, self.live_cost):
            return f"not enough labelled decisions to estimate it ({self.labels})"
        assert self.lower is not None and self.live_acc is not None
        assert self.cost is not None and self.live_cost is not None
        reasons = []
        if self.lower < self.live_acc:
            reasons.append(f"its accuracy's lower bound {self.lower:.1%} is below the live "
                           f"policy's estimate {self.live_acc:.1%}")  # fmt: skip
        if self.cost > self.live_cost:
            reasons.append(f"its estimated cost ${self.cost:.2f} per 10k is above the live "
                           f"policy's ${self.live_cost:.2f}")  # fmt: skip
        return "; ".join(reasons) or None

    def figures(self) -> str:
        def pct(x: float | None) -> str:
            return "–" if x is None else f"{x:.1%}"

        def usd(x: float | None) -> str:
            return "–" if x is None else f"${x:.2f}"

        return (f"accuracy lower bound {pct(self.lower)} (live {pct(self.live_acc)}), cost "
                f"{usd(self.cost)} per 10k (live {usd(self.live_cost)}), {self.labels} labels")  # fmt: skip


def cmd_promote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    settings = service_settings(args, env)
    keys = OPEKeys(settings.prefix)
    with _redis(args, env) as r:
        if not r.sismember(keys.shadows, args.name):
            raise MetalLMError(f"no shadow candidate {args.name!r} (metallm shadow list)")
        ev = read_evaluator(r, settings.prefix)
        if args.name not in ev.shadows:
            why: str | None = "the learner has not evaluated it yet"
            verdict = None
        else:
            verdict = Verdict.of(ev, args.name)
            why = verdict.why_not()
        figures = verdict.figures() if verdict else "no estimates"
        if why and not args.force:
            raise MetalLMError(f"promotion of {args.name!r} refused: {why} ({figures}); "
                               "--force overrides")  # fmt: skip
        if why:
            log.warning("promoting %r against the estimates (--force): %s (%s)", args.name, why, figures)  # fmt: skip
        r.set(keys.promote, json.dumps({"name": args.name, "force": bool(why)}))
        if args.wait_s <= 0:
            print(f"promotion of {args.name!r} requested ({figures})")
            return 0
        deadline = time.monotonic() + args.wait_s
        while r.exists(keys.promote) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if r.exists(keys.promote):
            print(f"promotion of {args.name!r} requested, but no learner took it within "
                  f"{args.wait_s:g} s: the learner of prefix {settings.prefix!r} makes it the "
                  "model at its next commit")  # fmt: skip
            return 1
        # The promotion's commit takes the candidate out of the shadows; a request the
        # learner could not follow (an unusable snapshot) is deleted alone.
        if r.sismember(keys.shadows, args.name):
            raise MetalLMError(f"the learner refused to promote {args.name!r} (see its log)")
        after = int(r.get(Keys(settings.prefix).model_version) or -1)
    print(f"promoted {args.name!r}: live model version {after} ({figures})")
    return 0
