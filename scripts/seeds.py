"""Train a recipe with several seeds and report the held-out figures across seeds.

Each seed is a full `rl-router train` (or the quickstart) with trainer.seed, sft.seed and
model.seed set to it; the held-out tasks stay the same (data.seed is the recipe's). For every
seed: quality, cost and distance above the random cheap/strong line with their 95% bootstrap
intervals over the held-out tasks; across seeds: the mean and a t-interval. Writes
`OUT/seeds.json` and a Markdown table (`OUT/seeds.md`, which README's tables are copied from).

    python scripts/seeds.py [--recipe recipes/quickstart.yaml] [--seeds 0,1,2,3,4] [--out outputs/seeds] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=None, help="recipe YAML (default: the quickstart's embedded defaults)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--out", default="outputs/seeds")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    from rl_router.stats import seed_spread

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bin_ = str(Path(sys.executable).with_name("rl-router"))
    rows = []
    for s in [int(x) for x in a.seeds.split(",")]:
        run = out / f"seed{s}"
        if not (run / "metrics.json").exists():
            cmd = [bin_, *(["train", a.recipe] if a.recipe else ["quickstart"]), "--output-dir", str(run)]
            for kv in [*a.sets, f"trainer.seed={s}", f"sft.seed={s}", f"model.seed={s}"]:
                cmd += ["--set", kv]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env={**os.environ, "RL_ROUTER_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL)
            (run / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.0f}")
        m = json.loads((run / "metrics.json").read_text())
        row = {"seed": s, "tasks": m["heldout_tasks"], "wall_s": float((run / "wall_s.txt").read_text()) if (run / "wall_s.txt").exists() else None}
        for stage in ("after_sft", "after"):
            if f"heldout_{stage}" not in m:
                continue
            h = m[f"heldout_{stage}"]
            row[stage] = {"quality": h["quality"], "quality_ci95": h["ci95"]["quality"], "cost": h["mean_cost"], "cost_ci95": h["ci95"]["mean_cost"],
                          "above_line": m[f"heldout_above_hull_{stage}"], "above_line_ci95": m[f"heldout_above_hull_{stage}_ci95"],
                          "strong_share": max((v for k, v in h["call_share"].items() if k != min(h["call_share"], key=lambda x: 0)), default=0.0), "call_share": h["call_share"], "format_error_rate": h["format_error_rate"]}
        row["baselines"] = {k: {"quality": v["quality"], "cost": v["mean_cost"]} for k, v in m["heldout_baselines"].items()}
        rows.append(row)
    summary = {}
    for stage in ("after_sft", "after"):
        vals = [r[stage] for r in rows if stage in r]
        if vals:
            summary[stage] = {k: seed_spread([v[k] for v in vals]) for k in ("quality", "cost", "above_line")}
    (out / "seeds.json").write_text(json.dumps({"runs": rows, "across_seeds": summary}, indent=1))
    lines = [f"| seed | stage | quality [95%] | $ / 1k tasks [95%] | above random line [95%] | significant |", "|---|---|---|---|---|---|"]
    for r in rows:
        for stage, label in (("after_sft", "warm start"), ("after", "after RL")):
            if stage in r:
                x = r[stage]
                lo, hi = x["above_line_ci95"]
                lines.append(f"| {r['seed']} | {label} | {x['quality']:.3f} [{x['quality_ci95'][0]:.3f}, {x['quality_ci95'][1]:.3f}] | {1000 * x['cost']:.3f} [{1000 * x['cost_ci95'][0]:.3f}, {1000 * x['cost_ci95'][1]:.3f}] | {x['above_line']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {'yes' if lo > 0 or hi < 0 else 'no'} |")
    for stage, label in (("after_sft", "warm start"), ("after", "after RL")):
        if stage in summary:
            s = summary[stage]["above_line"]
            q, c = summary[stage]["quality"], summary[stage]["cost"]
            lines.append(f"| mean of {s['n']} seeds | {label} | {q['mean']:.3f} (sd {q.get('sd', 0):.3f}) | {1000 * c['mean']:.3f} (sd {1000 * c.get('sd', 0):.3f}) | {s['mean']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] (t, seeds) | {'yes' if s['ci95'][0] > 0 or s['ci95'][1] < 0 else 'no'} |")
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
