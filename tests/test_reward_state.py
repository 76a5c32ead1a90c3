"""Rewards that depend on a cost distribution (Router-R1's percentile cost) must not carry
state between evaluations, and training's running window must be the same on every rank."""

from __future__ import annotations

import os

import pytest
import torch.multiprocessing as mp

from rl_router.envs import MultiRoundRoutingEnv
from rl_router.evaluation.evaluator import Evaluator
from rl_router.rollout.policies import ScriptedPolicy
from rl_router.recipe import load_recipe
from rl_router.rewards import CostReward
from rl_router.rollout.engine import RolloutEngine
from rl_router.evaluation.evaluator import score_episodes
from rl_router.task_sources import recipe_tasks
from conftest import free_port

PERCENTILE = ["rewards=[{name: router_r1, alpha: 0.5, cost_mode: percentile}]", "data.max_heldout=40"]


def _episodes(pool, tok, tasks):
    eng = RolloutEngine(lambda: MultiRoundRoutingEnv(pool, tokenizer=tok, max_turns=3, budget=0.05), tok)
    return {m: eng.run(tasks, ScriptedPolicy.always(tok, m, query="short", adopt=True)) for m in pool.model_names}


def test_evaluation_scores_do_not_depend_on_what_was_scored_before(recorded_pool, tokenizer):
    recipe = load_recipe(None, PERCENTILE)
    tasks = recipe_tasks(recipe, recorded_pool)[1]
    eps = _episodes(recorded_pool, tokenizer, tasks)
    ev = Evaluator(recipe, recorded_pool, tokenizer, tasks)
    ev.set_cost_reference([e["cost"] for m in eps for e in eps[m]])
    order_a = {m: ev.summarize(eps[m])["reward"] for m in ("mixtral-8x7b", "gpt-4-1106")}
    order_b = {m: ev.summarize(eps[m])["reward"] for m in ("gpt-4-1106", "mixtral-8x7b")}
    assert order_a == order_b
    again = {m: ev.summarize(eps[m])["reward"] for m in ("mixtral-8x7b", "gpt-4-1106")}
    assert again == order_a  # scoring twice gives the same numbers: no window moved
    # the stateless scorer the evaluator uses: same numbers, whatever was scored before
    ref = [e["cost"] for m in eps for e in eps[m]]
    for m in eps:
        r = score_episodes(eps[m], tasks, recipe.rewards, cost_reference=ref)
        assert sum(r) / len(r) == pytest.approx(order_a[m])


def _rank(rank: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cr = CostReward("percentile")
    local = [0.001 * (rank + 1) * k for k in range(1, 9)]  # the ranks see different costs
    vals = cr(completions=[""] * 8, cost=local, split=["train"] * 8)
    out[rank] = (list(cr.normalizer("train")._sorted), vals)
    dist.destroy_process_group()


def test_training_cost_window_is_shared_across_ranks():
    port = free_port()
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2, join=True)
    w0, v0 = out[0]
    w1, v1 = out[1]
    assert len(w0) == 16 and w0 == w1  # one window: both ranks' costs, on both ranks
    # so a cost is scored the same wherever it was sampled: rank 0's 0.008 and rank 1's 0.008
    assert v0[7] == pytest.approx(v1[3])


def test_a_prefix_of_the_tasks_is_scored_against_the_same_reference(recorded_pool, tokenizer):
    """The untrained router is evaluated on the first N held-out tasks (data.max_heldout_initial):
    its rewards use the same fixed cost distribution as every full evaluation."""
    recipe = load_recipe(None, PERCENTILE)
    tasks = recipe_tasks(recipe, recorded_pool)[1]
    eps = _episodes(recorded_pool, tokenizer, tasks)
    ev = Evaluator(recipe, recorded_pool, tokenizer, tasks)
    ref = [e["cost"] for m in eps for e in eps[m]]
    ev.set_cost_reference(ref)
    k = 7
    got = ev.summarize(eps["gpt-4-1106"][:k], tasks[:k])
    r = score_episodes(eps["gpt-4-1106"][:k], tasks[:k], recipe.rewards, cost_reference=ref)
    assert got["reward"] == pytest.approx(sum(r) / k) and got["episodes"] == k


def test_max_heldout_initial_must_be_positive():
    from rl_router.errors import ConfigError

    with pytest.raises(ConfigError, match="data.max_heldout_initial"):
        load_recipe(None, ["data.max_heldout_initial=0"])
