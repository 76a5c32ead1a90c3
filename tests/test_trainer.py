"""The trainer on real TRL: the rollout_func contract of trl==1.16.0, env_mask giving pool
tokens zero loss weight, RLOO / BoPO advantages against hand computations, BoPO's reward."""

from __future__ import annotations

import importlib.metadata
from collections import Counter

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from rl_router.training.advantages import bopo_advantages, grpo_advantages, rloo_advantages
from rl_router.boundary_records import BoundaryRecord, classify
from rl_router.training.boundary import BoPOReward, boundary_reward_refs, synthesize_sft
from rl_router.tiny import build_tiny_router
from rl_router.training.trainer import RouterGRPOTrainer

G = 4


def test_trl_is_pinned_to_the_version_whose_contract_we_test():
    assert importlib.metadata.version("trl") == "1.16.0"


# ---- a real GRPOTrainer driven by a fixed rollout ------------------------------------------
class FixedRollout:
    """rollout_func returning hand-made episodes: prompt, policy tokens (env_mask 1), then
    pool-inserted tokens (env_mask 0) *at the end*, so changing the inserted tokens cannot
    change any policy token's context: only their own loss weight could matter."""

    def __init__(self, tok, inserted: list[int], mask_inserted: bool = True, rewards: list[float] | None = None):
        self.tok, self.inserted, self.mask_inserted = tok, inserted, mask_inserted
        self.rewards = rewards or [1.0, 0.0, 0.5, -1.0, 0.2, 0.9, -0.5, 0.0]
        self.calls: list[list[str]] = []

    def __call__(self, prompts, trainer):
        self.calls.append(list(prompts))
        out = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "fixed_reward", "task_id", "quality", "cost", "n_routes")}
        for i, p in enumerate(prompts):
            pids = self.tok(p)["input_ids"]
            policy = self.tok(f'<think>go {i}</think><route model="a">q</route>')["input_ids"]
            comp = policy + self.inserted
            out["prompt_ids"].append(pids)
            out["completion_ids"].append(comp)
            out["logprobs"].append([-1.0] * len(comp))
            out["env_mask"].append([1] * len(policy) + [0 if self.mask_inserted else 1] * len(self.inserted))
            out["fixed_reward"].append(self.rewards[i % len(self.rewards)])
            out["task_id"].append(p)
            out["quality"].append(1.0 if (self.rewards[i % len(self.rewards)] or 0) > 0 else 0.0)
            out["cost"].append(0.001 * i)
            out["n_routes"].append(1)
        return out


def fixed_reward(prompts, completions, completion_ids=None, **kw):
    return list(kw["fixed_reward"])


def make_trainer(tmp_path, tok, rollout, advantage="grpo", **kw):
    model, _ = build_tiny_router(seed=0, hidden_size=32, num_layers=1)
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=G, max_steps=1, learning_rate=1e-3,
        beta=0.0, bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", max_completion_length=64,
        gradient_checkpointing=False, seed=0,
    )
    ds = Dataset.from_list([{"prompt": f"question number {i}"} for i in range(4)])
    return RouterGRPOTrainer(model=model, reward_funcs=[fixed_reward], args=args, train_dataset=ds, processing_class=tok, rollout_func=rollout, advantage=advantage, **kw)


def batch_inputs(trainer):
    """One generation batch exactly as TRL's sampler hands it over (groups repeated)."""
    return [{"prompt": f"question number {i // G}"} for i in range(8)]


def grads_for(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by TRL's loop
    out = trainer._generate_and_score_completions(batch_inputs(trainer))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}, out


def test_rollout_hook_gets_prompts_repeated_in_contiguous_groups(tmp_path, tokenizer):
    rollout = FixedRollout(tokenizer, inserted=tokenizer("<information>x</information>")["input_ids"])
    trainer = make_trainer(tmp_path, tokenizer, rollout)
    trainer.train()
    assert trainer.state.global_step == 1
    got = rollout.calls[0]
    assert len(got) == 8
    groups = [got[i : i + G] for i in range(0, 8, G)]
    assert all(len(set(g)) == 1 for g in groups) and groups[0][0] != groups[1][0]
    logged = trainer.state.log_history[0]
    assert "episode/cost" in logged and "episode/quality" in logged and "reward" in logged


