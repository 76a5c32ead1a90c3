"""`rl-router export`: a Hub-ready folder for a trained router, and an optional push.

The folder holds what a user needs to run the router without rl-router's training code:
weights (merged, full), tokenizer with its chat template, `router_config.json` (the
pool's model cards, the system prompt the router was trained with, the tag protocol, env
and reward settings), `eval.json` (measured results) and a model card (README.md with
Hub YAML metadata and the measured figures).

Secrets: nothing here ever reads an API key; recipes hold env var *names*. As a second
line of defence every exported text file is scanned for the values of the env vars the
recipe names (and HF_TOKEN) and for credentials in URLs, which are redacted; a binary
file that contains one aborts the export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rl_router import protocol
from rl_router.errors import ConfigError
from rl_router.prompts import COMPACT_PROTOCOL, PROTOCOL, card_style, system_prompt
from rl_router.recipe import Recipe
from rl_router.redact import env_secrets, redact
from rl_router.task_sources import recipe_pool

WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt")


def secret_values(recipe: Recipe) -> list[str]:
    """The values of the environment variables the recipe's pool names for keys (and HF_TOKEN)."""
    models = recipe.pool.get("models")
    return env_secrets(spec["api_key_env"] for spec in (models.values() if isinstance(models, dict) else []) if isinstance(spec, dict) and spec.get("api_key_env"))


redact_text = redact  # the one redaction (rl_router.redact), under the name this module used


