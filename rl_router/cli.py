"""`rl-router` command line.

Commands:
  quickstart   train the tiny router offline on the embedded defaults (recorded GSM8K pool)
  train        train a router from a recipe (SFT warm start, then GRPO / RLOO / BoPO)
  eval         a checkpoint (or a baseline) vs every baseline: table, eval.json, frontier PNG
  export       a Hub-ready folder (weights, router_config.json, eval.json, model card); --push uploads
  serve        a trained router as an OpenAI-compatible /v1/chat/completions endpoint
  rollout      run policies (the router, always-<model>, random) on a recipe's held-out tasks
  pool-server  serve a pool as an OpenAI-compatible HTTP endpoint (127.0.0.1 by default)
  boundaries   run the boundary policies (always-cheap, always-strong) and classify tasks
  steps-label  record step-level routing data (prefix -> needed tier, per-tier cost) from an agentic env
  steps-replay score a router on recorded step-level data, offline
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rl_router.errors import ConfigError
from rl_router.task_sources import recipe_pool, recipe_tasks

app = typer.Typer(
    help="rl-router: train small LLMs to route tasks across a pool of LLMs under a budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if Console().is_terminal else int(os.environ.get("COLUMNS") or 200))  # pipes and logs: wide enough for the tables


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error[/] {e}")
    raise typer.Exit(2)


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
        share = ", ".join(f"{m} {v:.0%}" for m, v in s.get("call_share", {}).items())
        reward = [f"{s['reward']:.3f}" if "reward" in s else "-"] if with_reward else []
        t.add_row(name, *reward, _pm(s, "quality", 1.0), _pm(s, "mean_cost", 1000.0), f"{qpd:.0f}" if qpd else "-", f"{s['routes_per_task']:.2f}", f"{s['format_error_rate']:.0%}", f"{s['budget_violation_rate']:.0%}", f"{s.get('pool_error_rate', 0.0):.0%}", share)
    return t


def _run_policies(recipe_path: Optional[str], sets: list[str], policies: Optional[list[str]], n: Optional[int], output_dir: Optional[str], batch_size: int, *, greedy: bool, baseline_query: str) -> dict[str, Any]:
    from rl_router.evaluation.evaluator import EvalOptions, Evaluator, baseline_policy, policy_names, router_policy
    from rl_router.recipe import load_recipe
    from rl_router.models import router_from_recipe

    recipe = load_recipe(recipe_path, sets)
    if baseline_query not in ("short", "question"):
        raise ConfigError("--baseline-query", f"unknown {baseline_query!r}", "use short or question")
    pool = recipe_pool(recipe)
    _train, held = recipe_tasks(recipe, pool)
    if n:
        held = held[:n]
    names = policies or policy_names(pool)
    for name in names:
        if name != "router" and name != "random" and not (name.startswith("always-") and pool.has_model(name.removeprefix("always-"))):
            raise ConfigError("--policy", f"unknown policy {name!r}", f"use one of {policy_names(pool)}")
    model, tok = router_from_recipe(recipe)
    summaries: dict[str, dict[str, Any]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False) as prog:
        bars: dict[str, Any] = {}

        def advance(name: str, k: int) -> None:
            if name not in bars:
                bars[name] = prog.add_task(f"{name:<24}", total=len(held))
            prog.advance(bars[name], k)

        ev = Evaluator(recipe, pool, tok, held, options=EvalOptions(baseline_query=baseline_query, batch_size=batch_size), progress=advance)
        ev.set_cost_reference([e["cost"] or 0.0 for m in pool.model_names for e in ev.episodes(f"always-{m}", ev.baseline(f"always-{m}"))])
        for name in names:
            policy = router_policy(model, tok, recipe, greedy=greedy) if name == "router" else baseline_policy(name, tok, pool.model_names, seed=recipe.data.seed, query=baseline_query)
            summaries[name], _ = ev.run(name, policy)
    out = Path(output_dir or recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout_summary.json").write_text(json.dumps({"tasks": len(held), "greedy": greedy, "baseline_query": baseline_query, "policies": summaries}, indent=2))
    console.print(_table(f"{len(held)} held-out tasks, budget ${recipe.env_config().budget}/task", summaries))
    console.print(f"wrote {out / 'rollout_summary.json'}")
    return summaries


def _print_training(metrics: dict[str, Any], out: Path) -> None:
    rows = {"router before training": metrics["heldout_before"]}
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
    stages = [(k, f"heldout_above_random_mixture_{k}") for k in ("before", "after_sft", "after")]
    console.print("above the random cheap/strong mixture at the same cost (95% interval over tasks): " + ", ".join(
        f"{k.replace('_', ' ')} {metrics[m]:+.3f} [{metrics[m + '_ci95'][0]:+.3f}, {metrics[m + '_ci95'][1]:+.3f}]" for k, m in stages if m in metrics))
    console.print(f"wrote {out / 'metrics.json'}, {out / 'training_curves.png'} and the router in {out / 'final'}")


def _train(recipe_path: Optional[str], sets: list[str], output_dir: Optional[str], resume: bool) -> None:
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import train as run_training

    try:
        recipe = load_recipe(recipe_path, sets)
    except ConfigError as e:
        _fail(e)
    out = Path(output_dir or recipe.output_dir)
    try:
        metrics = run_training(recipe, output_dir=str(out), resume=resume, log=lambda m: console.print(m, highlight=False))
    except ConfigError as e:  # checks that need the pool run before any model loads
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(out, recipe_path, sets)
    if metrics.get("is_main_process", True):
        _print_training(metrics, out)


def _interrupted(out: Path, recipe_path: Optional[str], sets: list[str]) -> None:
    """Ctrl-C: say what was kept and the exact command that continues the run, then exit 130."""
    from rl_router.training.pipeline import latest_checkpoint

    rl, sft = latest_checkpoint(out / "rl"), latest_checkpoint(out / "sft_run")
    kept = f"RL checkpoint {rl}" if rl else f"warm-start checkpoint {sft}" if sft else "the finished stages in " + str(out)
    cmd = ["rl-router", "train", recipe_path] if recipe_path else ["rl-router", "quickstart"]
    cmd += [a for s in sets for a in ("--set", shlex.quote(s))] + ["--output-dir", str(out), "--resume"]
    console.print(f"[bold yellow]interrupted[/] kept {kept}; continue with:\n  {' '.join(cmd)}")
    raise typer.Exit(130)


@app.command()
def quickstart(
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Where to write results (default: outputs/quickstart)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in the output dir."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override an embedded default: --set trainer.max_steps=4."),
) -> None:
    """Train the tiny router offline on the embedded defaults (= recipes/quickstart.yaml):
    held-out evaluation, boundary policies, boundary-guided SFT warm start, GRPO, then
    held-out evaluation again, on GSM8K tasks of the recorded pool (real Mixtral-8x7B and
    GPT-4 answers and costs); about 3 minutes on 2 CPU cores. Prints before/after reward,
    quality and cost next to the always-cheap / always-strong / random baselines and how far
    the router lies above the random cheap/strong line; writes metrics.json and
    training_curves.png. Then: rl-router eval outputs/quickstart."""
    _train(None, set_ or [], output_dir, resume)


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe YAML: sections model, pool, env, rollout, rewards, trainer (GRPOConfig fields), algorithm, sft (SFTConfig fields), data."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field, repeatable: --set trainer.learning_rate=1e-5 --set algorithm.name=rloo."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Overrides the recipe's output_dir."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the newest OUT/rl/checkpoint-N (optimizer, scheduler, RNG, step count) and reuse finished stages."),
) -> None:
    """Train a router: held-out eval, boundary policies, boundary-guided SFT warm start
    (TRL SFTTrainer), then GRPO / RLOO / BoPO (TRL GRPOTrainer with our multi-turn rollout
    hook; pool tokens masked out of the loss), then held-out eval. Runs as is on one CPU or
    GPU, or under `accelerate launch --config_file recipes/accelerate/<cfg>.yaml -m
    rl_router.cli train RECIPE`. Logs go to trainer.report_to (tensorboard, wandb, trackio,
    none). Writes OUT/metrics.json, OUT/training_curves.png, OUT/final/."""
    _train(recipe, set_ or [], output_dir, resume)


def _eval_recipe(target: str, recipe_path: Optional[str], sets: list[str]) -> Any:
    from rl_router.recipe import apply_overrides, load_recipe, recipe_from_dict

    if recipe_path is None:  # a training output dir (or its final/) remembers its recipe
        for saved in (Path(target) / "recipe.json", Path(target).parent / "recipe.json"):
            if saved.exists():
                return recipe_from_dict(apply_overrides(json.loads(saved.read_text()), sets))
    return load_recipe(recipe_path, sets)


@app.command("eval")
def eval_(
    target: str = typer.Argument(..., help="A training output dir (uses its final/ and recipe.json), a model folder, 'initial' (the recipe's untrained router), or a baseline name (always-<model>, random, oracle, knn-tfidf) to evaluate the baselines alone."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe YAML (default: TARGET/recipe.json of a training run, else the embedded quickstart)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field, e.g. --set env.budget=0.005."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of held-out tasks."),
    sampled: bool = typer.Option(True, "--sampled/--no-sampled", help="Also run the router sampled (at trainer.temperature), next to greedy."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Comma-separated per-task budgets ($) for an inference-time budget sweep, e.g. 0.0005,0.002,0.01."),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="Also evaluate every OUT/rl/checkpoint-N (greedy) and plot reward/cost over training."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Where to write eval.json and the PNGs (default: TARGET/eval for a run, else RECIPE's output_dir/eval)."),
) -> None:
    """Evaluate a router on the recipe's held-out tasks against always-<model>, random, the
    oracle (cheapest model that solves each task) and a learned TF-IDF kNN router: quality,
    cost, routes, call share, format / budget / pool error rates, latency, reward; PGR and
    RouteLLM-style APGR and CPT(50%) computed by our code; the cost-quality frontier PNG."""
    from rl_router.evaluation.report import evaluate, write_outputs
    from rl_router.models import resolve_checkpoint

    try:
        r = _eval_recipe(target, recipe, set_ or [])
        bl = [float(x) for x in budgets.split(",")] if budgets else None
    except ConfigError as e:
        _fail(e)
    except ValueError as e:
        _fail(ValueError(f"--budgets: {e}; give numbers separated by commas"))
    ck = resolve_checkpoint(target)
    if ck is None and target != "initial" and not (target.startswith("always-") or target in ("random", "oracle", "knn-tfidf")):
        _fail(ValueError(f"{target!r} is neither a model folder, a training output dir, 'initial', nor a baseline name"))
    # beside the target, never into a folder named by a recipe that was copied along with it
    out = Path(output_dir) if output_dir else (ck.parent / "eval" if ck is not None and ck.name == "final" else ck.parent / f"{ck.name}-eval" if ck is not None else Path(r.output_dir) / "eval")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) as prog:
        bars: dict[str, Any] = {}
        total = n or r.data.max_heldout or 0

        def advance(name: str, k: int) -> None:
            if name not in bars:
                bars[name] = prog.add_task(f"{name:<22}", total=total or None)
            prog.advance(bars[name], k)

        try:
            res = evaluate(r, target, n=n, sampled=sampled, budgets=bl, checkpoints=checkpoints, progress=advance)
        except ConfigError as e:
            prog.stop()
            _fail(e)
    files = write_outputs(res, out)
    console.print(_table(f"{res['tasks']} held-out tasks, budget ${res['budget']}/task", res["policies"]))
    st = Table(title="one-number comparisons (RouteLLM-style PGR / cost-to-reach, our code)")
    for c in ("policy or curve", "PGR", "above random line [95%]", "APGR", "CPT(50%) $/1k"):
        st.add_column(c, justify="left" if c == "policy or curve" else "right")
    key = "cpt_50"
    for name, sc in res["scores"].items():
        p = res["policies"].get(name, {})
        ctr = sc.get(key)
        ab = "-"
        if "above_random_mixture" in p:
            lo, hi = p["ci95"]["above_random_mixture"]
            ab = f"{p['above_random_mixture'] + 1e-9:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        st.add_row(name, f"{p['pgr']:.2f}" if p.get("pgr") is not None else "-", ab, f"{sc['apgr']:.3f}" if sc.get("apgr") is not None else "-", f"{1000 * ctr:.3f}" if ctr is not None else "not reached")
    console.print(st)
    console.print("wrote " + ", ".join(str(f) for f in files))


@app.command()
def export(
    checkpoint: str = typer.Argument(..., help="A training output dir (its final/, recipe.json and eval/eval.json) or a model folder."),
    repo_id: str = typer.Option(..., "--repo-id", help="ORG/NAME on the Hub; also names the model in the card."),
    out: Optional[str] = typer.Option(None, "--out", help="Export folder (default: CHECKPOINT/export/NAME, or ./export/NAME)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe YAML (default: the run's recipe.json)."),
    eval_json: Optional[str] = typer.Option(None, "--eval-json", help="eval.json to publish (default: CHECKPOINT/eval/eval.json if present)."),
    push_: bool = typer.Option(False, "--push", help="Upload with huggingface_hub (token from HF_TOKEN; HF_ENDPOINT selects the Hub)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out that is not an earlier rl-router export (same-named files are replaced; other files are kept)."),
) -> None:
    """Write a Hub-ready folder for a trained router: merged weights, tokenizer and chat
    template, router_config.json (pool model cards, system prompt, tag protocol, env and reward
    settings), recipe.json, eval.json and a model card with YAML metadata and measured results.
    No API key is ever read or written; exported files are scanned for secrets."""
    from rl_router.serving.export import export as do_export
    from rl_router.serving.export import push

    try:
        r = _eval_recipe(checkpoint, recipe, [])
        name = repo_id.split("/")[-1]
        base = Path(checkpoint) if (Path(checkpoint) / "final").exists() else Path("export")
        dest = Path(out) if out else (base / "export" / name if base != Path("export") else base / name)
        folder = do_export(checkpoint, repo_id, r, dest, eval_json=eval_json, overwrite=overwrite)
    except (ConfigError, ValueError, RuntimeError) as e:
        _fail(e)
    console.print(f"exported {sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))} to {folder}")
    if push_:
        try:
            url = push(folder, repo_id, private=private)
        except Exception as e:  # noqa: BLE001 (huggingface_hub raises many types; report, never echo the token)
            _fail(RuntimeError(f"push to {repo_id} failed: {type(e).__name__}: {e}"))
        console.print(f"pushed: {url}")


@app.command()
def serve(
    checkpoint: str = typer.Argument(..., help="A training output dir, an exported folder or a model folder."),
    pool: Optional[str] = typer.Option(None, "--pool", help="YAML with the pool to route to: a recipe, or a file whose top level is a pool section ({type: openai, models: ...}). Default: the checkpoint's recipe."),
    host: str = typer.Option("127.0.0.1", help="Bind address; keep 127.0.0.1 unless you mean to expose it."),
    port: int = typer.Option(8080, help="Port."),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="Model name clients send (default: the checkpoint folder's name)."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of an env var holding a bearer token clients must send."),
) -> None:
    """Serve a trained router: POST /v1/chat/completions runs its think/route loop against the
    pool and returns the final answer (stream: true streams it), with usage and the routing
    trace (models called, cost) in the `rl_router` field; GET /v1/models."""
    import yaml

    from rl_router.models import resolve_checkpoint
    from rl_router.recipe import recipe_from_dict
    from rl_router.serving.router_server import RouterServer
    from rl_router.models import load_router

    try:
        ck = resolve_checkpoint(checkpoint)
        if ck is None:
            raise ValueError(f"{checkpoint}: no model there (expected config.json, or final/config.json)")
        r = _eval_recipe(checkpoint, None, [])
        if pool:
            raw = yaml.safe_load(Path(pool).read_text()) or {}
            section = raw if "type" in raw else raw.get("pool")
            if not isinstance(section, dict):
                raise ConfigError("--pool", f"{pool} has neither a top-level pool section nor a 'type'", "give a recipe or a {type: ..., models: ...} file")
            r = recipe_from_dict({**r.to_dict(), "pool": section})
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise ValueError(f"--api-key-env {api_key_env}: that environment variable is empty")
        srv = RouterServer(
            *load_router(str(ck)), recipe_pool(r), r.env_config(), env_name=r.env.get("name", "router_r1"),
            model_id=model_id or (Path(checkpoint).resolve().name), max_new_tokens=r.rollout.max_new_tokens,
            max_completion_tokens=r.rollout.max_completion_tokens, host=host, port=port, api_key=key,
        )
    except (ConfigError, ValueError) as e:
        _fail(e)
    console.print(f"serving router {srv.model_id!r} over {srv.pool.model_names} at {srv.url}")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.stop()


@app.command()
def rollout(
    recipe: str = typer.Argument(..., help="Recipe YAML (sections model/pool/env/rollout/rewards/trainer/data)."),
    policy: Optional[list[str]] = typer.Option(None, "--policy", "-p", help="router, always-<model>, random; repeatable (default: all)."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of held-out tasks."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field: --set env.budget=0.02 (YAML value)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Overrides the recipe's output_dir."),
    batch_size: int = typer.Option(32, "--batch-size", help="Episodes per lock-step batch."),
    greedy: bool = typer.Option(True, "--greedy/--sampled", help="Run the router greedy (as eval and train's held-out reports do) or sampled at trainer.temperature."),
    baseline_query: str = typer.Option("short", "--baseline-query", help="How scripted baselines phrase their sub-query: short ('Solve the task above.', then adopt the reply; as eval does) or question (the question verbatim, then re-type the answer). The pool receives the task either way."),
) -> None:
    """Run policies on a recipe's held-out tasks and print quality, cost, routes, reward and
    error rates. Same evaluation path, options and numbers as `eval` and training's held-out
    reports (the router greedy, baselines in the short style) unless you change the options."""
    try:
        _run_policies(recipe, set_ or [], policy, n, output_dir, batch_size, greedy=greedy, baseline_query=baseline_query)
    except (ConfigError, ValueError) as e:
        _fail(e)


@app.command("pool-server")
def pool_server(
    recipe: Optional[str] = typer.Argument(None, help="Recipe whose `pool` section to serve (default: the recorded GSM8K pool)."),
    host: str = typer.Option("127.0.0.1", help="Bind address; keep 127.0.0.1 unless you mean to expose it."),
    port: int = typer.Option(8000, help="Port."),
    api_key_env: Optional[str] = typer.Option(None, help="Name of an env var holding a bearer token clients must send."),
) -> None:
    """Serve a pool (recorded, simulated, local or remote) as an OpenAI-compatible endpoint:
    POST /v1/chat/completions and GET /v1/models."""
    from rl_router.pools import PoolServer
    from rl_router.recipe import load_recipe

    try:
        pool = recipe_pool(load_recipe(recipe))
    except ConfigError as e:
        _fail(e)
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        _fail(ValueError(f"--api-key-env {api_key_env}: that environment variable is empty"))
    srv = PoolServer(pool, host=host, port=port, api_key=key)
    console.print(f"serving {pool.model_names} at {srv.url}")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.stop()


def _recipe_tokenizer(recipe: Any) -> Any:
    from rl_router.models import tokenizer_from_recipe

    return tokenizer_from_recipe(recipe)


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
    from rl_router.boundary_records import class_counts, save_boundaries
    from rl_router.training.boundary import run_boundaries
    from rl_router.recipe import load_recipe, validate_against_pool
    from rl_router.rollout.engine import make_engine

    try:
        r = load_recipe(recipe, set_ or [])
        pool = recipe_pool(r)
        tasks = recipe_tasks(r, pool)[0][:n] if n else recipe_tasks(r, pool)[0]
        cheap, strong = validate_against_pool(r, pool, tasks)
    except (ConfigError, ValueError) as e:
        _fail(e)
    tok = _recipe_tokenizer(r)
    records, eps = run_boundaries(make_engine(r, pool, tok), pool, tasks, tok, cheap=cheap, strong=strong, style=r.algorithm.sft_style)
    save_boundaries(out, records, eps)
    t = Table(title=f"boundaries on {len(tasks)} train tasks ({cheap} vs {strong})")
    for c in ("class", "tasks", "share", f"{cheap} $/1k", f"{strong} $/1k"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for k, v in class_counts(records).items():
        rs = [x for x in records.values() if x.klass == k]
        t.add_row(k, str(v), f"{v / max(1, len(records)):.0%}", f"{1000 * sum(x.cheap_cost for x in rs) / max(1, len(rs)):.3f}", f"{1000 * sum(x.strong_cost for x in rs) / max(1, len(rs)):.3f}")
    console.print(t)
    console.print(f"wrote {out}")


@app.command("steps-label")
def steps_label(
    recipe: str = typer.Argument(..., help="A recipe with env.name: agentic."),
    out: str = typer.Option("steps.jsonl", "--out", help="Step-level JSONL to write (one routing decision per line)."),
    n: Optional[int] = typer.Option(None, "--n", help="Limit the number of held-out tasks."),
    split: str = typer.Option("heldout", "--split", help="heldout or train tasks."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a recipe field."),
) -> None:
    """Record step-level routing data: at every step, every tier is probed on a copy of the
    state; the record holds the router-visible prefix, each tier's cost and correctness, and
    the target (cheapest tier that was right). Format: rl_router/steplog.py."""
    from rl_router.envs import make_env

    from rl_router.recipe import load_recipe
    from rl_router.evaluation.steplog import label_steps, write_steps

    try:
        r = load_recipe(recipe, set_ or [])
        if r.env.get("name") != "agentic":
            raise ConfigError("env.name", "step-level labels need the agentic env", "use a recipe with env.name: agentic")
        if split not in ("heldout", "train"):
            raise ConfigError("--split", f"unknown {split!r}", "use heldout or train")
        pool = recipe_pool(r)
        train_t, held = recipe_tasks(r, pool)
        tasks = (held if split == "heldout" else train_t)[: n or None]
    except ConfigError as e:
        _fail(e)
    tok, cfg = _recipe_tokenizer(r), r.env_config()
    k = write_steps(out, label_steps(lambda: make_env("agentic", pool, config=cfg, tokenizer=tok), tasks))
    console.print(f"wrote {k} step records from {len(tasks)} tasks to {out}")


@app.command("steps-replay")
def steps_replay(
    steps: str = typer.Argument(..., help="Step-level JSONL (from steps-label, or a converted benchmark)."),
    target: str = typer.Argument(..., help="A router model folder or a training output dir."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the scores as JSON here."),
) -> None:
    """Score a router on recorded routing decisions, offline: tier accuracy, step success,
    cost, under- / over-routing, next to always-<tier> and the labels themselves."""
    from rl_router.models import resolve_checkpoint
    from rl_router.rollout.policies import HFPolicy
    from rl_router.evaluation.steplog import read_steps, replay
    from rl_router.models import load_router

    ck = resolve_checkpoint(target)
    if ck is None:
        _fail(ValueError(f"{target!r} is not a model folder or a training output dir"))
    try:
        recs = read_steps(steps)
    except (OSError, ValueError) as e:
        _fail(e)
    model, tok = load_router(str(ck))
    res = replay(recs, HFPolicy(model, tok, max_new_tokens=48, temperature=0.0), tok)
    t = Table(title=f"{len(recs)} recorded routing decisions")
    for c in ("policy", "tier accuracy", "step success", "$ / 1k steps", "under-routing", "over-routing", "invalid"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    for name, s in res.items():
        t.add_row(name, f"{s['tier_accuracy']:.3f}", f"{s['step_success']:.3f}", f"{1000 * s['mean_cost']:.3f}", f"{s['under_routing_rate']:.0%}", f"{s['over_routing_rate']:.0%}", f"{s['invalid_rate']:.0%}")
    console.print(t)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
