"""The rollout engine: token masks, EOS, boundary policies, concurrency, the TRL hook shape."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rl_router.envs import MultiRoundRoutingEnv
from rl_router.answers import extract_final_answer, score_answer
from rl_router.rollout.policies import HFPolicy, ScriptedPolicy, cut_at_stop
from rl_router.rollout.engine import RolloutEngine, make_rollout_func
from rl_router.tasks import Task

from conftest import make_sim_pool


def _segments(ids, mask):
    """Maximal runs of equal mask value: [(mask, ids), ...]."""
    out = []
    for t, m in zip(ids, mask):
        if out and out[-1][0] == m:
            out[-1][1].append(t)
        else:
            out.append((m, [t]))
    return out


def _engine(pool, tok, **env_kw):
    return RolloutEngine(lambda: MultiRoundRoutingEnv(pool, tokenizer=tok, **env_kw), tok, max_completion_tokens=4096)


def test_inserted_tokens_are_exactly_the_information_spans(recorded_pool, tokenizer):
    eng = _engine(recorded_pool, tokenizer, max_turns=4, budget=0.05)
    eps = eng.run(recorded_pool.tasks()[:6], ScriptedPolicy.always(tokenizer, "mixtral-8x7b", routes=2))
    for ep in eps:
        ids, mask = ep["completion_ids"], ep["env_mask"]
        assert len(ids) == len(mask) == len(ep["logprobs"])
        segs = _segments(ids[:-1], mask[:-1])  # the closing EOS apart (checked below)
        inserted = [tokenizer.decode(s) for m, s in segs if m == 0]
        policy = [tokenizer.decode(s) for m, s in segs if m == 1]
        assert inserted == ep["observations"] and len(inserted) == 2
        assert all(x.startswith("\n<information>") and x.endswith("</information>\n") for x in inserted)
        assert "<information>" not in "".join(policy)
        assert ids[-1] == tokenizer.eos_token_id and mask[-1] == 0  # answered: ends in EOS (TRL sees a complete episode), which no sampler produced: no loss on it
        assert policy == ep["policy_turns"]
        assert ep["n_routes"] == 2 and ep["terminated"]


def test_tiny_router_rollout_masks_and_stops(recorded_pool, tiny_router):
    model, tok = tiny_router
    eng = _engine(recorded_pool, tok, max_turns=3, budget=0.01)
    torch.manual_seed(0)
    eps = eng.run(recorded_pool.tasks()[:4], HFPolicy(model, tok, max_new_tokens=24, temperature=1.0))
    for ep in eps:
        ids, mask = ep["completion_ids"], ep["env_mask"]
        inserted = [tok.decode(s) for m, s in _segments(ids, mask) if m == 0]
        assert inserted == ep["observations"]
        n_policy = sum(mask)
        assert n_policy <= 3 * 24 + 1 and len(ep["policy_turns"]) >= 1
        assert all(lp <= 0.0 for lp, m in zip(ep["logprobs"], mask) if m == 1)
        assert ep["done_reason"] in ("max_turns", "eos_without_answer", "answer")
    assert eng.stats.turns >= 1 and eng.stats.generate_s > 0


def test_hf_policy_logprobs_match_a_forward_pass(recorded_pool, tiny_router):
    """The sampling log-probs of every policy token, in every turn of a batch decoded with the
    KV cache kept across turns, equal what a plain forward over the whole episode gives (what
    TRL recomputes: its importance ratio is then 1, and the GRPO loss is the one on-policy)."""
    model, tok = tiny_router
    eng = _engine(recorded_pool, tok, max_turns=3)
    torch.manual_seed(1)
    eps = eng.run(recorded_pool.tasks()[:6], HFPolicy(model, tok, max_new_tokens=12, temperature=0.7))
    checked = 0
    for ep in eps:
        ids = torch.tensor([ep["prompt_ids"] + ep["completion_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(ep["prompt_ids"]) - 1 : -1] / 0.7
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ep["completion_ids"])[:, None])[:, 0]
        got = torch.tensor(ep["logprobs"])
        sampled = torch.tensor([m == 1 for m in ep["env_mask"]]) & ~torch.isnan(got)  # policy tokens a sampler produced
        assert torch.allclose(got[sampled], ref[sampled], atol=1e-4)
        checked += int(sampled.sum())
    assert checked > 6 * 12 and any(0 in ep["env_mask"] for ep in eps)  # later turns, after inserted tokens, are covered


def test_cut_at_stop_finds_the_shortest_prefix(tokenizer):
    ids = tokenizer.encode('<think>a</think><route model="m">q</route> junk', add_special_tokens=False)
    cut = cut_at_stop(ids, tokenizer)
    assert tokenizer.decode(cut).endswith("</route>") and len(cut) < len(ids)
    # the stops given are the stops used, also where none of the default tags occurs
    ids = tokenizer.encode("<think>a</think> then more text", add_special_tokens=False)
    assert tokenizer.decode(cut_at_stop(ids, tokenizer, ("</think>",))) == "<think>a</think>"
    assert cut_at_stop(ids, tokenizer) == ids


def test_a_row_padded_with_eos_after_its_stop_did_not_end_by_eos(tokenizer):
    """In a batch a row that stopped at `</route>` is padded until the others finish; models
    whose pad is their EOS (SmolLM2) then show EOS after the stop. That is padding, not the
    router ending the episode (before the fix: 24 of 32 SmolLM2 episodes ended 'eos without
    answer' after their first route)."""
    from rl_router.rollout.policies import split_turn

    eos = tokenizer.eos_token_id
    route = tokenizer.encode('<think>a</think><route model="m">q</route>', add_special_tokens=False)
    assert split_turn(route + [eos, eos, eos], tokenizer) == (route, False)
    assert split_turn(route + tokenizer.encode(" more", add_special_tokens=False) + [eos], tokenizer) == (route, False)
    text = tokenizer.encode("<think>a</think> no action", add_special_tokens=False)
    assert split_turn(text + [eos, eos], tokenizer) == (text, True)  # a real EOS: the turn ended the episode
    assert split_turn(text, tokenizer) == (text, False)  # cut by max_new_tokens


def test_stop_settings_are_cached_per_tokenizer_object_and_die_with_it():
    import gc

    from rl_router.rollout.policies import _STOP_CACHE, _stop_kwargs
    from rl_router.tiny import load_tiny_tokenizer

    tok = load_tiny_tokenizer()
    kw = _stop_kwargs(tok, ("</route>", "</answer>"))
    assert kw is _stop_kwargs(tok, ("</route>", "</answer>")) and len(kw["eos_token_id"]) == 3
    assert "stopping_criteria" in _stop_kwargs(tok, ("the end",))  # multi-token stop: criteria
    before = len(_STOP_CACHE)
    del tok, kw
    gc.collect()
    assert len(_STOP_CACHE) == before - 1  # nothing a later tokenizer at the same address could inherit


@pytest.mark.parametrize("model", ["mixtral-8x7b", "gpt-4-1106"])
def test_boundary_policies_reproduce_the_recorded_columns(recorded_pool, tokenizer, model):
    tasks = recorded_pool.tasks()[:120]
    eng = _engine(recorded_pool, tokenizer, max_turns=2, max_obs_tokens=4096)
    eps = eng.run(tasks, ScriptedPolicy.always(tokenizer, model))
    for t, ep in zip(tasks, eps):
        resp = recorded_pool.recorded(t.task_id).answers[model].response
        assert ep["quality"] == score_answer(extract_final_answer(resp), t.gold, "number")
        assert ep["calls"][model] == 1 and ep["cost"] == pytest.approx(recorded_pool.estimate_cost(model, [{"role": "user", "content": t.question}], max_tokens=1, context=t.context()))
    acc = sum(ep["quality"] for ep in eps) / len(eps)
    recorded = sum(recorded_pool.recorded(t.task_id).answers[model].correct for t in tasks) / len(tasks)
    assert abs(acc - recorded) < 0.05


def test_pool_calls_of_a_turn_run_concurrently(tokenizer):
    """Each turn's 64 pool calls are in flight together (counted by the pool; a loaded machine
    cannot flip a count the way it flips a wall-clock bound)."""
    pool = make_sim_pool(latency_ms=200)
    tasks = [Task(f"task {i}", gold="g", topic="easy") for i in range(64)]
    eng = RolloutEngine(lambda: MultiRoundRoutingEnv(pool, max_turns=4), tokenizer)
    eps = eng.run(tasks, ScriptedPolicy.always(tokenizer, "small", routes=3))
    assert all(ep["n_routes"] == 3 for ep in eps) and pool.calls == 64 * 3
    assert pool.max_inflight == 64 and eng.stats.turns == 4  # 3 route turns + 1 answer turn


def test_rollout_func_returns_one_episode_per_prompt_in_trl_shape(recorded_pool, tiny_router):
    model, tok = tiny_router
    tasks = recorded_pool.tasks()[:3]
    eng = _engine(recorded_pool, tok, max_turns=2)
    f = make_rollout_func(eng, tasks, lambda trainer: HFPolicy(trainer.model, tok, max_new_tokens=8))
    prompts = [t.question for t in tasks for _ in range(2)]  # TRL repeats each prompt num_generations times
    model.train()
    out = f(prompts, SimpleNamespace(model=model))
    for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "cost", "n_routes", "answer", "over_budget", "calls", "policy_turns", "split"):
        assert len(out[key]) == 6, key
    assert out["task_id"] == [t.task_id for t in tasks for _ in range(2)]
    assert out["split"] == ["train"] * 6  # the split follows the model's mode, as in TRL
    model.eval()
    assert f(prompts[:2], SimpleNamespace(model=model))["split"] == ["eval"] * 2
    with pytest.raises(KeyError, match="not found"):
        f(["an unknown prompt"], SimpleNamespace(model=model))


