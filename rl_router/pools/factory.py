"""Build a pool from a YAML/dict section (`pool: {type: recorded, ...}`), validating every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl_router.errors import ConfigError, check_keys, typed
from rl_router.pools.base import ModelCard, Pool
from rl_router.pools.hf_local import HFLocalPool, LocalModel
from rl_router.pools.openai_pool import Endpoint, OpenAIPool, RetryPolicy
from rl_router.pools.recorded import RecordedPool
from rl_router.pools.simulated import SimModel, SimulatedPool
from rl_router.schemas import CardSpec, LocalCardSpec, OpenAICardSpec, RecordedCardSpec, SimCardSpec, parse

POOL_TYPES = ("recorded", "simulated", "openai", "hf_local")


def _card(name: str, spec: dict[str, Any], path: str, schema: type = CardSpec) -> tuple[ModelCard, Any]:
    """A model's card, parsed by its schema (rl_router.schemas: finite prices >= 0, known keys
    only); returns the card and the parsed spec (the pool type's own fields)."""
    c = parse(schema, spec, path)
    return ModelCard(name=name, price_in=c.price_in, price_out=c.price_out, latency_ms=c.latency_ms, context=c.context, strengths=c.strengths, example_scores=dict(c.example_scores)), c


def _models(section: dict[str, Any], path: str, required: bool = True) -> dict[str, dict[str, Any]]:
    models = section.get("models")
    if models is None:
        if required:
            raise ConfigError(f"{path}.models", "is required", "map each model name to its settings (price_in, price_out, ...)")
        return {}
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}.models", "must be a non-empty mapping of model name -> settings")
    for name, spec in models.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}.models.{name}", f"expected a mapping, got {type(spec).__name__}")
        if "api_key" in spec:
            raise ConfigError(f"{path}.models.{name}.api_key", "API keys must not be written in a recipe", "export the key in an environment variable and set api_key_env: VAR_NAME")
    return models


def _cache_dir(value: str | None, path: str) -> str | None:
    """The response cache folder, created and checked now (not at the first cached call)."""
    if value is not None:
        from rl_router.owned import prepare_dir

        prepare_dir(value, path)
    return value


#: keys every pool type takes: `max_error_rate` is the share of episodes with a failed pool
#: call above which an evaluation or boundary run stops (a dead endpoint must not train)
COMMON_KEYS = {"type", "max_error_rate"}
DEFAULT_MAX_ERROR_RATE = 0.2


def max_error_rate(section: dict[str, Any]) -> float:
    return float(section.get("max_error_rate", DEFAULT_MAX_ERROR_RATE)) if isinstance(section, dict) else DEFAULT_MAX_ERROR_RATE