def test_pool_tokens_have_zero_loss_weight(tmp_path, tokenizer):
    ins_a = tokenizer("<information>the answer is 42</information>")["input_ids"]
    ins_b = tokenizer("<information>a wholly different reply, longer</information>")["input_ids"]
    ins_b = (ins_b + ins_b)[: len(ins_a)]  # same length, different tokens
    assert ins_a != ins_b
    torch.manual_seed(0)
    ga, out_a = grads_for(make_trainer(tmp_path / "a", tokenizer, FixedRollout(tokenizer, ins_a)))
    gb, _ = grads_for(make_trainer(tmp_path / "b", tokenizer, FixedRollout(tokenizer, ins_b)))
    assert out_a["tool_mask"].sum() < out_a["completion_mask"].sum()  # TRL received our env_mask
    assert (out_a["advantages"].abs() > 0).any()
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=1e-7, msg=f"gradient of {n} depends on pool tokens")
    # control: without the mask the same perturbation does move the gradient (the test can fail)
    ua, _ = grads_for(make_trainer(tmp_path / "c", tokenizer, FixedRollout(tokenizer, ins_a, mask_inserted=False)))
    ub, _ = grads_for(make_trainer(tmp_path / "d", tokenizer, FixedRollout(tokenizer, ins_b, mask_inserted=False)))
    assert any(not torch.allclose(ua[n], ub[n]) for n in ua)


def test_rloo_trainer_uses_leave_one_out_advantages(tmp_path, tokenizer):
    rewards = [1.0, 0.0, 0.5, -1.0, 0.2, 0.9, -0.5, 0.0]
    trainer = make_trainer(tmp_path, tokenizer, FixedRollout(tokenizer, [5, 6], rewards=rewards), advantage="rloo")
    _, out = grads_for(trainer)
    hand = []
    for g in (rewards[:4], rewards[4:]):
        hand += [r - (sum(g) - r) / 3 for r in g]
    torch.testing.assert_close(out["advantages"], torch.tensor(hand), rtol=0, atol=1e-6)


# ---- advantages by hand --------------------------------------------------------------------
def test_rloo_matches_hand_computation():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0])
    # group 1: mean of others for r0 = (0+0+1)/3 = 1/3 -> 2/3; r1: (1+0+1)/3 = 2/3 -> -2/3
    # group 2: r4=3: others (1+2+2)/3 = 5/3 -> 4/3; r5=1: others 7/3 -> -4/3; r6=2: others 2 -> 0
    torch.testing.assert_close(rloo_advantages(r, 4), torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 4 / 3, -4 / 3, 0.0, 0.0]))
    with pytest.raises(ValueError, match="num_generations"):
        rloo_advantages(r, 3)


def test_grpo_reference_matches_hand_computation():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()
    torch.testing.assert_close(grpo_advantages(r, 4), (r - 0.5) / (std + 1e-4))


def test_bopo_advantage_matches_hand_computation_and_never_favours_cheap_failure():
    # one strong_only task: two costly successes (1.2, 1.0), two cheap failures (0.0, -0.1)
    r = torch.tensor([1.2, 1.0, 0.0, -0.1])
    ref = torch.full((4,), 1.0)
    success = torch.tensor([True, True, False, False])
    solvable = torch.tensor([True] * 4)
    adv = bopo_advantages(r, 4, ref, success, solvable, beta=0.5)
    base = 0.5 * r.mean() + 0.5 * 1.0  # (1-beta)*mean + beta*ref = 0.5*0.525 + 0.5 = 0.7625
    torch.testing.assert_close(adv, r - base)
    assert adv[:2].min() > adv[2:].max()
    # a group of identical cheap failures on a solvable task: GRPO gives 0, BoPO pushes down
    same = torch.zeros(4)
    assert grpo_advantages(same, 4).abs().max() == 0
    down = bopo_advantages(same, 4, ref, torch.zeros(4, dtype=torch.bool), solvable, beta=0.5)
    torch.testing.assert_close(down, torch.full((4,), -0.5))
    # a failure is clamped to <= 0 on a solvable task even when the group did worse
    worse = torch.tensor([-1.0, -1.0, -1.0, -0.2])
    clamped = bopo_advantages(worse, 4, torch.full((4,), -0.5), torch.zeros(4, dtype=torch.bool), solvable, beta=0.9)
    assert clamped[3] == 0.0 and (clamped <= 0).all()
    # a right answer in a broken episode is not a success: the clamp must not shield it
    broken = bopo_advantages(torch.tensor([1.5, -1.0, 1.5, 1.5]), 4, torch.full((4,), 1.5), torch.tensor([True, False, True, True]), solvable, beta=0.5)
    assert broken[1] < 0
    # ... but not on a task neither boundary solves
    free = bopo_advantages(worse, 4, torch.full((4,), -0.5), torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool), beta=0.9)
    assert free[3] > 0


