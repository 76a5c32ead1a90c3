"""The tiny offline router: a small Qwen2-architecture causal LM and a project-trained tokenizer.

Why: tests and the quickstart must run with no Hub access, so the project ships a byte-level
BPE tokenizer it trained itself (`scripts/train_tokenizer.py`, on the shipped recorded data
and the protocol text) with a ChatML chat template, and builds the model from a config with
random weights. Real recipes name Hub models instead (`model.name_or_path`); `models.py`
loads either.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

TOKENIZER_DIR = Path(str(resources.files("rl_router") / "assets" / "tiny_tokenizer"))

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Protocol tags as single (non-special) tokens: a tiny model learns the protocol much faster,
# and they survive `skip_special_tokens=True` decoding, which TRL uses for completions.
PROTOCOL_TOKENS = ["<think>", "</think>", "<route", "</route>", "<answer>", "</answer>", "<information>", "</information>"]


def load_tiny_tokenizer(path: str | Path | None = None) -> Any:
    from transformers import PreTrainedTokenizerFast

    d = Path(path) if path else TOKENIZER_DIR
    if not (d / "tokenizer.json").exists():
        raise FileNotFoundError(f"{d}/tokenizer.json missing; run `python scripts/train_tokenizer.py`")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_router(
    save_dir: str | Path | None = None,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
) -> tuple[Any, Any]:
    """Build (model, tokenizer); if `save_dir` is given, save both there (loadable by path)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tiny_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(save_dir)
        tok.save_pretrained(save_dir)
    return model, tok
