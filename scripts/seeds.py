"""Train a recipe with several seeds and report, across seeds, what RL did and where the router stands.

Each seed is a full `rl-router train` (or the quickstart) with trainer.seed, sft.seed and
model.seed set to it; the held-out tasks stay the same (data.seed is the recipe's). Three tables
(`OUT/seeds.md`, which README's tables are copied from; the numbers in `OUT/seeds.json`):

1. **RL's own contribution**: the router after RL minus the same router before RL (its warm
   start), paired over the same held-out tasks (metrics.json `rl_minus_warm_start`): distance
   above the single-model hull, reward, quality, cost, each with its 95% bootstrap interval;
   across seeds a t-interval and the number of seeds whose interval excludes 0. Beside it, the
   behaviour before and after RL: calls per task, and escalation (a third call) when the first
   two replies agree / disagree.
2. **The router per stage**: quality, cost, distance above the hull, reward [95%].
3. With `--eval`, each trained router goes through `rl-router eval` (greedy) and is compared,
   paired over the same held-out tasks, with every baseline (agreement cascade, per-category,
   kNN, random, oracle, the best single model): the router's distance above the hull minus the
   baseline's, and each baseline's held-out reward under the recipe's reward beside the router's
   (which point of the frontier the reward aims at); across seeds a t-interval of each difference.

Wall time and peak memory (the training process's max RSS) of each run are kept beside it.

A seed folder that already holds a finished run is not trained again: its `metrics.json`, or,
for a run stopped after RL and evaluated with `rl-router eval RUN --against RUN/sft
--no-sampled` (a copied warm start resumed into RL, say), that evaluation, which scored the
router and its warm start on the same held-out tasks (no wall time or memory then: "-").

    python scripts/seeds.py [--recipe recipes/mmlu_pro.yaml] [--seeds 0,1,2,3,4] [--out outputs/seeds] [--eval] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def ci(x: list[float] | tuple[float, float], scale: float = 1.0) -> str:
    return f"[{scale * x[0]:+.3f}, {scale * x[1]:+.3f}]"


def sig(lo_hi: list[float]) -> str:
    lo, hi = lo_hi
    return "yes (above 0)" if lo > 0 else ("yes (below 0)" if hi < 0 else "no")


def train_seed(bin_: str, recipe: str | None, run: Path, sets: list[str], s: int) -> None:
    cmd = [bin_, *(["train", recipe] if recipe else ["quickstart"]), "--output-dir", str(run)]
    for kv in [*sets, f"trainer.seed={s}", f"sft.seed={s}", f"model.seed={s}"]:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "RL_ROUTER_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    (run / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.0f}")
    (run / "max_rss_mb.txt").write_text(f"{usage.ru_maxrss / 1024:.0f}")


def warm_start_label(run: Path) -> str | None:
    """The warm start's policy in RUN/eval/eval.json, if `rl-router eval RUN --against RUN/sft` made it
    (the label keeps the path as typed, relative or not, so the run is matched by its folder's name)."""
    f = run / "eval" / "eval.json"
    if not f.is_file():
        return None
    for k in json.loads(f.read_text())["policies"]:
        if not k.startswith("other router: "):
            continue
        other = Path(k.removeprefix("other router: ").rsplit(" (", 1)[0])
        if other.name == "sft" and other.parent.name in (run.name, run.resolve().name):
            return k
    return None


def metrics_from_eval(run: Path, warm_label: str) -> dict[str, Any]:
    """What this script reads of metrics.json, for a run whose RL stage was stopped before training's
    own held-out evaluation and evaluated with `rl-router eval RUN --against RUN/sft --no-sampled`
    (e.g. a warm start copied into a new folder, then `rl-router train ... --resume`): one pass
    evaluates the router and its warm start on the same held-out tasks, so the RL-minus-warm-start
    figure is paired as training's is. RL steps, kept step, episodes and distinct tasks as
    `rl_counts` reads them for the weights it scored. `warm_label`: the warm start's policy there (`warm_start_label`)."""
    from rl_router.evaluation.comparisons import baseline_references, one_minus_other
    from rl_router.stats import resample_index

    e = json.loads((run / "eval" / "eval.json").read_text())
    pol = e["policies"]
    after, warm = pol[next(k for k in pol if k.startswith("router"))], pol[warm_label]
    n = len(after["per_task"]["reward"])
    d = one_minus_other(after, warm, baseline_references(pol), resample_index(n))
    m: dict[str, Any] = {"heldout_tasks": n, "heldout_after": after, "heldout_after_sft": warm, "rl_minus_warm_start": {k: d[k] for k in ("above_hull", "reward", "quality", "cost")}}
    for stage, s in (("after", after), ("after_sft", warm)):
        m[f"heldout_above_hull_{stage}"], m[f"heldout_above_hull_{stage}_ci95"] = s["above_hull"], s["ci95"]["above_hull"]
    m.update(rl_counts(run, e.get("target")))
    return m


def rl_counts(run: Path, target: str | None) -> dict[str, Any]:
    """RL steps run, the step kept, episodes and distinct tasks, as training's metrics.json reports
    them, for the weights an evaluation scored (eval.json's `target`): RUN/final's training.json,
    written with those weights (the run's steps, episodes and tasks, and its kept step, which may
    be a best-validation step before the last), or an evaluated RL checkpoint's trainer_state.json
    (that checkpoint's own); without either, the RL stage's last checkpoint. The target is matched
    by name inside RUN, as typed paths may be relative or reach RUN through a link."""
    t = Path(target) if target else Path()
    final = run / "final" / "training.json"
    if t.name == "final" and final.is_file():
        tr = json.loads(final.read_text())
        return {"global_step": tr["steps"], "kept_step": tr["kept_step"], "rl_episodes": tr.get("episodes"), "rl_distinct_tasks": tr.get("distinct_tasks")}
    states = sorted(run.glob("rl/checkpoint-*/trainer_state.json"), key=lambda f: int(f.parent.name.rsplit("-", 1)[1]))
    if t.name.startswith("checkpoint-"):
        states = [f for f in states if f.parent.name == t.name and t.parent.name == "rl"]
    if not states:
        return {}
    st = json.loads(states[-1].read_text())
    last = next((x for x in reversed(st["log_history"]) if "episodes/seen" in x), {})
    return {"global_step": st["global_step"], "kept_step": st["global_step"], "rl_episodes": int(last.get("episodes/seen", 0)) or None, "rl_distinct_tasks": int(last.get("episodes/distinct_tasks", 0)) or None}


def stage_row(m: dict[str, Any], stage: str) -> dict[str, Any]:
    h = m[f"heldout_{stage}"]
    return {"quality": h["quality"], "quality_ci95": h["ci95"]["quality"], "cost": h["mean_cost"], "cost_ci95": h["ci95"]["mean_cost"], "reward": h["reward"], "reward_ci95": h["ci95"]["reward"],
            "above_hull": m[f"heldout_above_hull_{stage}"], "above_hull_ci95": m[f"heldout_above_hull_{stage}_ci95"], "routes": h["routes_per_task"], "behaviour": h.get("behaviour"),
            "format_error_rate": h["format_error_rate"], "call_share": h["call_share"]}


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
        warm_label = None if (run / "metrics.json").exists() else warm_start_label(run)
        if not (run / "metrics.json").exists() and warm_label is None:
            train_seed(bin_, a.recipe, run, a.sets, s)
        m = metrics_from_eval(run, warm_label) if warm_label else json.loads((run / "metrics.json").read_text())
        row: dict[str, Any] = {"seed": s, "tasks": m["heldout_tasks"], "wall_s": float((run / "wall_s.txt").read_text()) if (run / "wall_s.txt").exists() else None,
                               "max_rss_mb": float((run / "max_rss_mb.txt").read_text()) if (run / "max_rss_mb.txt").exists() else None,
                               "rl_episodes": m.get("rl_episodes"), "rl_distinct_tasks": m.get("rl_distinct_tasks"), "steps": m.get("global_step"), "kept_step": m.get("kept_step")}
        for stage in ("after_sft", "after"):
            if f"heldout_{stage}" in m and f"heldout_above_hull_{stage}" in m:
                row[stage] = stage_row(m, stage)
        if "rl_minus_warm_start" in m:
            d = m["rl_minus_warm_start"]
            row["rl_minus_start"] = {k: {"mean": d[k].get("mean", d[k].get("value")), "ci95": d[k]["ci95"]} for k in ("above_hull", "reward", "quality", "cost")}
        if a.eval:
            row["vs"] = router_vs_baselines(bin_, run)
        rows.append(row)
    summary: dict[str, Any] = {}
    for stage in ("after_sft", "after"):
        vals = [r[stage] for r in rows if stage in r]
        if vals:
            summary[stage] = {k: seed_spread([v[k] for v in vals]) for k in ("quality", "cost", "above_hull", "reward")}
    if all("rl_minus_start" in r for r in rows):
        summary["rl_minus_start"] = {k: seed_spread([r["rl_minus_start"][k]["mean"] for r in rows]) for k in ("above_hull", "reward", "quality", "cost")}
        summary["rl_minus_start"]["seeds_above_0"] = sum(1 for r in rows if r["rl_minus_start"]["above_hull"]["ci95"][0] > 0)
    if a.eval:
        names = sorted({b for r in rows for b in r["vs"] if not b.startswith("_")})
        summary["router_minus"] = {b: seed_spread([r["vs"][b]["above_hull"] for r in rows]) for b in names if all(b in r["vs"] for r in rows)}
    (out / "seeds.json").write_text(json.dumps({"runs": rows, "across_seeds": summary}, indent=1))
    lines = rl_table(rows, summary) + [""] + stage_table(rows, summary)
    if a.eval:
        lines += ["", *vs_table(rows, summary)]
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def behaviour(b: dict[str, Any] | None) -> str:
    if not b:
        return "-"
    ea, ed = b.get("escalation_rate_when_agree"), b.get("escalation_rate_when_disagree")
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    return f"{f(ea)} / {f(ed)}"


def rl_table(rows: list[dict], summary: dict) -> list[str]:
    lines = ["| seed | RL minus warm start: above hull [95%] | reward [95%] | quality [95%] | $ / 1k tasks [95%] | significant (above hull) | calls / task before -> after | escalation when the first two agree / disagree, before -> after | RL steps (kept), episodes, distinct tasks | wall, peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.get("rl_minus_start")
        if not d:
            continue
        b0, b1 = r.get("after_sft", {}), r.get("after", {})
        lines.append(f"| {r['seed']} | {d['above_hull']['mean']:+.3f} {ci(d['above_hull']['ci95'])} | {d['reward']['mean']:+.3f} {ci(d['reward']['ci95'])} | {d['quality']['mean']:+.3f} {ci(d['quality']['ci95'])} | "
                     f"{1000 * d['cost']['mean']:+.3f} {ci(d['cost']['ci95'], 1000)} | {sig(d['above_hull']['ci95'])} | {b0.get('routes', 0):.2f} -> {b1.get('routes', 0):.2f} | "
                     f"{behaviour(b0.get('behaviour'))} -> {behaviour(b1.get('behaviour'))} | {r.get('steps')} ({r.get('kept_step')}), {r.get('rl_episodes')}, {r.get('rl_distinct_tasks')} | "
                     + (f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") is not None else "-") + ", "
                     + (f"{r['max_rss_mb'] / 1024:.1f} GB" if r.get("max_rss_mb") is not None else "-") + " |")
    s = summary.get("rl_minus_start")
    if s and s["above_hull"].get("ci95"):
        n = s["above_hull"]["n"]
        lines.append(f"| mean of {n} seeds (t-interval) | {s['above_hull']['mean']:+.3f} {ci(s['above_hull']['ci95'])} | {s['reward']['mean']:+.3f} {ci(s['reward']['ci95'])} | {s['quality']['mean']:+.3f} {ci(s['quality']['ci95'])} | "
                     f"{1000 * s['cost']['mean']:+.3f} {ci(s['cost']['ci95'], 1000)} | {s['seeds_above_0']} of {n} seeds above 0 | | | | |")
    return lines


def stage_table(rows: list[dict], summary: dict) -> list[str]:
    lines = ["| seed | stage | quality [95%] | $ / 1k tasks [95%] | reward [95%] | above single-model hull [95%] | significant |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for stage, label in (("after_sft", "warm start"), ("after", "after RL")):
            if stage in r:
                x = r[stage]
                lines.append(f"| {r['seed']} | {label} | {x['quality']:.3f} [{x['quality_ci95'][0]:.3f}, {x['quality_ci95'][1]:.3f}] | {1000 * x['cost']:.3f} [{1000 * x['cost_ci95'][0]:.3f}, {1000 * x['cost_ci95'][1]:.3f}] | "
                             f"{x['reward']:.3f} [{x['reward_ci95'][0]:.3f}, {x['reward_ci95'][1]:.3f}] | {x['above_hull']:+.3f} {ci(x['above_hull_ci95'])} | {sig(x['above_hull_ci95'])} |")
    for stage, label in (("after_sft", "warm start"), ("after", "after RL")):
        if stage in summary and summary[stage]["above_hull"].get("ci95"):
            s, q, c, w = summary[stage]["above_hull"], summary[stage]["quality"], summary[stage]["cost"], summary[stage]["reward"]
            lines.append(f"| mean of {s['n']} seeds | {label} | {q['mean']:.3f} (sd {q.get('sd', 0):.3f}) | {1000 * c['mean']:.3f} (sd {1000 * c.get('sd', 0):.3f}) | {w['mean']:.3f} (sd {w.get('sd', 0):.3f}) | "
                         f"{s['mean']:+.3f} {ci(s['ci95'])} (t, seeds) | {sig(s['ci95'])} |")
    return lines


LEARNED = ("agreement cascade", "per-category", "knn-tfidf", "random", "oracle")


def router_vs_baselines(bin_: str, run: Path) -> dict:
    """`rl-router eval RUN` (greedy, once per run), then the router's paired figures against each baseline."""
    ev = run / "eval"
    if not (ev / "eval.json").exists():
        subprocess.run([bin_, "eval", str(run), "--no-sampled", "--output-dir", str(ev)], check=True, env={**os.environ, "RL_ROUTER_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL)
    e = json.loads((ev / "eval.json").read_text())
    router = next(k for k in e["policies"] if k.startswith("router"))
    p = e["policies"][router]
    out: dict[str, Any] = {"_router": {"above_hull": p["above_hull"], "quality": p["quality"], "cost": p["mean_cost"], "reward": p["reward"]}}
    best = e["references"]["best"]
    for b, v in p["vs"].items():
        if b.startswith("always-") and b != f"always-{best}":
            continue
        out[b] = {"above_hull": v["above_hull"]["value"], "above_hull_ci95": v["above_hull"]["ci95"], "quality": v["quality"]["mean"], "quality_ci95": v["quality"]["ci95"], "cost": v["cost"]["mean"],
                  "baseline_quality": e["policies"][b]["quality"], "baseline_cost": e["policies"][b]["mean_cost"], "baseline_reward": e["policies"][b].get("reward"),
                  "baseline_above_hull": e["policies"][b].get("above_hull")}
    return out


def vs_table(rows: list[dict], summary: dict) -> list[str]:
    """Router minus baseline, per seed: above the hull (cost-adjusted) and quality at the costs each ran at, with every policy's reward."""
    names = [b for b in LEARNED if all(b in r.get("vs", {}) for r in rows)] + sorted({b for r in rows for b in r.get("vs", {}) if b.startswith("always-")})
    lines = ["| seed | router minus | baseline: quality, $ / 1k, reward, above hull | router: reward, above hull | above hull: router - baseline [95%] | quality: router - baseline [95%] | router ahead at equal cost? |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        me = r["vs"]["_router"]
        for b in names:
            v = r["vs"][b]
            lo, hi = v["above_hull_ci95"]
            verdict = "yes" if lo > 0 else ("behind" if hi < 0 else "not significant")
            lines.append(f"| {r['seed']} | {b} | {v['baseline_quality']:.3f}, {1000 * v['baseline_cost']:.3f}, {v['baseline_reward']:.3f}, {v['baseline_above_hull']:+.3f} | {me['reward']:.3f}, {me['above_hull']:+.3f} | "
                         f"{v['above_hull']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {v['quality']:+.3f} [{v['quality_ci95'][0]:+.3f}, {v['quality_ci95'][1]:+.3f}] | {verdict} |")
    for b, s in summary.get("router_minus", {}).items():
        if s.get("ci95"):
            lines.append(f"| mean of {s['n']} seeds (t-interval) | {b} | | | {s['mean']:+.3f} {ci(s['ci95'])} | | {sig(s['ci95'])} |")
    return lines


if __name__ == "__main__":
    main()
