"""Printing an EvaluationReport as the paper-style table, and writing its JSON and plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from bandit.evaluation import EvaluationReport
from bandit.pacing_replay import BURN_IN_SHARE, RECOVERY_TOLERANCE, BudgetRow


def _row(name: str, acc: float, cost: float, note: str = "") -> str:
    return f"  {name:<34} {acc * 100:7.2f}%  {cost:10.3f}  {note}"


def print_report(r: EvaluationReport, out: TextIO) -> None:
    sizes = r.split_sizes
    print(
        f"metallm evaluate — {r.dataset}: train {sizes['train']}, val {sizes['val']}, "
        f"test {sizes['test']} (figures on test)",
        file=out,
    )
    print(f"  {'':<34} {'accuracy':>8}  {'USD/10k':>10}", file=out)
    print("  single arms", file=out)
    for name, pt in sorted(r.arms.items(), key=lambda kv: -kv[1].cost_per_10k):
        print(_row("  " + name, pt.acc, pt.cost_per_10k), file=out)
    print(_row("oracle (cheapest correct arm)", r.oracle.acc, r.oracle.cost_per_10k), file=out)
    print(_row("random router", r.random.acc, r.random.cost_per_10k), file=out)
    for mode in ("decoupled", "paper"):
        print(f"  router, {mode} mode, at fixed p", file=out)
        for row in r.router:
            if row.mode == mode and row.budget_of is None:
                print(_row(f"  p = {row.p:g}", row.acc, row.cost_per_10k), file=out)
        print(f"  router, {mode} mode, at the budget of each arm (p calibrated on val)", file=out)
        for row in r.router:
            if row.mode == mode and row.budget_of is not None:
                budget = r.arms[row.budget_of]
                note = (
                    f"vs {budget.acc * 100:.2f}% at {budget.cost_per_10k:.3f} "
                    f"({row.cost_per_10k / budget.cost_per_10k:.0%} of its cost)"
                )
                print(
                    _row(
                        f"  budget of {row.budget_of} (p={row.p:.3g})",
                        row.acc,
                        row.cost_per_10k,
                        note,
                    ),
                    file=out,
                )
    a = r.aiq
    print(
        f"  AIQ: router {a['router']:.4f} (paper mode {a['router_paper']:.4f}), zero router "
        f"{a['zero_router']:.4f}, oracle {a['oracle']:.4f}; router − zero router = "
        f"{a['router'] - a['zero_router']:+.4f}",
        file=out,
    )
    print(
        "  online replay (cold start, bandit feedback on train+val once, greedy on test)", file=out
    )
    for o in r.online:
        print(
            f"    {o.mode} {o.explorer} p={o.p:g} ε={o.eps:g}: {o.rounds} rounds, progressive {o.progressive_acc * 100:.2f}% "
            f"at {o.progressive_cost_per_10k:.3f}; test {o.test_acc * 100:.2f}% at {o.test_cost_per_10k:.3f}",
            file=out,
        )
    if r.budget:
        print_budget(r.budget, out)


def print_budget(rows: Sequence[BudgetRow], out: TextIO) -> None:
    """The paced replays: spend error after burn-in, accuracy against the offline router at
    the realised cost (same exploration; without exploration in brackets), price changes."""
    first = rows[0]
    print(
        f"  budget pacing (warm start on train; val+test streamed {first.queries} queries × "
        f"{first.runs} seeded run(s); figures after the first {BURN_IN_SHARE:.0%}; spend "
        "error = |realised − target| ÷ target, mean and worst over runs)",
        file=out,
    )
    print(
        f"    {'target':>14} {'USD/10k':>8} {'realised':>8} {'error':>6} {'worst':>6} "
        f"{'accuracy':>8} {'offline@cost':>12} {'gap pp':>6} {'p end':>7}",
        file=out,
    )
    for b in rows:
        name = f"{b.share:.0%} of dearest"
        note = "" if b.binding else f"  (not binding: the router spends {b.p0_cost_per_10k:.3f} at p = 0)"  # fmt: skip
        if b.price_change_arm:
            rec = (
                f"back within {RECOVERY_TOLERANCE:.0%} after {b.recovery_queries:.0f} queries "
                f"({b.recovered_runs}/{b.runs} runs)"
                if b.recovery_queries is not None
                else "not back within the stream"
            )
            note = f"  {b.price_change_arm} price ×2 halfway: {rec}" + note
        print(
            f"    {name:>14} {b.target_cost_per_10k:8.3f} {b.realised_cost_per_10k:8.3f} "
            f"{b.spend_error:6.2%} {b.spend_error_max:6.2%} {b.acc:8.2%} "
            f"{b.offline_acc_at_cost:7.2%} ({b.offline_greedy_acc_at_cost:.2%}) "
            f"{b.acc_gap_pp:+6.2f} {b.p_final:7.3g}{note}",
            file=out,
        )


def write_json(r: EvaluationReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r.to_json(), indent=2) + "\n")


def write_plot(r: EvaluationReport, path: Path) -> None:
    """The cost–accuracy frontier: single arms, oracle, random, and both routers' sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for name, pt in r.arms.items():
        ax.scatter(pt.cost_per_10k, pt.acc * 100, color="tab:gray", zorder=3)
        ax.annotate(
            name,
            (pt.cost_per_10k, pt.acc * 100),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    for mode, color in (("decoupled", "tab:blue"), ("paper", "tab:orange")):
        pts = sorted((p.cost_per_10k, p.acc * 100) for p in r.sweeps.get(mode, []))
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                marker=".",
                color=color,
                label=f"router ({mode} mode, p sweep)",
            )
    ax.scatter(
        r.oracle.cost_per_10k,
        r.oracle.acc * 100,
        marker="*",
        s=120,
        color="tab:green",
        label="oracle",
    )
    ax.scatter(
        r.random.cost_per_10k,
        r.random.acc * 100,
        marker="x",
        color="tab:red",
        label="random router",
    )
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("USD per 10k queries (test split)")
    ax.set_ylabel("accuracy %")
    ax.set_title(
        f"{r.dataset}: AIQ router {r.aiq['router']:.3f} vs single arms {r.aiq['zero_router']:.3f}"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