# ---- BoPO reward -----------------------------------------------------------------------
def records():
    return {
        "t_both": BoundaryRecord("t_both", "c", "s", True, 0.001, True, 0.021),
        "t_strong": BoundaryRecord("t_strong", "c", "s", False, 0.001, True, 0.021),
        "t_none": BoundaryRecord("t_none", "c", "s", False, 0.001, False, 0.021),
    }


def test_boundary_classes():
    assert [classify(*x) for x in ((True, True), (False, True), (True, False), (False, False))] == ["both", "strong_only", "cheap_only", "neither"]
    assert {k: r.klass for k, r in records().items()} == {"t_both": "both", "t_strong": "strong_only", "t_none": "neither"}


def test_sft_mix_is_stratified_and_the_escalation_share_is_settable():
    recs = records()
    eps = {tid: {"cheap": {"who": (tid, "cheap")}, "strong": {"who": (tid, "strong")}} for tid in recs}
    count = lambda mix: Counter(e["who"] for e in mix)  # noqa: E731
    # equal strata for the classes present (both, strong_only), neither at its rate
    c = count(synthesize_sft(recs, eps, 100, neither_rate=0.1))
    assert c == {("t_none", "cheap"): 10, ("t_both", "cheap"): 45, ("t_strong", "strong"): 45}
    c = count(synthesize_sft(recs, eps, 100, neither_rate=0.1, strong_only_share=0.7))
    assert c == {("t_none", "cheap"): 10, ("t_both", "cheap"): 20, ("t_strong", "strong"): 70}
    with pytest.raises(ValueError, match="strong_only_share"):
        synthesize_sft(recs, eps, 100, neither_rate=0.1, strong_only_share=0.95)


def test_bopo_reward_formula_and_ordering():
    rw = BoPOReward(records(), lam=0.5, mu=0.25)
    # c~ = (c - 0.001) / 0.02
    assert rw.score("t_both", True, 0.001) == pytest.approx(1.5)  # cheap success: 1 + lam
    assert rw.score("t_both", True, 0.021) == pytest.approx(1.0)  # strong success: 1 + lam*(1-1)
    assert rw.score("t_both", True, 0.011) == pytest.approx(1.25)
    assert rw.score("t_strong", False, 0.001) == pytest.approx(0.0)  # cheap failure
    assert rw.score("t_strong", False, 0.021) == pytest.approx(-0.25)  # strong failure: -mu
    assert rw.score("t_strong", True, 0.1) == pytest.approx(0.5)  # c~ clipped at 2: 1 - lam
    assert rw.score("t_strong", False, 0.1) == pytest.approx(-0.5)
    assert rw.score("t_strong", True, 0.001, format_ok=False) == -1.0
    # every success outranks every failure, every failure outranks a format error
    succ = [rw.score("t_strong", True, c) for c in (0.0, 0.01, 0.05, 1.0)]
    fail = [rw.score("t_strong", False, c) for c in (0.0, 0.01, 0.05, 1.0)]
    assert min(succ) > max(fail) > min(fail) > -1.0
    refs, solvable = boundary_reward_refs(rw, ["t_both", "t_strong", "t_none"])
    assert refs == pytest.approx([1.5, 1.0, 0.0]) and solvable == [True, True, False]
    with pytest.raises(ValueError, match="lam"):
        BoPOReward(records(), lam=1.0)
    with pytest.raises(ValueError, match="mu"):
        BoPOReward(records(), mu=0.5)


