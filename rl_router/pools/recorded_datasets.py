"""The recorded datasets shipped in the package: their files, formats, licenses and model cards.

`pool: {type: recorded, datasets: [NAME]}` names one of them; a file in the same format given
in `pool.files` is read as that dataset (same model names, same cards), so your own records
and held-out files plug in without code. Prices are USD per 1M tokens; they are list prices
around each dataset's date (a modelling choice, not recorded data; override them in
`pool.models`). Latencies are not recorded for any of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


def data_path(name: str) -> Path:
    return Path(str(resources.files("rl_router") / "data" / name))


@dataclass(frozen=True)
class RecordedDataset:
    name: str
    file: str  # in rl_router/data
    format: str  # pools/records.py
    license: str  # in rl_router/data
    source: str
    grading: str  # the one grading rule, as README states it
    models: dict[str, dict[str, Any]]  # pool name -> card fields (+ `column`: its key in the records)

    @property
    def path(self) -> Path:
        return data_path(self.file)


ROUTELLM_MODELS = {
    "mixtral-8x7b": {
        "column": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "price_in": 0.60,
        "price_out": 0.60,
        "latency_ms": 600.0,
        "context": 32768,
        "strengths": "cheap open-weight mixture-of-experts; decent at grade-school math and general knowledge",
    },
    "gpt-4-1106": {
        "column": "gpt-4-1106-preview",
        "price_in": 10.00,
        "price_out": 30.00,
        "latency_ms": 2500.0,
        "context": 128000,
        "strengths": "strong closed model; best at multi-step math and expert knowledge, ~17x the price",
    },
}

#: context windows (tokens) of the MMLU-Pro and dcrouter models, from their model cards
_CONTEXT = {
    "gemini-1.5-pro-002": 2_000_000, "gemini-1.5-flash-002": 1_000_000, "llama-3.1-70b-instruct": 128_000, "deepseek-coder-v2": 128_000,
    "jamba-1.5-large": 256_000, "qwen1.5-72b-chat": 32_768, "mixtral-8x7b-instruct": 32_768, "command-r-v01": 128_000,
    "llama-3.1-8b-instruct": 128_000, "mistral-7b-instruct-v0.2": 32_768,
    "codegemma-7b": 8192, "gemma-2-9b-it": 8192, "llama-3.1-nemotron-51b-instruct": 128_000, "llama-3.3-nemotron-super-49b-v1": 128_000,
    "llama3-chatqa-1.5-70b": 8192, "llama3-chatqa-1.5-8b": 8192, "mistral-7b-instruct-v0.3": 32_768, "qwen2.5-7b-instruct": 32_768,
}


def _mmlu_pro_models() -> dict[str, dict[str, Any]]:
    raw = json.loads(data_path("mmlu_pro_models.json").read_text())
    return {m: {"price_in": v["price_in"], "price_out": v["price_out"], "context": _CONTEXT.get(m, 8192), "source_file": v.get("source_file", "")} for m, v in raw.items()}


def _dcrouter_models() -> dict[str, dict[str, Any]]:
    raw = json.loads(data_path("dcrouter_models.json").read_text())
    return {m: {"price_in": v["input_price"], "price_out": v["output_price"], "context": _CONTEXT.get(m, 8192), "strengths": f"{v.get('size', '?')} parameters"} for m, v in raw.items()}


DATASETS: dict[str, RecordedDataset] = {
    "gsm8k": RecordedDataset(
        "gsm8k", "routellm_gsm8k.jsonl.gz", "routellm", "LICENSE-routellm-evals", "lm-sys/RouteLLM routellm/evals (Apache-2.0)",
        "the final number of the answer (after ####, else the last number) equals the gold number; replies are graded from their text, recorded verdicts are not used",
        ROUTELLM_MODELS,
    ),
    "mmlu": RecordedDataset(
        "mmlu", "routellm_mmlu.jsonl.gz", "routellm", "LICENSE-routellm-evals", "lm-sys/RouteLLM routellm/evals (Apache-2.0)",
        "verdicts only: the outcome is the recorded verdict of the model whose answer is adopted (replies are letters that do not show it)",
        ROUTELLM_MODELS,
    ),
    "mmlu-pro": RecordedDataset(
        "mmlu-pro", "mmlu_pro.jsonl.gz", "mmlu-pro", "LICENSE-mmlu-pro", "TIGER-AI-Lab/MMLU-Pro eval_results (Apache-2.0)",
        "the final letter (the router's own, or the adopted reply's last 'answer is (X)') equals the gold letter; reproduces every recorded verdict",
        {},  # filled below (read from the shipped models.json)
    ),
    "dcrouter": RecordedDataset(
        "dcrouter", "dcrouter.jsonl.gz", "dcrouter", "LICENSE-llmrouter-dcrouter", "ulab-uiuc/LLMRouter dcrouter data (MIT)",
        "scores only: the outcome is the recorded score in [0, 1] of the model whose answer is adopted (fractional for commongen)",
        {},
    ),
}
DATASETS["mmlu-pro"].models.update(_mmlu_pro_models())
DATASETS["dcrouter"].models.update(_dcrouter_models())

#: formats whose files are read as one of the datasets above (same model names and cards)
FORMAT_DATASET = {"mmlu-pro": "mmlu-pro", "mmlu-pro-outputs": "mmlu-pro", "dcrouter": "dcrouter"}


def dataset_models(name: str) -> dict[str, dict[str, Any]]:
    return {m: dict(v) for m, v in DATASETS[name].models.items()}


def mmlu_pro_output_names() -> dict[str, str]:
    """MMLU-Pro eval_results file stems (`model_outputs_<X>_5shots`) -> our model names."""
    out = {}
    for m, v in DATASETS["mmlu-pro"].models.items():
        stem = Path(v.get("source_file") or "").name.split(".")[0]
        if stem:
            out[stem.removeprefix("model_outputs_").rsplit("_", 1)[0]] = m
    return out
