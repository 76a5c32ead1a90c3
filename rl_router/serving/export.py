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
from rl_router.prompts import COMPACT_PROTOCOL, PROTOCOL, card_style, system_prompt
from rl_router.recipe import Recipe
from rl_router.task_sources import recipe_pool

WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt")
URL_CREDS = re.compile(r"(https?://)[^/@\s:]+:[^/@\s]+@")


def secret_values(recipe: Recipe) -> list[str]:
    names = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
    models = recipe.pool.get("models")
    for spec in (models.values() if isinstance(models, dict) else []):
        if isinstance(spec, dict) and spec.get("api_key_env"):
            names.add(spec["api_key_env"])
    return [v for n in sorted(names) if len(v := os.environ.get(n, "")) >= 8]


def redact_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return URL_CREDS.sub(r"\1***@", text)


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
    """Write the Hub-ready folder `out` (staged beside it, scrubbed of secrets, then moved in:
    see `_place` for what happens to a folder that already exists)."""
    from rl_router.models import resolve_checkpoint

    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--repo-id: {repo_id!r} is not ORG/NAME")
    from rl_router.models import unfinished_run

    ck = resolve_checkpoint(str(checkpoint))
    if ck is None and unfinished_run(str(checkpoint)):
        raise ValueError(unfinished_run(str(checkpoint)))
    if ck is None:
        raise ValueError(f"{checkpoint}: no model there (expected config.json, or final/config.json of a training run)")
    out = Path(out).resolve()
    model, run = ck.resolve(), ck.resolve().parent if ck.name == "final" else ck.resolve()
    if out in (model, run) or out in model.parents or model in out.parents:
        raise ValueError(f"--out {out}: that is (or holds, or sits inside) the model or training run being exported; choose a folder of its own (default: RUN/export/NAME)")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.rl-router-", dir=out.parent if out.parent.exists() else None))
    try:
        _write_export(ck, repo_id, recipe, stage, eval_json=eval_json, base_model=base_model)
        _scrub(stage, secret_values(recipe))
        _place(stage, out, overwrite=overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # our own staging folder only
    return out


MANIFEST = ".rl-router-export.json"


def _place(stage: Path, out: Path, *, overwrite: bool) -> None:
    """Move the staged export into `out` without deleting anything we did not write: a new or
    empty folder takes it whole; a previous export of ours (its manifest lists our files) has
    exactly those files replaced; any other non-empty folder is refused unless `overwrite`,
    which replaces same-named files and keeps every other file."""
    names = sorted(p.name for p in stage.iterdir())
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder")
    if out.exists() and any(out.iterdir()):
        manifest = out / MANIFEST
        if manifest.exists():
            for name in json.loads(manifest.read_text()).get("files", []):
                p = out / name
                if p.is_file():
                    p.unlink()
        elif not overwrite:
            raise ValueError(f"--out {out} is not empty and holds no rl-router export; choose an empty folder, or pass --overwrite to write the export into it (files of other names are kept)")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(stage / name, out / name)
    (out / MANIFEST).write_text(json.dumps({"files": names}, indent=1))


def _write_export(ck: Path, repo_id: str, recipe: Recipe, out: Path, *, eval_json: str | Path | None, base_model: str | None) -> None:
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
    ev_path = Path(eval_json) if eval_json else next((p for p in (ck.parent / "eval" / "eval.json", ck / "eval.json") if p.exists()), None)
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
                raise RuntimeError(f"{f.name} contains a secret from the environment; export aborted (nothing was written)") from None
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
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload router exported by rl-router", ignore_patterns=[MANIFEST])
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
    try:
        return export(checkpoint, repo_id, r, dest, eval_json=eval_json, overwrite=overwrite)
    except (ValueError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError("export", str(e)) from None