def test_bopo_reward_reads_rollout_fields():
    rw = BoPOReward(records())
    ok = ["<think>a</think><route model=\"c\">q</route>", "<think>b</think><answer>@c</answer>"]
    vals = rw(prompts=["p"] * 3, completions=[""] * 3, task_id=["t_both", "t_strong", "t_strong"], quality=[1.0, 0.0, 1.0], cost=[0.001, 0.001, 0.021], policy_turns=[ok, ok, ["garbage"]])
    assert vals == pytest.approx([1.5, 0.0, -1.0])


def test_checkpoints_are_renamed_into_place_and_rotated(tmp_path, tokenizer):
    rollout = FixedRollout(tokenizer, inserted=[5, 6])
    trainer = make_trainer(tmp_path, tokenizer, rollout)
    trainer.args.max_steps, trainer.args.save_strategy, trainer.args.save_steps, trainer.args.save_total_limit = 3, "steps", 1, 2
    trainer.train()
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-2", "checkpoint-3"] and not (tmp_path / ".staging").exists()
    for n in names:
        assert (tmp_path / n / "trainer_state.json").exists() and (tmp_path / n / "optimizer.pt").exists()


# ---- sampler log-probs through TRL's importance-sampling correction -------------------------
class ForcedPolicy:
    """Scripted turns with their *true* log-probs under the model at temperature T (one forward
    pass): what a sampler that happened to draw these tokens would report. Every episode
    answers, so the engine closes each with an EOS that no sampler produced."""

    def __init__(self, model, tok, temperature):
        self.model, self.tok, self.T = model, tok, temperature

    def act(self, states):
        from rl_router.rollout.policies import Turn

        out = []
        for s in states:
            text = '<think>a</think><route model="mixtral-8x7b">go</route>' if not s.policy_turns else "<think>b</think><answer>@mixtral-8x7b</answer>"
            ids = self.tok.encode(text, add_special_tokens=False)
            ctx = torch.tensor([s.context_ids + ids])
            with torch.no_grad():
                logits = self.model(ctx).logits[0, len(s.context_ids) - 1 : -1].float() / self.T
            lps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0].tolist()
            out.append(Turn(ids, lps, text, False))
        return out


@pytest.mark.parametrize("mode", ["sequence_mask", "token_truncate"])
def test_importance_sampling_ratio_is_one_on_every_trained_token(tmp_path, recorded_pool, tokenizer, mode):
    """TRL 1.16 corrects vLLM rollouts by exp(logp_model - logp_sampler) per token (or per
    sequence). Our rollouts report true sampler log-probs for sampled tokens and NaN ("no
    sampler log-prob", which TRL neutralises to a ratio of 1) for tokens no sampler produced:
    the EOS the engine appends after </answer>, which is also out of the loss (env_mask 0). So
    TRL's ratio is 1 everywhere; an invented 0.0 would scale each answered episode by p(EOS)
    (or mask it out, per sequence)."""
    from rl_router.envs import MultiRoundRoutingEnv
    from rl_router.rollout.engine import RolloutEngine, make_rollout_func

    T = 0.7
    tasks = recorded_pool.tasks()[:2]
    model, _ = build_tiny_router(seed=0, hidden_size=32, num_layers=1)
    engine = RolloutEngine(lambda: MultiRoundRoutingEnv(recorded_pool, tokenizer=tokenizer, max_turns=3), tokenizer)
    rollout = make_rollout_func(engine, tasks, lambda tr: ForcedPolicy(tr.model, tokenizer, T))
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=1, learning_rate=1e-3, temperature=T,
        beta=0.0, bf16=False, use_cpu=True, report_to="none", save_strategy="no", max_completion_length=512, gradient_checkpointing=False,
        vllm_importance_sampling_mode=mode,
    )
    ds = Dataset.from_list([{"prompt": t.question} for t in tasks])
    trainer = RouterGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [1.0] * len(completions)], args=args, train_dataset=ds, processing_class=tokenizer, rollout_func=rollout)
    # drive TRL's vLLM branch of _generate_and_score_completions with our rollout (no vLLM engine
    # is needed: the rollout_func supplies the tokens; weights are "already synced")
    trainer.use_vllm, trainer.vllm_importance_sampling_correction, trainer._last_loaded_step = True, True, trainer.state.global_step
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks for _ in range(2)])
    ratio, mask = out["importance_sampling_ratio"], out["completion_mask"] * out["tool_mask"]
    eos = out["completion_ids"] == tokenizer.eos_token_id
    assert eos.sum() == 4  # every episode answered and was closed by the engine's EOS (TRL sees it: not truncated)
    assert (eos & mask.bool()).sum() == 0  # ... which no sampler produced: it carries no loss
    if mode == "sequence_mask":
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=2e-3)
    else:
        torch.testing.assert_close(ratio[mask.bool()], torch.ones(int(mask.sum())), rtol=0, atol=2e-3)