def router_config(recipe: Recipe, pool: Any, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    from rl_router.rollout.names import STEMS, cost_weights

    cards = [pool.card(m) for m in pool.model_names]
    style = getattr(recipe.env_config(), "card_style", "full")
    env = {k: v for k, v in recipe.env.items()}
    pool_section = {k: v for k, v in recipe.pool.items() if k != "models"}
    return {
        "library": "rl-router",
        "pool": {"type": recipe.pool.get("type"), "settings": pool_section, "models": [dataclasses.asdict(c) for c in cards]},
        "endpoints": {m: {k: v for k, v in spec.items() if k in ("base_url", "model_id", "api_key_env")} for m, spec in (recipe.pool.get("models") if isinstance(recipe.pool.get("models"), dict) else {}).items() if isinstance(spec, dict)},
        "prompt": {"protocol": PROTOCOL if card_style(style, len(cards)) == "full" else COMPACT_PROTOCOL, "system_prompt": system_prompt(cards, style=style), "card_style": card_style(style, len(cards)),
                   "user_template": "Task: {question}\nBudget: ${budget:.4f}"},
        "tag_protocol": {
            "think": protocol.THINK_RE.pattern,
            "route": protocol.ROUTE_RE.pattern,
            "answer": protocol.ANSWER_RE.pattern,
            "adopt": "<answer>@NAME</answer> adopts NAME's latest final answer",
            "information": "<information>...</information> is written by the environment only",
            "stop_strings": list(protocol.STOP_STRINGS),
        },
        "env": env,
        "rollout": dataclasses.asdict(recipe.rollout),
        "rewards": recipe.rewards,
        "algorithm": dataclasses.asdict(recipe.algorithm),
        "cost_knob": {
            "route_bias": float(calibration["route_bias"]) if calibration else 0.0,
            "weights": cost_weights(pool),
            "decision_stems": [stem for stem, _c, kind in STEMS if kind == "route"],
            "how": "at a decision stem every model name is scored as a continuation; the router takes argmax log p(name) + route_bias x weights[name] (rl_router/rollout/names.py); rl-router serve applies it",
            "calibration": calibration,
        },
    }


def _fmt(x: Any, scale: float = 1.0, nd: int = 3) -> str:
    return "-" if x is None else f"{x * scale:.{nd}f}"


def model_card(repo_id: str, recipe: Recipe, cfg: dict[str, Any], ev: dict[str, Any] | None, base_model: str) -> str:
    pol = (ev or {}).get("policies", {})
    router = next((k for k in (ev or {}).get("routers", []) if "greedy" in k), None)
    datasets = sorted({*recipe.data.datasets} if recipe.data.source == "pool" else {str(s.get("path")) for s in recipe.data.hf} if recipe.data.source == "hf" else {recipe.data.source})
    meta: dict[str, Any] = {"library_name": "rl-router", "pipeline_tag": "text-generation", "license": "apache-2.0"}
    if "/" in base_model and " " not in base_model:
        meta["base_model"] = base_model  # a Hub id; the offline tiny router has none
    meta["tags"] = ["rl-router", "llm-routing", recipe.algorithm.name, "trl"]
    meta["datasets"] = datasets
    if router:
        s = pol[router]
        meta["model-index"] = [{
            "name": repo_id.split("/")[-1],
            "results": [{
                "task": {"type": "text-generation", "name": "LLM routing"},
                "dataset": {"name": f"{', '.join(datasets)} held-out ({ev['tasks']} tasks)", "type": datasets[0]},
                "metrics": [
                    {"type": "accuracy", "name": "quality", "value": round(s["quality"], 4)},
                    {"type": "cost", "name": "mean cost per task (USD)", "value": float(f"{s['mean_cost']:.6g}")},
                    {"type": "reward", "name": "recipe reward", "value": round(s["reward"], 4)},
                ],
            }],
        }]
    import yaml

    head = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---"]
    lines = [f"# {repo_id.split('/')[-1]}", "", f"A **router** trained with rl-router ({recipe.algorithm.name.upper()}"
             + (", boundary-guided SFT warm start" if recipe.algorithm.sft_warmstart else "") + f") on top of `{base_model}`.",
             "For each task it thinks, calls models of its pool with `<route model=\"NAME\">sub-query</route>`, reads their replies",
             "in `<information>` blocks and finishes with `<answer>...</answer>` (or `<answer>@NAME</answer>` to adopt a model's answer),",
             f"under a per-task budget of ${recipe.env_config().budget}.", "", "## Pool", "", "| model | $ in / out per 1M tokens | latency | example scores |", "|---|---|---|---|"]
    for c in cfg["pool"]["models"]:
        lines.append(f"| {c['name']} | {c['price_in']:g} / {c['price_out']:g} | {c['latency_ms']:.0f} ms | {', '.join(f'{k} {v:.0%}' for k, v in c['example_scores'].items()) or '-'} |")
    lines += ["", "## Rewards", "", "```json", json.dumps(recipe.rewards, indent=1), "```", ""]
    knob = cfg.get("cost_knob") or {}
    cal = knob.get("calibration")
    lines += ["## Cost knob", ""]
    if cal:
        got = cal["achieved"]
        lines += [f"Calibrated route bias **{knob['route_bias']:+g}** (added, times each model's price position, to the log-probability of its name where the router chooses a model; `route_bias.json`),",
                  f"found by `rl-router calibrate` for target {cal['target']} on {cal['tasks']} {cal['split']} tasks, where it gave",
                  f"{got['strong_share']:.0%} of tasks calling the costliest model, ${1000 * got['mean_cost']:.3f} per 1k tasks and quality {got['quality']:.3f}.",
                  "`rl-router serve` applies it; `--route-bias B` overrides it.", ""]
    else:
        lines += ["Route bias 0 (not calibrated). `rl-router calibrate` sets one for a target cost or strong-call share; `rl-router serve --route-bias B` sets one by hand.", ""]
    if pol:
        line_name = "above random line" if len(ev.get("single_models") or cfg["pool"]["models"]) == 2 else "above single-model hull"
        lines += [f"## Measured results ({ev['tasks']} held-out tasks, greedy)", "", f"| policy | quality | $ / 1k tasks | reward | PGR | {line_name} | format errors |", "|---|---|---|---|---|---|---|"]
        for name, s in pol.items():
            above = s.get("above_hull", s.get("above_random_mixture"))
            lines.append(f"| {name} | {s['quality']:.3f} | {_fmt(s['mean_cost'], 1000)} | {_fmt(s.get('reward'))} | {_fmt(s.get('pgr'), 1, 2)} | {'-' if above is None else f'{above + 1e-9:+.3f}'} | {s['format_error_rate']:.0%} |")
        lines += ["", "PGR: share of the cheapest -> best single model's quality gap recovered. Above the line / hull: quality minus that of the best random mixture of single models at the same cost (two models: the random cheap/strong line). Full figures, with 95% intervals, in `eval.json`.", ""]
    else:
        lines += ["## Measured results", "", "Not evaluated yet: run `rl-router eval` and export again.", ""]
    lines += [
        "## Usage", "", "Load the router (weights, its own tokenizer, and the pool cards, system prompt and tag protocol it was trained with):", "",
        "```python", "import json", "from huggingface_hub import snapshot_download", "from rl_router.models import load_router", "",
        f'path = snapshot_download("{repo_id}")', "model, tok = load_router(path)",
        'cfg = json.load(open(f"{path}/router_config.json"))', 'print(cfg["pool"]["models"][0]["name"], model.config.model_type)', "```", "",
        "Serve it behind an OpenAI-compatible endpoint that runs the route loop against the pool it was trained with",
        "(`--pool pool.yaml` points the same model names at your own endpoints):", "",
        "```bash", f"rl-router serve {repo_id} --port 8080", "```", "",
        "API keys of pool endpoints are read from the environment variables named in `router_config.json`; none is stored here.", "",
    ]
    return "\n".join(head + [""] + lines)


def export(checkpoint: str | Path, repo_id: str, recipe: Recipe, out: str | Path, *, eval_json: str | Path | None = None, base_model: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hub-ready folder `out` (staged beside it, checked, scrubbed of secrets, then
    moved in: see `_place` for what happens to a folder that already exists)."""
    from rl_router.models import resolve_checkpoint, unfinished_run
    from rl_router.owned import prepare_dir

    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError("--repo-id", f"{repo_id!r} is not ORG/NAME", "e.g. --repo-id my-org/tiny-router")
    ck = resolve_checkpoint(str(checkpoint))
    if ck is None and unfinished_run(str(checkpoint)):
        raise ConfigError("checkpoint", unfinished_run(str(checkpoint)))
    if ck is None:
        raise ConfigError("checkpoint", f"{checkpoint}: no model there (expected config.json, or final/config.json of a training run)")
    out = Path(out).resolve()
    model, run = ck.resolve(), ck.resolve().parent if ck.name == "final" else ck.resolve()
    if out in (model, run) or out in model.parents or model in out.parents:
        raise ConfigError("--out", f"{out}: that is (or holds, or sits inside) the model or training run being exported", "choose a folder of its own (default: RUN/export/NAME)")
    from rl_router.models import adapter_run

    if adapter_run(ck) is None:  # a run's LoRA checkpoint is merged into its base as it is written (_write_export)
        shippable(ck, "checkpoint", "restore the weights (re-export from the run, or re-run training with --resume)")
    prepare_dir(out.parent, "--out")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.rl-router-", dir=out.parent))
    try:
        _write_export(ck, repo_id, recipe, stage, eval_json=eval_json, base_model=base_model)
        shippable(stage, "export", "a file changed while it was copied: export again")  # what ships, checked as shipped
        _scrub(stage, secret_values(recipe))
        _place(stage, out, overwrite=overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # our own staging folder only
    return out


def shippable(folder: Path, what: str, fix: str) -> None:
    """A model folder that loads: config.json parses as an object with a model_type, the
    weights are whole (every safetensors header matches its file's size), a tokenizer is there."""
    from rl_router.checkpoints import model_problem
    from rl_router.parsing import read_json

    cfg = read_json(folder / "config.json", what, fix=fix)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise ConfigError(what, f"{folder / 'config.json'} is not a model config (no model_type)", fix)
    why = model_problem(folder)
    if why:
        raise ConfigError(what, why, fix)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ConfigError(what, f"{folder} holds no tokenizer (tokenizer.json / tokenizer_config.json)", fix)


#: the manifest exports written before rl_router.owned's marker listed their files in
LEGACY_MANIFEST = ".rl-router-export.json"


def _place(stage: Path, out: Path, *, overwrite: bool) -> None:
    """Move the staged export into `out` without touching anything we did not write: a new or
    empty folder takes it whole; in a previous export of ours, exactly the files its marker
    lists are replaced (plain names inside `out` only: a listed `../x` or a link is never
    followed) and files of other names are kept; a non-empty folder with no export of ours is
    refused, as is a user's file named like one we ship, unless `overwrite`, which replaces
    same-named files and keeps every other file."""
    from rl_router.owned import MARKER, OwnedFolder, plain_name

    folder = OwnedFolder(out, "--out", kind="export")
    legacy = out / LEGACY_MANIFEST
    if legacy.is_file() and not folder.marker.exists():  # an export from before the marker
        try:
            listed = json.loads(legacy.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError, RecursionError):
            listed = []
        folder.record["files"] = [n for n in listed if plain_name(n)] if isinstance(listed, list) else []
    names = sorted(p.name for p in stage.iterdir())
    theirs = [n for n in folder.foreign() if n != LEGACY_MANIFEST]
    if theirs and not overwrite and not folder.record["files"]:
        raise ConfigError("--out", f"{out} is not empty and holds no rl-router export (files it did not write: {', '.join(theirs[:5])})",
                          "choose an empty folder, or pass --overwrite to write the export into it (files of other names are kept)")
    clash = sorted(set(theirs) & set(names))
    if clash and not overwrite:  # beside an export of ours, a user's file of the same name as one we ship
        raise ConfigError("--out", f"{out} holds {', '.join(clash[:5])}, which rl-router did not write", "move them away, or pass --overwrite to replace them")
    for name in folder.record["files"]:  # our earlier export's files, stale ones included
        p = out / name
        if name != MARKER and not p.is_symlink():
            if p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
    folder.record["files"] = []
    folder.adopt(*names)
    for name in names:
        os.replace(stage / name, out / name)
    if legacy.is_file():
        legacy.unlink()


def _write_export(ck: Path, repo_id: str, recipe: Recipe, out: Path, *, eval_json: str | Path | None, base_model: str | None) -> None:
    from rl_router.models import adapter_run, load_adapter_checkpoint

    if adapter_run(ck) is not None:  # a run's LoRA checkpoint ships as the whole router it is: merged into what it was trained on
        model, tok = load_adapter_checkpoint(ck, recipe)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    else:
        for f in WEIGHT_FILES:
            if (ck / f).exists():
                shutil.copy2(ck / f, out / f)
        if not (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists():
            for f in ck.glob("model-*.safetensors"):
                shutil.copy2(f, out / f.name)
        if (ck / "adapter_config.json").exists():
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(ck / f, out / f)
    from rl_router.evaluation.calibration import CALIBRATION_FILE, read_route_bias

    pool = recipe_pool(recipe)
    calibration = read_route_bias(ck)
    if calibration is not None:
        shutil.copy2(ck / CALIBRATION_FILE, out / CALIBRATION_FILE)  # serve reads it from the export
    cfg = router_config(recipe, pool, calibration)
    (out / "router_config.json").write_text(json.dumps(cfg, indent=1, default=str))
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1, default=str))  # `rl-router eval EXPORT_DIR` re-measures it
    from rl_router.evaluation.report import default_eval_dir

    ev_path = Path(eval_json) if eval_json else next((p for p in (default_eval_dir(ck) / "eval.json", ck / "eval.json") if p.exists()), None)
    ev = json.loads(ev_path.read_text()) if ev_path and ev_path.exists() else None
    if ev is not None:
        (out / "eval.json").write_text(json.dumps(ev, indent=1))
    from rl_router import pretrained

    name = recipe.model.name_or_path
    base = base_model or ("tiny router built from a config (no Hub base)" if name == "tiny" else pretrained.KNOWN[name].hub_id if pretrained.is_known(name) else name)
    (out / "README.md").write_text(model_card(repo_id, recipe, cfg, ev, base))


def _scrub(out: Path, secrets: list[str]) -> None:
    for f in out.rglob("*"):
        if not f.is_file():
            continue
        data = f.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if any(s.encode() in data for s in secrets):
                raise ConfigError("export", f"{f.name} contains a secret from the environment; export aborted (nothing was written)", "check what the model folder holds") from None
            continue
        clean = redact_text(text, secrets)
        if clean != text:
            f.write_text(clean)


def push(folder: str | Path, repo_id: str, *, private: bool = False, token_env: str = "HF_TOKEN") -> str:
    """Create the repo (if needed) and upload the folder with huggingface_hub. The token is
    read from the environment only; HF_ENDPOINT selects another Hub (or a local test server)."""
    from huggingface_hub import HfApi

    from rl_router.errors import ConfigError

    token = os.environ.get(token_env) or None
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload router exported by rl-router", ignore_patterns=[LEGACY_MANIFEST, ".rl-router-owned.json"])
    except Exception as e:  # noqa: BLE001 (huggingface_hub raises many types; report, never echo the token)
        raise ConfigError("--push", f"push to {repo_id} failed: {type(e).__name__}: {redact_text(str(e), [token] if token else [])[:300]}", f"check {token_env}, HF_ENDPOINT and the repo id") from None
    return str(getattr(info, "commit_url", info))


def export_target(checkpoint: str, repo_id: str, *, out: str | None = None, recipe_path: str | None = None, eval_json: str | None = None, overwrite: bool = False) -> Path:
    """`rl-router export`: the recipe (the run's recipe.json unless --recipe), the default
    folder (RUN/export/NAME for a training run, ./export/NAME for a model folder), then `export`."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import recipe_for_target

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError("--repo-id", f"{repo_id!r} is not ORG/NAME", "e.g. --repo-id my-org/tiny-router")
    if eval_json is not None and not Path(eval_json).is_file():
        raise ConfigError("--eval-json", f"{eval_json} is not a file", "give the eval.json written by rl-router eval")
    r = recipe_for_target(checkpoint, recipe_path, [])
    name = repo_id.split("/")[-1]
    dest = Path(out) if out else (Path(checkpoint) / "export" / name if (Path(checkpoint) / "final").exists() else Path("export") / name)
    if recipe_path is not None:
        _same_pool(checkpoint, r)
    return export(checkpoint, repo_id, r, dest, eval_json=eval_json, overwrite=overwrite)


def _same_pool(checkpoint: str, recipe: Recipe) -> None:
    """An export under --recipe must describe the pool the router was trained to call: its
    model names are the ones in the recipe saved with the weights (a router trained on
    another pool would name models the exported config does not have)."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import recipe_for_target
    from rl_router.task_sources import recipe_pool

    try:
        saved = recipe_for_target(checkpoint, None, [])
    except ConfigError:
        return  # no readable recipe beside the weights: nothing to compare with
    trained, given = sorted(recipe_pool(saved).model_names), sorted(recipe_pool(recipe).model_names)
    if trained != given:
        raise ConfigError("--recipe", f"its pool {given} is not the one the router was trained to call {trained}", "export with the run's own recipe (leave out --recipe), or a recipe with the same model names")
