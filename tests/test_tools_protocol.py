"""Our environments on TRL's own environment abstraction: native tool calls.

- the tool path and the tag path give the same episodes (outcomes, costs, rewards) for the
  same scripted policies, in both envs;
- the `environment_factory` adapter scores a fixed scripted episode with our reward functions;
- a plain `trl.GRPOTrainer(environment_factory=...)` (no subclass of ours) trains 2 steps on
  CPU with the adapter over the recorded pool: tool calls reach the pool, costs and budget are
  enforced, pool text is masked by TRL's `tool_mask`, and `get_reward` equals our reward
  functions on the same episodes.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rl_router.envs import make_env
from rl_router.envs.tools import environment_factory, episode_of, tools_prompt, with_tool_template
from rl_router.evaluation.evaluator import baseline_policy, score_episodes
from rl_router.models import tokenizer_from_recipe
from rl_router.recipe import load_recipe
from rl_router.rewards import build_rewards
from rl_router.rollout.engine import make_engine
from rl_router.task_sources import recipe_pool, recipe_tasks


@pytest.mark.parametrize("recipe", [None, "recipes/bopo_agentic.yaml"])
def test_tool_path_and_tag_path_give_the_same_episodes(recipe):
    sets = ["data.max_heldout=16"]
    tags, tools = load_recipe(recipe, sets), load_recipe(recipe, [*sets, "rollout.protocol=tools"])
    pool = recipe_pool(tags)
    held = recipe_tasks(tags, pool)[1]
    for name in [f"always-{m}" for m in pool.model_names] + ["random"]:
        got = {}
        for r in (tags, tools):
            tok = tokenizer_from_recipe(r)
            eps = make_engine(r, pool, tok).run(held, baseline_policy(name, tok, pool.model_names, seed=0))
            got[r.rollout.protocol] = ([e["quality"] for e in eps], [e["cost"] for e in eps], score_episodes(eps, held, r.rewards), [e["format_error"] for e in eps])
        assert got["tags"] == got["tools"], name
        assert any(q > 0 for q in got["tags"][0]) and not any(got["tags"][3])  # real episodes, well formed


def _adapter(recipe, pool):
    reward = build_rewards(recipe.rewards)[0][0]
    return environment_factory(lambda: make_env("router_r1", pool, config=recipe.env_config()), reward=reward), reward


def test_adapter_scores_a_fixed_episode_with_our_rewards_and_enforces_the_budget():
    r = load_recipe(None, ["data.max_heldout=4"])
    pool = recipe_pool(r)
    task = recipe_tasks(r, pool)[1][0]
    Env, reward = _adapter(r, pool)
    env = Env()
    text = env.reset(**task.to_row(), prompt="ignored")
    assert "mixtral-8x7b" in text and "Budget: $0.0100" in text
    reply = env.route(model="mixtral-8x7b", query="Solve the task above.")
    assert reply.startswith("[mixtral-8x7b | $") and "left]" in reply
    assert env.route(model="gpt-9", query="x").startswith("error: unknown model")
    env.answer(text="@mixtral-8x7b")
    ep = episode_of(env.env, task)
    want = reward(prompts=[task.question], completions=[""], **{k: [v] for k, v in {**task.to_row(), **ep}.items()}, split=["train"])[0]
    assert env.get_reward() == want == -1.0  # the unknown model made it a format error, as in the tag path
    # the same episode without the invalid call scores its outcome
    env = Env()
    env.reset(**task.to_row())
    env.route(model="mixtral-8x7b", query="Solve the task above.")
    env.answer(text="@mixtral-8x7b")
    assert env.get_reward() == pytest.approx((1 - 0.3) * env.env.info["quality"] + 0.3 * (1 - env.env.info["cost"] / 0.004) * (env.env.info["quality"] > 0))
    # a hard budget: a call the budget cannot cover is refused and costs nothing
    tight = load_recipe(None, ["data.max_heldout=4", "env.budget=0.001"])
    Env2, _ = _adapter(tight, pool)
    env = Env2()
    env.reset(**task.to_row())
    assert "over budget" in env.route(model="gpt-4-1106", query="Solve the task above.") and env.env.info["cost"] == 0.0


def test_plain_trl_grpo_trainer_trains_with_our_environment(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from rl_router.training.boundary import sft_rows
    from rl_router.training.sft import PolicyTokenSFTTrainer
    from rl_router.tiny import build_tiny_router
    from trl import SFTConfig

    r = load_recipe(None, ["data.max_train=32", "data.max_heldout=4", "rollout.protocol=tools"])
    pool = recipe_pool(r)
    train_tasks, _ = recipe_tasks(r, pool)
    model, tok = build_tiny_router(seed=0)
    tok = with_tool_template(tok)
    # a short warm start on tool-call trajectories (one model, so the tiny router learns its name
    # in few steps), so the router makes valid tool calls at all
    eng = make_engine(r, pool, tok)
    eps = eng.run(train_tasks, baseline_policy(f"always-{pool.model_names[0]}", tok, pool.model_names))
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=100, per_device_train_batch_size=8, learning_rate=1e-2, save_strategy="no", report_to="none", bf16=False, use_cpu=True,
                     gradient_checkpointing=False, disable_tqdm=True, logging_steps=40)
    PolicyTokenSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(sft_rows(eps, eos_id=tok.eos_token_id)), processing_class=tok).train()

    Env, reward = _adapter(r, pool)
    rows = [{"prompt": tools_prompt(t), **t.to_row()} for t in train_tasks[:8]]
    calls_before = pool.calls
    cfg = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=4, num_generations=2, max_completion_length=256, learning_rate=1e-4,
                     temperature=0.2, beta=0.0, bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, gradient_checkpointing=False, max_tool_calling_iterations=3)
    trainer = GRPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, environment_factory=Env)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = trainer._generate_and_score_completions(rows[:2] * 2)
    envs = trainer.environments
    assert pool.calls > calls_before  # tool calls reached the pool
    routed = [e for e in envs if e.env.info["n_routes"] > 0]
    assert routed and all(e.env.info["cost"] <= r.env_config().budget + 1e-12 for e in envs)
    assert (out["tool_mask"] == 0).any() and (out["tool_mask"] * out["completion_mask"]).sum() < out["completion_mask"].sum()  # pool text masked
    # TRL's reward column for the env is our reward on the same episodes
    got = trainer._logs["rewards"]["RoutingToolEnv"]
    want = [reward(prompts=[e.task.question], completions=[""], **{k: [v] for k, v in {**e.task.to_row(), **episode_of(e.env, e.task)}.items()}, split=["train"])[0] for e in envs]
    assert list(got)[-len(want):] == pytest.approx(want)
    trainer.train()
    assert trainer.state.global_step == 2 and torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_guide_plain_trl_example_runs(tmp_path, monkeypatch):
    """The guide's "use our envs with plain TRL" block (docs/guide.md) runs as written, with the
    tiny router in place of SmolLM2 and a one-step CPU config (the API calls are the guide's own)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    section = readme.split("### Use our envs with plain TRL", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'load_router("smollm2-135m")' in code and "environment_factory=Env" in code
    code = code.replace('load_router("smollm2-135m")', 'load_router("tiny")').replace(
        'output_dir="out", max_steps=2,',
        'output_dir="out", max_steps=1, per_device_train_batch_size=4, num_generations=2, max_completion_length=128, gradient_checkpointing=False, use_cpu=True, bf16=False, report_to="none", save_strategy="no",',
    )
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/guide.md", "exec"), ns)  # any drift in the imports or calls raises here
    assert isinstance(ns["Env"], type) and len(ns["rows"]) == 64
