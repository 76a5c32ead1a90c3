"""BoPO's reference-guided advantage keeps a task-blind router from collapsing to always-cheap.

The exact expectation first (every group of G episodes of a router that calls the strong model
with probability p, on a mix of tasks both models solve and tasks only the strong one does),
then learning: GRPO and BoPO trained on the same reward (BoPO's) from the same warm start, on
tasks a router cannot tell apart before it calls a model.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from rl_router.training.advantages import bopo_advantages, grpo_advantages

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


def ablation_recipe(advantage: str, steps: int) -> dict:
    """A simulated pool where cheap solves every 'easy' task and no 'hard' one, strong both;
    80% easy; the question text names no topic, so the router is task-blind until it calls."""
    return {
        "model": {"name_or_path": "tiny", "hidden_size": 64, "num_layers": 2, "seed": 0},
        "pool": {"type": "simulated", "seed": 0, "latency_scale": 0.0, "models": {
            "cheap": {"price_in": 0.2, "price_out": 0.2, "skills": {"easy": 1.0, "hard": 0.0}, "answer_tokens": 12},
            "strong": {"price_in": 5.0, "price_out": 15.0, "skills": {"easy": 1.0, "hard": 1.0}, "answer_tokens": 12}}},
        "env": {"name": "router_r1", "max_turns": 2, "budget": 0.05, "max_obs_tokens": 16},
        "rollout": {"max_new_tokens": 40},
        "rewards": [{"name": "router_r1", "alpha": 0.3, "cost_mode": "linear", "cost_scale": 0.0003}],
        "algorithm": {"name": "bopo", "advantage": advantage, "sft_examples": 128, "neither_rate": 0.0, "sft_mix": "both"},
        "sft": {"max_steps": 300, "learning_rate": 3.0e-3, "logging_steps": 50},
        "trainer": {"max_steps": steps, "per_device_train_batch_size": 32, "num_generations": 8, "learning_rate": 5e-4, "temperature": 0.7, "save_steps": 1000, "logging_steps": 1,
                    "lr_scheduler_type": "constant"},
        "data": {"source": "synthetic", "synthetic_n": 120, "synthetic_topics": ["easy", "easy", "easy", "easy", "hard"], "synthetic_template": "Synthetic task #{i}",
                 "heldout_fraction": 0.3, "seed": 0},
    }


def test_on_the_same_reward_grpo_drops_the_strong_model_and_bopo_keeps_it(tmp_path):
    """The ablation: one reward (BoPO's), one warm start (both boundaries of every task: a
    coin flip between the models), only the advantage differs. GRPO follows the reward's
    preference for a task-blind router (always cheap); BoPO keeps calling the strong model."""
    from rl_router.recipe import recipe_from_dict
    from rl_router.training.pipeline import train

    os.environ["RL_ROUTER_NO_PROGRESS"] = "1"
    g = train(recipe_from_dict(ablation_recipe("grpo", 24)), output_dir=str(tmp_path / "grpo"), log=lambda _: None)
    warm = recipe_from_dict({**ablation_recipe("bopo", 24), "model": {"name_or_path": str(tmp_path / "grpo" / "sft")}})
    warm.algorithm.sft_warmstart = False
    b = train(warm, output_dir=str(tmp_path / "bopo"), log=lambda _: None)
    def strong_share(run, first: bool) -> float:  # the sampled policy's share of strong calls, first / last 6 steps
        xs = [h["decision/route_share/strong"] for h in run["log_history"] if "decision/route_share/strong" in h]
        part = xs[:6] if first else xs[-6:]
        return sum(part) / len(part)

    assert b["heldout_before"]["per_task"] == g["heldout_after_sft"]["per_task"]  # one warm start for both
    start = (strong_share(g, True) + strong_share(b, True)) / 2
    assert 0.2 < start < 0.8  # the warm start flips a coin
    assert strong_share(g, False) < strong_share(g, True) - 0.15  # GRPO: toward always-cheap
    assert strong_share(b, False) > strong_share(g, False) + 0.25  # BoPO: keeps the strong model
