"""Boundary-guided SFT warm start on TRL's SFTTrainer, with the loss taken on policy tokens only.

Rows come pre-tokenized from `boundary.sft_rows`: `labels` are -100 on the prompt and on
every pool-inserted `<information>` token, so the router learns to write its own turns,
never to imitate the pool.

`PolicyTokenSFTTrainer` keeps everything of SFTTrainer (data handling, collator, logging,
checkpoints, `report_to`) and replaces only `compute_loss`: it runs the decoder once, then
applies the LM head *only at the labelled positions* and takes their mean NLL. That is
the same loss TRL computes, but TRL 1.16 builds it with a chunked log-prob kernel whose
torch fallback (no Triton, i.e. CPU) walks the full vocabulary at every position,
prompt included; on the quickstart (~600-token rows, ~15% of them labelled) ours is
about 10x faster per step on 2 CPU cores (2.1 s -> 0.2 s measured), which is what keeps
the quickstart to minutes. Every warm-start row starts with the same chat template and system
prompt (about half of a SmolLM2 MMLU row): that prefix is run once per batch and its keys and
values shared by every row (`shared_prefix`), the same loss and gradients for fewer tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    m = model
    if hasattr(m, "get_base_model"):  # peft
        m = m.get_base_model()
    return m.get_decoder(), m.get_output_embeddings()


def policy_token_loss(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None, num_items_in_batch: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of next-token NLL over positions whose label is not -100, divided by their count
    (or by `num_items_in_batch` under gradient accumulation, as transformers does).

    A model wrapped for data parallelism (DDP) must run its own forward, or its gradients are
    never all-reduced: then the LM head runs at the positions labelled in *any* row of the
    batch (transformers' `logits_to_keep`), still far fewer than all positions."""
    target = labels[:, 1:]
    keep = target != -100
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        pos = keep.any(dim=0).nonzero(as_tuple=True)[0]
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=pos)
        logits = out.logits[keep[:, pos]].float()
        tgt = target[:, pos][keep[:, pos]]
    else:
        decoder, head = _decoder_and_head(model)
        P = shared_prefix(input_ids, attention_mask, labels)
        if P:
            hidden = _hidden_after_shared_prefix(decoder, input_ids, attention_mask, P)  # positions P..L-1
            keep = keep[:, P:]  # every labelled target lies after the prefix (shared_prefix ensures it)
            logits = head(hidden[:, :-1][keep]).float()
            tgt = target[:, P:][keep]
        else:
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[:, :-1]
            logits = head(hidden[keep]).float()
            tgt = target[keep]
    nll = F.cross_entropy(logits, tgt, reduction="sum")
    n = keep.sum() if num_items_in_batch is None else num_items_in_batch
    loss = nll / torch.as_tensor(n, device=nll.device).clamp(min=1)
    with torch.no_grad():
        acc = (logits.argmax(-1) == tgt).float().mean().item() if keep.any() else 0.0
    return loss, {"mean_token_accuracy": acc, "policy_tokens": float(keep.sum().item())}


#: the shortest shared prefix worth computing once (below it the two forwards cost more than they save)
MIN_SHARED_PREFIX = 32


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> int:
    """How many leading tokens every row shares (the chat template and system prompt: the same
    in every warm-start row), capped so that no labelled token is predicted from inside it; 0
    when not worth it."""
    B, L = input_ids.shape
    if B < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= (attention_mask == 1).all(dim=0)
    n = int(same.long().cumprod(0).sum())
    labelled = (labels != -100).any(dim=0).nonzero()
    if len(labelled):
        n = min(n, int(labelled[0]) - 1)  # the first labelled token's prediction must come after it
    return n if n >= MIN_SHARED_PREFIX else 0


def _hidden_after_shared_prefix(decoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, P: int) -> torch.Tensor:
    """The decoder's hidden states at positions P.. of every row, with the shared prefix run once
    (batch 1) and its KV expanded to the batch. The same function of the weights as one full
    forward (gradients flow through the prefix's keys and values into every row), for
    (B - 1) x P fewer tokens."""
    from transformers import DynamicCache

    B, L = input_ids.shape
    pre = decoder(input_ids=input_ids[:1, :P], use_cache=True).past_key_values
    cache = DynamicCache()
    for i, layer in enumerate(pre.layers):
        cache.update(layer.keys.expand(B, -1, -1, -1), layer.values.expand(B, -1, -1, -1), i)
    pos = torch.arange(P, L, device=input_ids.device)[None].expand(B, -1)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    return decoder(input_ids=input_ids[:, P:], attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).last_hidden_state


class PolicyTokenSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss touches policy tokens only (see module docstring)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        with self.accelerator.autocast():  # the loss runs the decoder and head directly, past the forward accelerate wraps for bf16
            loss, stats = policy_token_loss(model, inputs["input_ids"], inputs["labels"], inputs.get("attention_mask"), num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        for k, v in stats.items():
            self._metrics[mode][k].append(v)
        return (loss, None) if return_outputs else loss