@pytest.mark.parametrize("advantage", ["rloo", "bopo"])
def test_unscorable_episodes_get_zero_advantage_and_logs_show_the_advantages_used(tmp_path, tokenizer, advantage):
    """TRL marks an episode whose every reward function returned None as unscorable (NaN): it
    takes no share of its group's baseline and gets advantage 0. Our RLOO / BoPO replace TRL's
    GRPO advantages, so they must honour the same rule, and what TRL logs as the advantages
    must be the ones the loss used."""
    rewards = [1.0, None, 0.0, 0.5, 0.2, 0.9, None, 0.0]
    rollout = FixedRollout(tokenizer, [5, 6], rewards=rewards)
    kw = {}
    if advantage == "bopo":
        recs = {f"question number {i}": BoundaryRecord(f"question number {i}", "c", "s", True, 0.0, True, 0.1) for i in range(4)}
        kw = {"bopo_reward": BoPOReward(recs), "bopo_beta": 0.5}
    trainer = make_trainer(tmp_path, tokenizer, rollout, advantage=advantage, **kw)
    _, out = grads_for(trainer)
    adv = out["advantages"]
    assert adv[1] == 0.0 and adv[6] == 0.0
    if advantage == "rloo":  # the group [1, -, 0, .5]: baselines over the other *scorable* rewards
        torch.testing.assert_close(adv[[0, 2, 3]], torch.tensor([1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5]), rtol=0, atol=1e-6)
    else:  # baseline 0.5 * mean(1, 0, .5) + 0.5 * ref 1.5 (a cheap success at cost 0: 1 + lam) = 1.0;
        # episode 3 (0.5) succeeded on a solvable task: never pushed down, its -0.5 becomes 0
        torch.testing.assert_close(adv[[0, 2, 3]], torch.tensor([0.0, -1.0, 0.0]), rtol=0, atol=1e-6)
    assert list(trainer._logs["advantages"]) == pytest.approx(adv.tolist())


class CostRollout(FixedRollout):
    """Group A: four right answers at four costs; group B: two right, two wrong, one cost."""

    def __call__(self, prompts, trainer):
        out = super().__call__(prompts, trainer)
        quality = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
        cost = [0.0, 0.001, 0.002, 0.003, 0.001, 0.001, 0.001, 0.001]
        out["quality"], out["cost"] = quality[: len(prompts)], cost[: len(prompts)]
        out["format_error"] = [None] * len(prompts)
        return out


@pytest.mark.parametrize("scale", ["batch", "none", "group"])
def test_the_cost_weight_survives_into_the_advantages(tmp_path, tokenizer, scale):
    """Router-R1's reward at alpha 0.3 (linear cost, $0.004 scale): inside an all-correct group
    the cost spread is worth 0.225 of reward, right against wrong 0.925. With the scaling our
    recipes set (batch; none likewise) the advantages keep that ratio, so alpha is the trade-off
    trained; TRL's default (group) divides each group by its own std and gives the cost spread
    about the same push as right against wrong."""
    from rl_router.rewards import build_rewards

    funcs, weights = build_rewards([{"name": "router_r1", "alpha": 0.3, "cost_mode": "linear", "cost_scale": 0.004, "outcome": "success"}])
    model, _ = build_tiny_router(seed=0, hidden_size=32, num_layers=1)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=G, max_steps=1, learning_rate=1e-3, beta=0.0, bf16=False, use_cpu=True,
                      report_to="none", logging_steps=1, save_strategy="no", max_completion_length=64, gradient_checkpointing=False, seed=0, scale_rewards=scale, reward_weights=weights)
    ds = Dataset.from_list([{"prompt": f"question number {i}"} for i in range(4)])
    trainer = RouterGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=ds, processing_class=tokenizer, rollout_func=CostRollout(tokenizer, inserted=[]))
    trainer.model.train()
    adv = trainer._generate_and_score_completions(batch_inputs(trainer))["advantages"].tolist()
    spread_a = adv[0] - adv[3]  # cheapest minus dearest right answer
    spread_b = adv[4] - adv[6]  # right minus wrong
    want = (1.0 - 0.775) / (0.925 - 0.0)
    if scale == "group":
        assert spread_a / spread_b > 3 * want  # the cost spread inflated to about the weight of correctness
    else:
        assert spread_a / spread_b == pytest.approx(want, rel=1e-3)


