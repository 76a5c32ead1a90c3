"""BoPO's reference-guided advantage keeps a task-blind router from collapsing to always-cheap.

The exact expectation first (every group of G episodes of a router that calls the strong model
with probability p, on a mix of tasks both models solve and tasks only the strong one does),
then learning: GRPO and BoPO trained on the same reward (BoPO's) from the same warm start, on
tasks a router cannot tell apart before it calls a model.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from pathlib import Path

import pytest
import torch

from rl_router.training.advantages import bopo_advantages, grpo_advantages

_spec = importlib.util.spec_from_file_location("exp_collapse", Path(__file__).resolve().parents[1] / "scripts" / "exp_collapse.py")
exp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exp)

LAM, MU, G = 0.5, 0.25, 4


def score(success: bool, strong: bool) -> float:
    """BoPO's reward with the boundary costs as the two ends (cheap c~ = 0, strong c~ = 1)."""
    c = 1.0 if strong else 0.0
    return 1 + LAM * (1 - c) if success else -MU * c


def expected_strong_gradient(advantage, p: float, cheap_solves: float) -> float:
    """d/d(logit p) of E[sum_i A_i log pi(a_i)], exactly, over every group of G episodes, for a
    router that picks the strong model with probability p whatever the task; `cheap_solves`:
    the share of the (solvable) tasks the cheap model solves too."""
    total = 0.0
    for klass, weight in (("both", cheap_solves), ("strong_only", 1 - cheap_solves)):
        ref = max(score(klass == "both", False), score(True, True))
        for combo in itertools.product([False, True], repeat=G):
            prob = math.prod(p if a else 1 - p for a in combo)
            success = [a or klass == "both" for a in combo]
            r = torch.tensor([score(s, a) for s, a in zip(success, combo)])
            A = advantage(r, torch.full((G,), ref), torch.tensor(success))
            total += weight * prob * sum(float(A[i]) * ((1 - p) if combo[i] else -p) for i in range(G))
    return total


def bopo(r, ref, success):
    return bopo_advantages(r, G, ref, success, torch.ones(G, dtype=torch.bool), beta=0.5)


def grpo(r, ref, success):
    return grpo_advantages(r, G) * r.std()  # scale_rewards: batch (a positive constant per batch) changes no sign


@pytest.mark.parametrize("cheap_solves", [0.7, 0.8, 0.9])
def test_bopo_pushes_toward_the_strong_model_near_always_cheap_where_grpo_pushes_away(cheap_solves):
    """Where cheap solves more than 1/(1+lam) = 2/3 of the solvable tasks, BoPO's reward alone
    makes always-cheap the best a task-blind router can do, and GRPO's expected gradient on the
    strong model is negative everywhere; BoPO's advantage keeps it positive near always-cheap
    (the router keeps calling the strong model), at every p up to the 0.8 share."""
    for p in (0.05, 0.2):
        assert expected_strong_gradient(bopo, p, cheap_solves) > 0
        assert expected_strong_gradient(grpo, p, cheap_solves) < 0
    if cheap_solves <= 0.8:
        assert expected_strong_gradient(bopo, 0.5, cheap_solves) > 0


def test_a_baseline_alone_would_not_do_it():
    """Without the success clamp (the reference only in the baseline) the expectation is
    REINFORCE's: -0.175 at a 0.8 share and p = 0.5 (the figure the issue measured)."""

    def baseline_only(r, ref, success):
        g = r.view(-1, G)
        return (g - (0.5 * g.mean(1, keepdim=True) + 0.5 * ref[0])).reshape(-1).where(success, torch.clamp((g - (0.5 * g.mean(1, keepdim=True) + 0.5 * ref[0])).reshape(-1), max=0.0))

    assert expected_strong_gradient(baseline_only, 0.5, 0.8) == pytest.approx(-0.175, abs=1e-9)


def test_on_the_same_reward_grpo_drops_the_strong_model_and_bopo_keeps_it(tmp_path):
    """The ablation (scripts/exp_collapse.py, seed 0): one reward (BoPO's), one warm start (both
    boundaries of every task: a coin flip between the models), a router that cannot tell the
    tasks apart; only the advantage differs. GRPO follows the reward's preference for a
    task-blind router (always cheap); BoPO keeps calling the strong model."""
    os.environ["RL_ROUTER_NO_PROGRESS"] = "1"
    g = exp.run("grpo", 24, tmp_path / "grpo")
    b = exp.run("bopo", 24, tmp_path / "bopo", warm=tmp_path / "grpo")
    assert b["heldout_before"]["per_task"] == g["heldout_after_sft"]["per_task"]  # one warm start for both
    start = exp.strong_share(g)
    assert 0.2 < start < 0.8 and exp.strong_share(b) == start  # the warm start flips a coin; the first batch is the same for both
    assert exp.strong_share(g, 6) < 0.15  # GRPO: always-cheap, what the reward prefers when the router cannot tell tasks apart
    assert exp.strong_share(b, 6) > 0.5  # BoPO: keeps calling the strong model
