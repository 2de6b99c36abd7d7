"""Per-arm drift detection on recorded outcomes (not a test): detection delay, accuracy lost
until recovery with and without the detector (+ boost), and false alarms on the unchanged
stream — the figures of the README's "Drift" section, and the table that chose the
detector's defaults.

The stream: a policy warm-started with full information on the train split (as the
service starts from `metallm train`), then validation + test streamed ``--passes`` times,
each pass in its own order (seeded), ε-greedy as configured, learning each label at the
online learning rate. At query ``--drift-at`` (default: after the first pass) the recorded
outcomes of arm ``--arm`` are replaced by those of arm ``--like`` (a provider silently
serving a weaker model at the old price) for the rest of the stream.

1. Sweep (open loop): each run's residual stream (arm, observed − P̂ of the arm drawn) is
   recorded without any reaction, then every detector setting of the grid is run over it:
   delay (labels of the drifted arm from the drift to its detection) on the drifted runs,
   false alarms per 10,000 labels on the unchanged runs (every arm).
2. Closed loop: the drifted stream with no detector, and with the default detector whose
   detection raises the arm's exploration floor to ``boost_share`` for ``boost_labels`` of
   its labels (``Policy.decide_lines(floor=)``); a reference policy that knew the change
   (warm-started on the drifted outcomes) gives the accuracy reachable after it. Accuracy is
   expected accuracy per query (the pmf times the outcomes), so exploration draws add no noise.

    .venv/bin/python scripts/bench_drift.py --dataset overruling --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from bandit.config import builtin_config
from bandit.datasets import load_dataset, make_split
from bandit.drift import DriftConfig, DriftDetectors
from bandit.embedder import Embedder, default_cache_dir
from bandit.evaluation import Experiment
from bandit.policy import Policy

ADWIN_DELTAS = (0.5, 0.3, 0.1, 0.02, 2e-3, 1e-4)
PH_SETTINGS = ((0.0, 3.0), (0.02, 3.0), (0.02, 5.0), (0.05, 5.0), (0.05, 10.0), (0.05, 20.0))
RECOVERY_WINDOW = 100  # queries in the rolling windows recovery is judged on
# Recovered: the drifted arm's greedy share within 5 pp of the reference's.
RECOVERY_TOLERANCE = 0.05


@dataclass
class Trace:
    """One run: per query, the arm drawn, the greedy arm, the expected accuracy (pmf ·
    outcomes) and the residual of the arm drawn; and the detections (query, arm)."""

    arms: list[int] = field(default_factory=list)
    greedy: list[int] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)


def stream(ex: Experiment, passes: int, seed: int, cold: bool = False) -> np.ndarray:
    """Validation + test (a cold start: every row) ``passes`` times, each pass in its own order."""
    rows = np.arange(len(ex.ds)) if cold else np.concatenate([ex.split.val, ex.split.test])
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(rows) for _ in range(passes)])


def run(ex: Experiment, warm: bytes, rows: np.ndarray, truth_at: list[np.ndarray], seed: int,
        detectors: DriftDetectors | None = None, boost: bool = False) -> Trace:  # fmt: skip
    """``truth_at[t]``: the outcome matrix (queries × arms) in force at query t."""
    policy = Policy.from_bytes(warm)
    policy = policy.with_config(policy.config.for_online())
    policy.reseed(seed)
    names, out = policy.arm_names, Trace()
    share = detectors.config.boost_share if detectors else 0.0
    for t, i in enumerate(rows):
        floor = None
        if boost and detectors is not None:
            left = detectors.boost_left()
            if left:
                floor = np.array([share if a in left else 0.0 for a in names])
        (d,) = policy.decide_lines([ex.shared[i]], floor=floor)
        truth = truth_at[t][i]
        a = float(truth[d.arm])
        predicted = float(d.scores[d.arm] + policy.config.p * policy.costs[d.arm])
        policy.learn_line(ex.shared[i], d.arm, d.prob, a, float(policy.costs[d.arm]))
        out.arms.append(d.arm)
        out.greedy.append(d.greedy)
        out.expected.append(float(d.pmf @ truth))
        out.residuals.append(a - predicted)
        if detectors is not None and detectors.update(names[d.arm], a, predicted):
            out.events.append((t, names[d.arm]))
    return out


def replay_detector(trace: Trace, names: tuple[str, ...], config: DriftConfig) -> list[tuple[int, str]]:  # fmt: skip
    """The detections ``config`` makes on a recorded residual stream (open loop)."""
    det, events = DriftDetectors(config), []
    for t, (arm, r) in enumerate(zip(trace.arms, trace.residuals, strict=True)):
        if det.update(names[arm], r, 0.0):
            events.append((t, names[arm]))
    return events


def delay(trace: Trace, events: list[tuple[int, str]], arm: int, name: str, t0: int) -> tuple[int | None, int]:  # fmt: skip
    """(labels of the drifted arm from the drift to its first detection after it, or None;
    detections that were not it: on other arms, or before the drift)."""
    hit = next((t for t, a in events if a == name and t >= t0), None)
    false = sum(1 for t, a in events if a != name or t < t0)
    if hit is None:
        return None, false
    return int(sum(1 for x in trace.arms[t0 : hit + 1] if x == arm)), false


def recovery(trace: Trace, ref: Trace, arm: int, t0: int) -> tuple[float, int | None]:
    """(queries lost: Σ over queries after the drift of the reference's expected accuracy
    minus this run's; queries after the drift until the share of queries whose greedy arm
    is the drifted arm, over a rolling window, first comes within ``RECOVERY_TOLERANCE`` of
    the reference's, or None)."""
    lost = float(np.sum(np.array(ref.expected[t0:]) - np.array(trace.expected[t0:])))
    w = RECOVERY_WINDOW
    mine = np.convolve(np.array(trace.greedy[t0:]) == arm, np.ones(w) / w, mode="valid")
    theirs = np.convolve(np.array(ref.greedy[t0:]) == arm, np.ones(w) / w, mode="valid")
    ok = np.flatnonzero(np.abs(mine - theirs) <= RECOVERY_TOLERANCE)
    return lost, (int(ok[0]) + w if ok.size else None)


def spread(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{np.mean(xs):.1f} [{min(xs):.0f}, {max(xs):.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--dataset", default="overruling", choices=("overruling", "arc"))
    ap.add_argument("--data-dir", default=os.environ.get("METALLM_DATA_DIR"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--passes", type=int, default=4, help="passes over validation + test")
    ap.add_argument("--arm", default="gpt-4", help="the arm that drifts")
    ap.add_argument("--like", default="medium", help="whose recorded outcomes it takes on")
    ap.add_argument("--drift-at", type=int, help="query of the drift (default: after pass 1)")
    ap.add_argument("--no-sweep", action="store_true", help="only the closed-loop comparison")
    ap.add_argument("--sweep-only", action="store_true", help="only the sweep")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="start from an empty policy and stream every row (no warm start)",
    )
    ap.add_argument("--p", type=float, help="price weight p (default: the config's)")
    ap.add_argument(
        "--boosts",
        nargs="+",
        default=["0.02:100", "0.05:100", "0.1:200"],
        metavar="SHARE:LABELS",
        help="boosts compared in the closed loop (the default detector's first)",
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cfg = builtin_config(args.dataset)
    cache = str(default_cache_dir() / "embeddings")  # the cache `metallm evaluate` fills
    cfg = replace(cfg, embedder=replace(cfg.embedder, cache_dir=cache))
    if args.p is not None:
        cfg = replace(cfg, policy=cfg.policy.replace(p=args.p))
    ds = load_dataset(args.dataset, args.data_dir)
    ex = Experiment(ds, Embedder(cfg.embedder).embed_cached(list(ds.texts)), make_split(ds), cfg)
    names = ex.arm_names
    arm, like = names.index(args.arm), names.index(args.like)
    base = ex.correct
    drifted = base.copy()
    drifted[:, arm] = base[:, like]
    t_start = time.perf_counter()
    # The world after the drift, known from the start: the reference.
    ex_ref = Experiment(ds, ex._vectors, ex.split, cfg)
    ex_ref.correct = drifted
    if args.cold:
        warm = ref_warm = ex.new_policy(cfg.policy).to_bytes()
    else:
        warm = ex.warm_policy(cfg.policy).to_bytes()
        ref_warm = ex_ref.warm_policy(cfg.policy).to_bytes()
    n = len(stream(ex, args.passes, 0, args.cold))
    t0 = args.drift_at if args.drift_at is not None else n // args.passes
    start = ("cold start, every row" if args.cold
             else f"warm start on {len(ex.split.train)} train rows, validation + test")  # fmt: skip
    print(f"{args.dataset}: {start}; {n} queries per run "
          f"({args.passes} passes, each in a seeded order), ε = {cfg.policy.epsilon}, "
          f"p = {cfg.policy.p}; at query {t0} {args.arm} (acc {base[:, arm].mean():.3f}) starts "
          f"answering as {args.like} (acc {base[:, like].mean():.3f}); seeds {args.seeds}")  # fmt: skip

    still = [base] * n
    moved = [base] * t0 + [drifted] * (n - t0)
    if not args.no_sweep:
        calm = [run(ex, warm, stream(ex, args.passes, s, args.cold), still, s) for s in args.seeds]
        hit = [run(ex, warm, stream(ex, args.passes, s, args.cold), moved, s) for s in args.seeds]
        labels = sum(len(tr.arms) for tr in calm)
        after = [int(np.sum(np.array(tr.arms[t0:]) == arm)) for tr in hit]
        print(
            f"\nlabels of {args.arm} after the drift, per run: {spread([float(x) for x in after])}"
        )
        print(f"\n1. sweep, open loop: false alarms over {labels} unchanged labels (all arms), "
              f"delay over {len(hit)} drifted runs")  # fmt: skip
        print(f"{'detector':>28} {'false/10k':>9} {'delay (labels of the arm): mean [min, max]':>44} "
              f"{'missed':>6} {'other alarms':>12}")  # fmt: skip
        grid = [DriftConfig(detector="adwin", delta=d) for d in ADWIN_DELTAS]
        grid += [
            DriftConfig(detector="page_hinkley", ph_delta=d, ph_threshold=h) for d, h in PH_SETTINGS
        ]
        for c in grid:
            false = sum(len(replay_detector(tr, names, c)) for tr in calm)
            found = [delay(tr, replay_detector(tr, names, c), arm, args.arm, t0) for tr in hit]
            delays = [float(d) for d, _ in found if d is not None]
            what = (f"adwin δ={c.delta:g}" if c.detector == "adwin"
                    else f"page_hinkley δ={c.ph_delta:g} λ={c.ph_threshold:g}")  # fmt: skip
            print(f"{what:>28} {false / labels * 10_000:>9.2f} {spread(delays):>44} "
                  f"{len(found) - len(delays):>6} {sum(f for _, f in found):>12}")  # fmt: skip

    if args.sweep_only:
        return
    default = DriftConfig()
    print(f"\n2. closed loop, default detector {default.detector} (ADWIN δ={default.delta:g}; "
          f"Page-Hinkley δ={default.ph_delta:g} λ={default.ph_threshold:g}; min labels "
          f"{default.min_labels}); reference: a policy that knew the drift from the start")  # fmt: skip
    boosts = [tuple(map(float, b.split(":"))) for b in args.boosts]
    reactions: dict[str, DriftConfig | None] = {"none": None, "detector alone": default}
    for share, k in boosts:
        reactions[f"boost {share:g} × {k:g}"] = replace(
            default, boost_share=share, boost_labels=int(k)
        )
    got_by: dict[str, list[tuple[float, int | None, int | None]]] = {k: [] for k in reactions}
    false_closed = labels_closed = 0
    for s in args.seeds:
        order = stream(ex, args.passes, s, args.cold)
        ref = run(ex_ref, ref_warm, order, [drifted] * n, s)
        for kind, conf in reactions.items():
            det = DriftDetectors(conf) if conf is not None else None
            tr = run(ex, warm, order, moved, s, det, boost=kind.startswith("boost"))
            lost, back = recovery(tr, ref, arm, t0)
            d, _ = delay(tr, tr.events, arm, args.arm, t0)
            got_by[kind].append((lost, back, d))
        first = replace(default, boost_share=boosts[0][0], boost_labels=int(boosts[0][1]))
        calm_tr = run(ex, warm, order, still, s, DriftDetectors(first), boost=True)
        false_closed += len(calm_tr.events)
        labels_closed += n
    print(f"{'reaction':>18} {'queries lost after the drift':>30} {'mis-sending until query':>26} "
          f"{'delay (labels)':>18} {'not recovered':>13}")  # fmt: skip
    for kind, got in got_by.items():
        backs = [float(b) for _, b, _ in got if b is not None]
        ds_ = [float(d) for _, _, d in got if d is not None]
        print(f"{kind:>18} {spread([lost for lost, _, _ in got]):>30} {spread(backs):>26} "
              f"{spread(ds_):>18} {len(got) - len(backs):>13}")  # fmt: skip
    print(f"false alarms of the default, closed loop with boost {args.boosts[0]}, unchanged "
          f"stream: {false_closed} in {labels_closed} labels "
          f"({false_closed / labels_closed * 10_000:.2f} per 10k)")  # fmt: skip
    print(f"({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
