"""PNG plots: reward / cost / quality over training steps."""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any


def _smooth(xs: list[float], window: int) -> list[float]:
    """Trailing moving average (the raw per-batch values zig-zag with a few episodes a step)."""
    out = []
    for i in range(len(xs)):
        w = xs[max(0, i - window + 1) : i + 1]
        out.append(sum(w) / len(w))
    return out


def plot_training(log_history: list[dict[str, Any]], path: str | Path, title: str = "training", heldout: dict[str, Any] | None = None) -> Path:
    """Reward and sampled quality per training step (raw points and a moving average) with the
    cost on the right axis, from TRL's log history; with `heldout` (the run's metrics) the
    held-out quality before training, after the warm start and after RL as marks at the ends,
    so a reader sees whether training helped on tasks it never saw."""
    plt = _plt()
    rows = [h for h in log_history if "reward" in h and "step" in h]
    steps = [h["step"] for h in rows]
    win = max(2, len(rows) // 8)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    r = [h["reward"] for h in rows]
    ax.plot(steps, r, "o", color="tab:blue", alpha=0.3, ms=3)
    ax.plot(steps, _smooth(r, win), "-", color="tab:blue", lw=2, label=f"reward (batch mean; line: {win}-step average)")
    if rows and "episode/quality" in rows[0]:
        q = [h["episode/quality"] for h in rows]
        ax.plot(steps, q, "s", color="tab:green", alpha=0.3, ms=3)
        ax.plot(steps, _smooth(q, win), "--", color="tab:green", lw=2, label="sampled quality (average)")
    if heldout and steps:
        marks = [("heldout_before", steps[0], "initial"), ("heldout_after_sft", steps[0], "after warm start"), ("heldout_after", steps[-1], "after RL")]
        for key, x, label in marks:
            if key in heldout:
                ax.scatter([x], [heldout[key]["quality"]], marker="*", s=140, zorder=4, edgecolors="black", linewidths=0.5, label=f"held-out quality, {label}: {heldout[key]['quality']:.3f}")
    ax.set_xlabel("training step")
    ax.set_ylabel("reward / quality")
    return _cost_axis(ax, steps, [h.get("episode/cost", 0.0) for h in rows], title, path)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cost_axis(ax: Any, xs: list[Any], costs_usd: list[float], title: str, path: str | Path) -> Path:
    """Right-hand cost axis ($ per 1k tasks), one legend for both axes, save and close."""
    plt = _plt()
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(xs, [1000 * c for c in costs_usd], "^-", color="tab:red", label="cost ($ / 1k tasks)")
    ax2.set_ylabel("cost ($ per 1k tasks)", color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=8)
    ax.set_title(title)
    fig = ax.figure
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_frontier(result: dict[str, Any], path: str | Path) -> Path:
    """Cost-quality plane: every policy a point (named in the legend with its figures, so no
    label sits on another), its 95% intervals as error bars, the random mixture line, the
    oracle frontier, the kNN threshold sweep, the router's cost-knob curve (eval --curve; APGR
    and its interval in the legend) and (if swept) the router's budget curve with each
    point's budget written beside it. Cost in $ per 1k tasks. A policy whose pool calls failed
    is flagged in the legend and the title: its point is not a real outcome."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5.6), dpi=120)
    styles = {
        "oracle frontier": dict(color="black", ls="-", lw=1.5),
        "single-model hull": dict(color="grey", ls="--", lw=1.4),
        "knn-tfidf sweep": dict(color="tab:purple", ls=":", lw=1.2, marker="."),
        "per-category sweep": dict(color="tab:olive", ls=":", lw=1.2, marker="."),
        "router budget sweep": dict(color="tab:red", ls="-.", lw=1.2, marker="."),
        "router knob sweep": dict(color="tab:red", ls="-", lw=1.6, marker="o", ms=3),
    }
    for name, pts in result["curves"].items():
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot([1000 * x for x in xs], ys, label=name, **styles.get(name, {}))
    apgr = {name: sc for name, sc in (result.get("scores") or {}).items() if "apgr_ci95" in sc}
    for line in ax.get_lines():  # the curves' APGR with its interval, in the legend
        sc = apgr.get(line.get_label())
        if sc and sc.get("apgr") is not None:  # one task (eval --n 1): no APGR, and no interval
            ci = sc.get("apgr_ci95") or (None, None)
            shown = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if None not in ci and all(math.isfinite(c) for c in ci) else ""
            line.set_label(f"{line.get_label()}: APGR {sc['apgr']:.3f}{shown}")
    for row in result.get("budget_sweep") or []:
        ax.annotate(f"${row['budget']:g}", (1000 * row["mean_cost"], row["quality"]), textcoords="offset points", xytext=(4, 4), fontsize=7, color="tab:red")
    markers = {"always-": "s", "random": "D", "oracle": "*", "knn-tfidf": "P", "per-category": "X", "agreement cascade": "^"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    frontier = {f"always-{m['model']}" for m in result.get("single_models", []) if m["frontier"]}
    failing = []
    for i, (name, s) in enumerate(result["policies"].items()):
        mk = next((v for k, v in markers.items() if name.startswith(k)), "o")
        router = name in result.get("routers", [])
        if name.startswith("always-") and name not in frontier:
            name = f"{name} (dominated)"
        ci = s.get("ci95") or {}
        x, y = 1000 * s["mean_cost"], s["quality"]
        xerr = [[x - 1000 * ci["mean_cost"][0]], [1000 * ci["mean_cost"][1] - x]] if "mean_cost" in ci else None
        yerr = [[y - ci["quality"][0]], [ci["quality"][1] - y]] if "quality" in ci else None
        bad = (s.get("pool_error_rate") or 0) > 0
        if bad:
            failing.append(name)
        label = f"{name}: {y:.3f} @ ${x:.3f}" + (f"  [{s['pool_error_rate']:.0%} POOL ERRORS]" if bad else "")
        hollow = name.endswith("(dominated)")
        colour = "tab:red" if router else colours[i % len(colours)]
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt=mk, color=colour, mfc="none" if hollow else colour, ms=11 if router else 7, mec=colour if hollow else "white", mew=0.8 if hollow else 0.5,
                    elinewidth=0.8, capsize=2, zorder=3, label=label, alpha=0.7 if hollow else 1.0)
    xs_all = [1000 * s["mean_cost"] for s in result["policies"].values() if s["mean_cost"] > 0]
    ax.set_xscale("symlog", linthresh=min([0.1] + [x / 2 for x in xs_all]))  # log above the cheapest point, linear down to 0
    ax.set_xlabel("cost ($ per 1k tasks, symlog)")
    ax.set_ylabel("quality (accuracy / EM / success)")
    title = f"Cost-quality frontier, {result['tasks']} held-out tasks, budget ${result['budget']}/task"
    if failing:
        title += f"\nWARNING: pool errors in {', '.join(failing)}"
    ax.set_title(title, color="tab:red" if failing else "black", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_budget_sweep(rows: list[dict[str, Any]], path: str | Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    b = [r["budget"] for r in rows]
    ax.plot(b, [r["quality"] for r in rows], "o-", color="tab:green", label="quality")
    ax.set_xscale("log")
    ax.set_xlabel("per-task budget ($, log)")
    ax.set_ylabel("quality")
    return _cost_axis(ax, b, [r["mean_cost"] for r in rows], "Router under inference-time budgets", path)


def plot_checkpoints(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Held-out reward, quality and cost per RL checkpoint; step 0 is the warm start (SFT) the
    RL stage began from, when the run has one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    steps = [r["step"] for r in rows]
    if steps and steps[0] == 0:
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.annotate("warm start", (0, rows[0]["quality"]), textcoords="offset points", xytext=(4, 6), fontsize=7, color="grey")
    ax.plot(steps, [r["reward"] for r in rows], "o-", color="tab:blue", label="held-out reward")
    ax.plot(steps, [r["quality"] for r in rows], "s--", color="tab:green", label="held-out quality")
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("reward / quality")
    return _cost_axis(ax, steps, [r["mean_cost"] for r in rows], "Held-out reward and cost over checkpoints", path)
