"""HFLocalPool: local transformers models as pool members.

For small pools that fit one GPU, and for tests with tiny models. Generation runs in a
worker thread so the event loop keeps serving other pool calls; one lock per model because
a transformers model is not safe to `generate` from two threads at once. Token counts are
real (the member's own tokenizer); cost applies the card's prices, which for local models
stand for whatever a token costs you (GPU time, say), 0 by default.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from rl_router.pools.base import Completion, Message, ModelCard, Pool


@dataclass
class LocalModel:
    card: ModelCard
    model: Any  # a transformers causal LM, or a path / Hub id to load
    tokenizer: Any = None  # defaults to the model's own
    device: str = "cpu"
    dtype: str | None = None


class HFLocalPool(Pool):
    def __init__(self, members: list[LocalModel], *, default_max_tokens: int = 128):
        if not members:
            raise ValueError("pool.models: an hf_local pool needs at least one model")
        self.members = {m.card.name: m for m in members}
        self.cards = [m.card for m in members]
        self.default_max_tokens = default_max_tokens
        self._locks = {n: threading.Lock() for n in self.members}
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _load(self, name: str) -> tuple[Any, Any]:
        if name not in self._loaded:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            m = self.members[name]
            model = m.model
            if isinstance(model, str):
                kw = {"dtype": m.dtype} if m.dtype else {}
                model = AutoModelForCausalLM.from_pretrained(model, **kw).to(m.device)
            tok = m.tokenizer if m.tokenizer is not None else AutoTokenizer.from_pretrained(m.model if isinstance(m.model, str) else model.name_or_path)
            if isinstance(tok, str):
                tok = AutoTokenizer.from_pretrained(tok)
            model.eval()
            self._loaded[name] = (model, tok)
        return self._loaded[name]

    def _generate(self, name: str, messages: list[Message], sampling: dict[str, Any]) -> Completion:
        import torch

        model, tok = self._load(name)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        input_ids = ids["input_ids"].to(model.device)
        temperature = float(sampling.get("temperature", 0.0) or 0.0)
        gen_kw: dict[str, Any] = {
            "max_new_tokens": int(sampling.get("max_tokens", self.default_max_tokens)),
            "do_sample": temperature > 0,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        }
        if temperature > 0:
            gen_kw["temperature"] = temperature
            gen_kw["top_p"] = float(sampling.get("top_p", 1.0))
        with self._locks[name], torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **gen_kw)
        new = out[0, input_ids.shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        p, c = int(input_ids.shape[1]), int(new.shape[0])
        return Completion(text, p, c, self.card(name).cost(p, c), model=name)

    async def check(self) -> list[str]:
        """A local model given as a path must exist (Hub ids are fetched on first use)."""
        from pathlib import Path

        problems = []
        for name, m in self.members.items():
            if isinstance(m.model, str) and (m.model.startswith((".", "/", "~")) or Path(m.model).exists()) and not (Path(m.model).expanduser() / "config.json").exists():
                problems.append(f"pool.models.{name}.path: {m.model} holds no model (no config.json) -> give a model folder or a Hub id")
        return problems

    async def complete(self, model: str, messages: list[Message], *, context: dict[str, Any] | None = None, **sampling: Any) -> Completion:
        if model not in self.members:
            return Completion("", error=f"unknown model {model!r}", model=model)
        t0 = time.perf_counter()
        try:
            comp = await asyncio.to_thread(self._generate, model, messages, sampling)
        except Exception as e:  # a broken local model is an observation, not a crash
            return Completion("", error=f"local generation failed: {type(e).__name__}: {e}"[:300], model=model)
        comp.latency_s = time.perf_counter() - t0
        return comp
