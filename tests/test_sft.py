"""The warm start's loss: policy tokens only, and the shared prompt prefix run once per batch
with the same loss and gradients as one full forward."""

from __future__ import annotations

import torch

from rl_router.tiny import build_tiny_router
from rl_router.training import sft


def test_shared_prefix_gives_the_full_forwards_loss_and_gradients(monkeypatch):
    model, _ = build_tiny_router(seed=0, hidden_size=32, num_layers=2)
    torch.manual_seed(0)
    B, L, P = 4, 90, 50
    ids = torch.randint(10, 3000, (B, L))
    ids[:, :P] = ids[0, :P]  # a shared system prompt
    att = torch.ones_like(ids)
    att[2, -7:] = 0  # right padding on one row, as TRL's collator pads
    lab = ids.clone()
    lab[:, : P + 5] = -100
    lab[att == 0] = -100
    lab[1, 70:80] = -100  # an inserted pool reply inside the completion

    def run():
        model.zero_grad()
        loss, _ = sft.policy_token_loss(model, ids, lab, att)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert sft.shared_prefix(ids, att, lab) == P
    shared_loss, shared_grads = run()
    monkeypatch.setattr(sft, "MIN_SHARED_PREFIX", 10**9)  # the plain path: one full forward
    assert sft.shared_prefix(ids, att, lab) == 0
    full_loss, full_grads = run()
    assert torch.allclose(shared_loss, full_loss, atol=1e-5)
    assert shared_grads.keys() == full_grads.keys()
    for n in full_grads:
        assert torch.allclose(shared_grads[n], full_grads[n], atol=1e-5, rtol=1e-4), n


def test_no_prefix_is_shared_when_rows_differ_or_a_label_starts_early():
    ids = torch.arange(200).reshape(2, 100)
    lab = torch.full_like(ids, -100)
    assert sft.shared_prefix(ids, None, lab) == 0
    ids = torch.zeros((2, 100), dtype=torch.long)
    lab[:, 20] = 5
    assert sft.shared_prefix(ids, None, lab) == 0  # capped at 19, below the minimum worth sharing