def test_ranks_stay_in_step_when_others_still_generate(recorded_pool, tokenizer):
    """Multi-process rule: a rank whose episodes are done keeps making (dummy) generate calls
    while any other rank is active, so all ranks make the same number of calls."""
    from rl_router.envs import make_env
    from rl_router.rollout.policies import ScriptedPolicy
    from rl_router.rollout.engine import RolloutEngine

    class Counting:
        def __init__(self, inner):
            self.inner, self.calls, self.empty = inner, 0, 0

        def act(self, states):
            self.calls += 1
            self.empty += not states
            return self.inner.act(states)

    tasks = recorded_pool.tasks()[:3]
    engine = RolloutEngine(lambda: make_env("router_r1", recorded_pool, tokenizer=tokenizer), tokenizer)
    plain = Counting(ScriptedPolicy.always(tokenizer, "mixtral-8x7b", query="short", adopt=True))
    ref = engine.run(tasks, plain)
    other_rank_turns = [True] * (plain.calls + 3) + [False]  # another rank needs 3 more turns
    synced = Counting(ScriptedPolicy.always(tokenizer, "mixtral-8x7b", query="short", adopt=True))
    seen = []

    def keep_going(local_active):
        seen.append(local_active)
        return local_active or other_rank_turns[len(seen) - 1]

    eps = engine.run(tasks, synced, keep_going=keep_going)
    assert synced.calls == plain.calls + 3 and synced.empty == 3
    assert [e["completion_ids"] for e in eps] == [e["completion_ids"] for e in ref]