def test_recipes_choose_the_reward_scaling_on_purpose():
    from rl_router.recipe import load_recipe

    assert load_recipe(None).trainer["scale_rewards"] == "batch"
    for name in ("quickstart", "rloo", "smollm2_135m", "mmlu_pro", "dcrouter", "bopo_agentic"):
        assert load_recipe(f"recipes/{name}.yaml").trainer.get("scale_rewards") in ("batch", "none"), name


class BrokenRightRollout(FixedRollout):
    """Episode 0 answers right (quality 1) in a broken episode (a format error): BoPO's reward is -1."""

    def __call__(self, prompts, trainer):
        out = super().__call__(prompts, trainer)
        out["format_error"] = [("turn 1: unclosed <think>" if i == 0 else None) for i in range(len(prompts))]
        out["quality"][0] = 1.0
        return out


def test_bopo_does_not_shield_a_right_answer_in_a_broken_episode(tmp_path, tokenizer):
    """The success clamp keeps solving a solvable task from being pushed down; a format error
    is not a success, whatever the adopted answer: its -1 must stay a negative advantage."""
    rollout = BrokenRightRollout(tokenizer, [5, 6], rewards=[-1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5])
    recs = {f"question number {i}": BoundaryRecord(f"question number {i}", "c", "s", True, 0.0, True, 0.1) for i in range(4)}
    trainer = make_trainer(tmp_path, tokenizer, rollout, advantage="bopo", bopo_reward=BoPOReward(recs), bopo_beta=0.5)
    _, out = grads_for(trainer)
    assert out["advantages"][0] < 0


def test_one_per_task_warm_starts_skip_the_boundary_runs_unless_bopo_needs_them(tmp_path):
    """The quickstart's format-only warm start under GRPO pays no always-cheapest /
    always-strongest call (two per train task on a live pool): the boundaries stage makes only
    the format trajectories' calls. BoPO resumed on that folder needs the boundaries as its
    reference and runs them instead of reusing a file without them."""
    from rl_router.cli import QUICKSTART as QUICKSTART_RECIPE
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import setup, stage_boundaries

    sets = ["data.max_train=12", "data.max_heldout=4", "data.validation_fraction=0.0", "curve.keep_best=false"]
    run = setup(load_recipe(QUICKSTART_RECIPE, sets), str(tmp_path), False, lambda m: None)
    assert run.recipe.algorithm.sft_mix == "format" and run.recipe.algorithm.name == "grpo"
    before = run.pool.calls
    stage_boundaries(run)
    fmt = [run.boundary_episodes[t.task_id]["format"] for t in run.train_tasks]
    assert run.records == {} and run.metrics["boundary_classes"] is None
    assert all(set(e) == {"format"} for e in run.boundary_episodes.values())
    assert run.pool.calls - before == sum(sum(e["calls"].values()) for e in fmt) > 0  # the format trajectories' calls, nothing more

    from rl_router.training import pipeline

    pipeline._LOCKS.pop().close()  # the first training's process has ended: its folder lock goes with it
    bopo = setup(load_recipe(QUICKSTART_RECIPE, [*sets, "algorithm.name=bopo"]), str(tmp_path), True, lambda m: None)
    before = bopo.pool.calls
    stage_boundaries(bopo)
    assert set(bopo.records) == {t.task_id for t in bopo.train_tasks} and sum(bopo.metrics["boundary_classes"].values()) == 12
    calls = {role: sum(sum(bopo.boundary_episodes[t.task_id][role]["calls"].values()) for t in bopo.train_tasks) for role in ("cheap", "strong", "format")}
    assert calls["cheap"] == calls["strong"] == 12  # always-cheapest and always-strongest: one call on every train task
    assert bopo.pool.calls - before == sum(calls.values())
