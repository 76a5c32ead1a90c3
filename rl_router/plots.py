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
    """Four panels a reader can judge RL by, from TRL's log history and the run's metrics
    (`heldout`): (1) the held-out learning curve, the router's distance above the single-model
    hull at each evaluated step with its 95% interval band (step 0: the warm start; training
    never sees these tasks), or, without a curve, the held-out marks before / after;
    (2) reward: the training batches (points, moving average) and the held-out curve;
    (3) cost per 1k tasks, training and held-out; (4) the signal: share of groups with zero
    reward variance (no GRPO gradient), format errors, entropy of the route decision (nats)
    and routes per episode."""
    plt = _plt()
    rows = [h for h in log_history if "reward" in h and "step" in h]
    steps = [h["step"] for h in rows]
    win = max(2, len(rows) // 10)
    curve = [p for p in (heldout or {}).get("curve") or [] if "heldout" in p]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), dpi=110)
    (a1, a2), (a3, a4) = axes
    # (1) held-out above hull
    if curve:
        xs = [p["step"] for p in curve]
        ys = [p["heldout"].get("above_hull") or 0.0 for p in curve]
        lo = [p["heldout"]["ci95"].get("above_hull", [y, y])[0] for p, y in zip(curve, ys)]
        hi = [p["heldout"]["ci95"].get("above_hull", [y, y])[1] for p, y in zip(curve, ys)]
        a1.fill_between(xs, lo, hi, color="tab:red", alpha=0.15, label="95% interval (bootstrap over tasks)")
        a1.plot(xs, ys, "o-", color="tab:red", lw=2, ms=4, label=f"router, greedy, {curve[0]['heldout'].get('tasks', '?')} held-out tasks")
        a1.axhline(0, color="grey", lw=1, ls="--", label="single-model hull")
        kept = (heldout or {}).get("kept_step")
        if kept is not None and kept in xs:
            a1.scatter([kept], [ys[xs.index(kept)]], marker="*", s=180, color="gold", edgecolors="black", zorder=5, label=f"kept (best validation reward): step {kept}")
        a1.set_ylabel("quality above the hull at its cost")
        a1.legend(fontsize=7, loc="best")
    else:
        marks = [(k, lab) for k, lab in (("heldout_above_hull_before", "initial"), ("heldout_above_hull_after_sft", "after warm start"), ("heldout_above_hull_after", "after RL")) if k in (heldout or {})]
        for i, (k, lab) in enumerate(marks):
            v, (l, h) = heldout[k], heldout[k + "_ci95"]
            a1.errorbar([i], [v], yerr=[[max(v - l, 0.0)], [max(h - v, 0.0)]], fmt="o", capsize=3)  # a percentile interval need not contain the point
        a1.set_xticks(range(len(marks)), [lab for _, lab in marks])
        a1.axhline(0, color="grey", lw=1, ls="--")
        a1.set_ylabel("held-out quality above the hull")
    a1.set_title("held-out: above the single-model hull", fontsize=9)
    a1.set_xlabel("RL step")
    # (2) reward
    r = [h["reward"] for h in rows]
    if rows:
        a2.plot(steps, r, ".", color="tab:blue", alpha=0.25, ms=3)
        a2.plot(steps, _smooth(r, win), "-", color="tab:blue", lw=2, label=f"training batches ({win}-step average)")
    if curve:
        a2.plot([p["step"] for p in curve], [p["heldout"]["reward"] for p in curve], "o-", color="tab:red", ms=4, label="held-out, greedy")
        val = [p for p in curve if "validation" in p]
        if val:
            a2.plot([p["step"] for p in val], [p["validation"]["reward"] for p in val], "s--", color="tab:purple", ms=3, label="validation, greedy")
    a2.set_title("reward (the recipe's)", fontsize=9)
    a2.set_xlabel("RL step")
    a2.legend(fontsize=7, loc="best")
    # (3) cost
    if rows and "episode/cost" in rows[0]:
        c = [1000 * h.get("episode/cost", 0.0) for h in rows]
        a3.plot(steps, c, ".", color="tab:orange", alpha=0.25, ms=3)
        a3.plot(steps, _smooth(c, win), "-", color="tab:orange", lw=2, label="training batches")
    if curve:
        a3.plot([p["step"] for p in curve], [1000 * p["heldout"]["mean_cost"] for p in curve], "o-", color="tab:red", ms=4, label="held-out, greedy")
    a3.set_title("cost ($ per 1k tasks)", fontsize=9)
    a3.set_xlabel("RL step")
    a3.legend(fontsize=7, loc="best")
    # (4) signal
    for key, lab, col in (("signal/zero_std_groups", "groups with zero reward variance", "black"), ("episode/format_error_rate", "format errors", "tab:red"),
                          ("decision/route_entropy", "route decision entropy (nats)", "tab:green")):
        ys = [h[key] for h in rows if key in h]
        if ys:
            a4.plot([h["step"] for h in rows if key in h], _smooth(ys, win), "-", color=col, lw=1.6, label=lab)
    routes = [h["episode/routes"] for h in rows if "episode/routes" in h]
    if routes:
        a4b = a4.twinx()
        a4b.plot([h["step"] for h in rows if "episode/routes" in h], _smooth(routes, win), ":", color="tab:blue", lw=1.6, label="routes per episode (right)")
        a4b.set_ylabel("routes per episode", color="tab:blue")
        h1, l1 = a4.get_legend_handles_labels()
        h2, l2 = a4b.get_legend_handles_labels()
        a4.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    else:
        a4.legend(fontsize=7, loc="best")
    a4.set_title(f"signal ({win}-step averages)", fontsize=9)
    a4.set_xlabel("RL step")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


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
