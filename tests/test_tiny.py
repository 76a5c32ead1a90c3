"""The shipped tokenizer and the tiny router build and load offline."""

from __future__ import annotations

from rl_router.prompts import encode_chat
from rl_router.models import load_router
from rl_router.tiny import PROTOCOL_TOKENS, build_tiny_router


def test_protocol_tags_are_single_tokens_and_survive_decoding(tokenizer):
    for tag in PROTOCOL_TOKENS:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
    text = '<think>x</think><route model="gpt-4-1106">What is 2+2?</route>'
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_is_chatml(tokenizer):
    s = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert s == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode([tokenizer.eos_token_id]) == "<|im_end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tiny_router_saves_and_loads_by_path(tmp_path):
    model, tok = build_tiny_router(tmp_path / "tiny", seed=1)
    m2, t2 = load_router(str(tmp_path / "tiny"))
    ids = encode_chat(t2, [{"role": "user", "content": "hi"}])
    assert ids == encode_chat(tok, [{"role": "user", "content": "hi"}])
    import torch

    x = torch.tensor([ids])
    assert torch.allclose(model(x).logits, m2(x).logits, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_saved_router_reloads_with_identical_tokenization(tmp_path, tokenizer):
    from rl_router.models import load_router
    from rl_router.tiny import build_tiny_router

    model, tok = build_tiny_router(seed=0, hidden_size=32, num_layers=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _m, tok2 = load_router(str(tmp_path))
    text = "<information>[gpt-4-1106 | $0.001960 | $0.008040 left]\nSo 2 / 2 = 1 bolt; 2 + 1 = 3, total 3.50 bolts.</information>"
    assert tok2.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert tok2.eos_token_id == tokenizer.eos_token_id and tok2.pad_token_id == tokenizer.pad_token_id and tok2.padding_side == "left"
