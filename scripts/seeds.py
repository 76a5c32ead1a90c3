"""Train a recipe with several seeds and report the held-out figures across seeds.

Each seed is a full `rl-router train` (or the quickstart) with trainer.seed, sft.seed and
model.seed set to it; the held-out tasks stay the same (data.seed is the recipe's). For every
seed: quality, cost and distance above the single-model hull (with two models: the random
cheap/strong line) with their 95% bootstrap
intervals over the held-out tasks; across seeds: the mean and a t-interval. With `--eval`, each
trained router is also run through `rl-router eval` (greedy) and compared, paired over the same
held-out tasks, with every baseline there (per-category, kNN, agreement cascade, oracle, random,
each single model): the router's distance above the single-model hull minus the baseline's, a
cost-adjusted difference (both measured against the same hull at their own costs). Writes
`OUT/seeds.json` and a Markdown table (`OUT/seeds.md`, which README's tables are copied from).

    python scripts/seeds.py [--recipe recipes/quickstart.yaml] [--seeds 0,1,2,3,4] [--out outputs/seeds] [--eval] [--set k=v ...]
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
    ap.add_argument("--eval", action="store_true", help="also run `rl-router eval` on each trained router: paired differences against every baseline")
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
        if a.eval:
            row["vs"] = router_vs_baselines(bin_, run)
        rows.append(row)
    summary = {}
    for stage in ("after_sft", "after"):
        vals = [r[stage] for r in rows if stage in r]
        if vals:
            summary[stage] = {k: seed_spread([v[k] for v in vals]) for k in ("quality", "cost", "above_line")}
    (out / "seeds.json").write_text(json.dumps({"runs": rows, "across_seeds": summary}, indent=1))
    lines = [f"| seed | stage | quality [95%] | $ / 1k tasks [95%] | above single-model hull [95%] (2 models: the random line) | significant |", "|---|---|---|---|---|---|"]
    for r in rows:
        for stage, label in (("after_sft", "warm start"), ("after", "after RL")):
            if stage in r:
                x = r[stage]
                lo, hi = x["above_line_ci95"]
                lines.append(f"| {r['seed']} | {label} | {x['quality']:.3f} [{x['quality_ci95'][0]:.3f}, {x['quality_ci95'][1]:.3f}] | {1000 * x['cost']:.3f} [{1000 * x['cost_ci95'][0]:.3f}, {1000 * x['cost_ci95'][1]:.3f}] | {x['above_line']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {'yes' if lo > 0 or hi < 0 else 'no'} |")
    for stage, label in (("after_sft", "warm start"), ("after", "after RL")):
        if stage in summary and summary[stage]["above_line"].get("ci95"):  # an interval across seeds needs two
            s = summary[stage]["above_line"]
            q, c = summary[stage]["quality"], summary[stage]["cost"]
            lines.append(f"| mean of {s['n']} seeds | {label} | {q['mean']:.3f} (sd {q.get('sd', 0):.3f}) | {1000 * c['mean']:.3f} (sd {1000 * c.get('sd', 0):.3f}) | {s['mean']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] (t, seeds) | {'yes' if s['ci95'][0] > 0 or s['ci95'][1] < 0 else 'no'} |")
    if a.eval:
        lines += ["", *vs_table(rows)]
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


LEARNED = ("per-category", "knn-tfidf", "agreement cascade", "random", "oracle")


def router_vs_baselines(bin_: str, run: Path) -> dict:
    """`rl-router eval RUN` (greedy, once per run), then the router's paired figures against each baseline."""
    ev = run / "eval"
    if not (ev / "eval.json").exists():
        subprocess.run([bin_, "eval", str(run), "--no-sampled", "--output-dir", str(ev)], check=True, env={**os.environ, "RL_ROUTER_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL)
    e = json.loads((ev / "eval.json").read_text())
    router = next(k for k in e["policies"] if k.startswith("router"))
    p = e["policies"][router]
    out = {"_router": {"above_hull": p["above_hull"], "quality": p["quality"], "cost": p["mean_cost"]}}
    for b, v in p["vs"].items():
        out[b] = {"above_hull": v["above_hull"]["value"], "above_hull_ci95": v["above_hull"]["ci95"],
                  "quality": v["quality"]["mean"], "quality_ci95": v["quality"]["ci95"], "cost": v["cost"]["mean"],
                  "baseline_quality": e["policies"][b]["quality"], "baseline_cost": e["policies"][b]["mean_cost"]}
    return out


def vs_table(rows: list[dict]) -> list[str]:
    """Router minus baseline, per seed: above the hull (cost-adjusted), and quality at the costs each ran at."""
    names = [b for b in LEARNED if all(b in r.get("vs", {}) for r in rows)]
    singles = sorted({b for r in rows for b in r.get("vs", {}) if b.startswith("always-")}, key=lambda b: -rows[0]["vs"][b]["baseline_quality"])
    lines = ["| seed | router minus | baseline quality, $ / 1k | above hull: router - baseline [95%] | quality: router - baseline [95%] | router ahead at equal cost? |", "|---|---|---|---|---|---|"]
    for r in rows:
        for b in [*names, *singles[:1]]:
            v = r["vs"][b]
            lo, hi = v["above_hull_ci95"]
            verdict = "yes" if lo > 0 else ("behind" if hi < 0 else "not significant")
            lines.append(f"| {r['seed']} | {b} | {v['baseline_quality']:.3f}, {1000 * v['baseline_cost']:.3f} | {v['above_hull']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {v['quality']:+.3f} [{v['quality_ci95'][0]:+.3f}, {v['quality_ci95'][1]:+.3f}] | {verdict} |")
    return lines


if __name__ == "__main__":
    main()