def test_hf_policy_dummy_turn_without_episodes(tiny_router):
    from rl_router.rollout.policies import HFPolicy

    model, tok = tiny_router
    p = HFPolicy(model, tok, max_new_tokens=4)
    assert p.act([]) == [] and p.dummy_calls == 1


def test_batches_run_shortest_task_first_and_episodes_come_back_in_task_order(recorded_pool, tokenizer, tiny_router):
    """run_sharded and run_biases batch tasks by length (a lock-step batch runs at its longest
    row's width) and return one episode per task, in the caller's order."""
    from rl_router.rollout.engine import by_length, run_biases, run_sharded

    tasks = recorded_pool.tasks()[:7]
    tasks = [Task(question=t.question + " pad" * n, gold=t.gold, dataset=t.dataset, topic=t.topic, task_id=t.task_id) for t, n in zip(tasks, [30, 0, 12, 50, 3, 40, 7])]
    seen: list[list[int]] = []

    class Recording(ScriptedPolicy):
        def act(self, states):
            if states and not any(s.completion_ids for s in states):  # a batch's first turn
                seen.append([len(s.task.question) for s in states])
            return super().act(states)

    eng = _engine(recorded_pool, tokenizer, max_turns=2, budget=0.05)
    policy = Recording(tokenizer, lambda t: "mixtral-8x7b", routes=1)
    eps = run_sharded(eng, tasks, policy, batch_size=3)
    assert [e["task_id"] for e in eps] == [t.task_id for t in tasks]
    lengths = sorted(len(t.question) for t in tasks)
    assert seen == [lengths[0:3], lengths[3:6], lengths[6:]] and by_length(tasks) == sorted(range(7), key=lambda i: len(tasks[i].question))
    from rl_router.rollout.names import cost_weights

    model, tok = tiny_router
    curve = HFPolicy(model, tok, max_new_tokens=8, temperature=0.0, biases=(-4.0, 4.0), route_weights=cost_weights(recorded_pool), names=recorded_pool.model_names)
    got = run_biases(_engine(recorded_pool, tok, max_turns=2, budget=0.05), tasks, curve, [-4.0, 4.0], batch_size=4)
    assert all([e["task_id"] for e in got[b]] == [t.task_id for t in tasks] for b in (-4.0, 4.0))