def build_pool(section: dict[str, Any], path: str = "pool") -> Pool:
    if not isinstance(section, dict):
        raise ConfigError(path, f"expected a mapping, got {type(section).__name__}")
    rate = section.get("max_error_rate", DEFAULT_MAX_ERROR_RATE)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f"{path}.max_error_rate", f"must be a share in [0, 1], got {rate!r}", "e.g. 0.2: stop when more than 20% of episodes hit a failed pool call")
    kind = section.get("type")
    if kind not in POOL_TYPES:
        raise ConfigError(f"{path}.type", f"unknown pool type {kind!r}", f"use one of {list(POOL_TYPES)}")

    if kind == "recorded":
        check_keys(section, COMMON_KEYS | {"datasets", "files", "hf_dataset", "models", "latency_scale"}, path)
        models = section.get("models")
        if isinstance(models, list):
            if not models or not all(isinstance(m, str) for m in models):
                raise ConfigError(f"{path}.models", f"expected a list of model names, got {models!r}", "e.g. [gemini-1.5-flash-002, gemini-1.5-pro-002], or a mapping of name -> card fields")
        elif models is not None:
            models = _models(section, path)
            # as parsed: what the user set, without nulls (null = the recording's own value)
            models = {name: _card(name, spec, f"{path}.models.{name}", RecordedCardSpec)[1].model_dump(exclude_unset=True, exclude_none=True) for name, spec in models.items()}
        latency_scale = typed(section, "latency_scale", float, path, 0.0, minimum=0)
        files = typed(section, "files", list, path, [])
        hf = section.get("hf_dataset")
        if isinstance(hf, str):
            hf = {"path": hf}
        if hf is not None:
            if not isinstance(hf, dict) or not isinstance(hf.get("path"), str):
                raise ConfigError(f"{path}.hf_dataset", f"expected a Hub id or {{path, name, split, data_files, format, dataset}}, got {hf!r}", "e.g. hf_dataset: ORG/NAME, or {path: parquet, data_files: my.parquet}")
            check_keys(hf, {"path", "name", "split", "data_files", "format", "dataset"}, f"{path}.hf_dataset")
        datasets = typed(section, "datasets", list, path, [] if files or hf else ["gsm8k"])
        from rl_router.pools.recorded_datasets import DATASETS

        for d in datasets:
            if d not in DATASETS:
                raise ConfigError(f"{path}.datasets", f"unknown packaged dataset {d!r}", f"use any of {sorted(DATASETS)}, or give your own recordings in pool.files")
        for f in files:
            if not isinstance(f, str) or not Path(f).exists():
                raise ConfigError(f"{path}.files", f"{f} does not exist", "give paths to recordings (RouteLLM CSV, MMLU-Pro or dcrouter JSONL(.gz), LLMRouter JSON, RouterBench tables)")
        return RecordedPool.load(datasets=datasets, files=files, hf_dataset=hf, models=models, latency_scale=latency_scale)

    if kind == "simulated":
        check_keys(section, COMMON_KEYS | {"models", "seed", "latency_scale"}, path)
        sims = []
        for name, spec in _models(section, path).items():
            c = parse(SimCardSpec, spec, f"{path}.models.{name}")
            sims.append(SimModel(name=name, price_in=c.price_in, price_out=c.price_out, latency_ms=c.latency_ms, skills=dict(c.skills),
                                 default_skill=c.default_skill, answer_tokens=c.answer_tokens, strengths=c.strengths))
        return SimulatedPool(sims, seed=typed(section, "seed", int, path, 0), latency_scale=typed(section, "latency_scale", float, path, 1.0, minimum=0))

    if kind == "openai":
        check_keys(section, COMMON_KEYS | {"models", "timeout_s", "max_concurrency", "max_retries", "backoff_base_s", "backoff_max_s", "cache_dir", "forward_context", "breaker_threshold", "breaker_cooldown_s"}, path)
        eps = []
        for name, spec in _models(section, path).items():
            card, c = _card(name, spec, f"{path}.models.{name}", OpenAICardSpec)
            eps.append(Endpoint(card, c.base_url, c.model_id or name, c.api_key_env))
        retry = RetryPolicy(
            max_retries=typed(section, "max_retries", int, path, 4, minimum=0),
            backoff_base_s=typed(section, "backoff_base_s", float, path, 0.5, minimum=0),
            backoff_max_s=typed(section, "backoff_max_s", float, path, 20.0, minimum=0),
        )
        return OpenAIPool(
            eps,
            timeout_s=typed(section, "timeout_s", float, path, 60.0, minimum=0.001),
            max_concurrency=typed(section, "max_concurrency", int, path, 16, minimum=1),
            retry=retry,
            cache_dir=_cache_dir(typed(section, "cache_dir", str, path, None), f"{path}.cache_dir"),
            forward_context=typed(section, "forward_context", bool, path, False),
            breaker_threshold=typed(section, "breaker_threshold", int, path, 5, minimum=1),
            breaker_cooldown_s=typed(section, "breaker_cooldown_s", float, path, 30.0, minimum=0),
        )

    # hf_local
    check_keys(section, COMMON_KEYS | {"models", "default_max_tokens"}, path)
    members = []
    for name, spec in _models(section, path).items():
        card, c = _card(name, spec, f"{path}.models.{name}", LocalCardSpec)
        members.append(LocalModel(card, c.path, c.tokenizer, c.device, c.dtype))
    return HFLocalPool(members, default_max_tokens=typed(section, "default_max_tokens", int, path, 128, minimum=1))
