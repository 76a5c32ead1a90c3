"""PNG plots: reward / cost / quality over training steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training(log_history: list[dict[str, Any]], path: str | Path, title: str = "training") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in log_history if "reward" in h and "step" in h]
    steps = [h["step"] for h in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, [h["reward"] for h in rows], "o-", color="tab:blue", label="reward (mean of group)")
    if rows and "episode/quality" in rows[0]:
        ax.plot(steps, [h["episode/quality"] for h in rows], "s--", color="tab:green", label="quality")
    ax.set_xlabel("training step")
    ax.set_ylabel("reward / quality")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    if rows and "episode/cost" in rows[0]:
        ax2.plot(steps, [1000 * h["episode/cost"] for h in rows], "^-", color="tab:red", label="cost ($ / 1k tasks)")
    ax2.set_ylabel("cost ($ per 1k tasks)", color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
