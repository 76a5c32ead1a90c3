"""The vLLM generation code path without the vLLM engine (CPU CI has none).

`VLLMPolicy` turns a backend's raw completions (token ids + sampled-token log-probs) into
router turns; these tests run it on `HFBackend` (transformers' generate behind the same
interface) and check it reproduces `HFPolicy` exactly under greedy decoding, and that stop
tags, EOS and log-prob alignment are handled as HFPolicy handles them. The colocate and
server backends themselves need vLLM / `trl vllm-serve` and a GPU: not exercised here."""

from __future__ import annotations

import pytest

from envs import RoutingEnvConfig, make_env
from rl_router.policies import EpisodeState, HFPolicy
from rl_router.rollout import RolloutEngine
from rl_router.vllm_policy import HFBackend, Sampling, VLLMPolicy, _sampling_kwargs


def test_vllm_policy_on_hf_backend_reproduces_hf_policy_greedy(tiny_router, tokenizer, recorded_pool):
    model = tiny_router[0] if isinstance(tiny_router, tuple) else tiny_router
    tasks = recorded_pool.tasks()[:6]
    cfg = RoutingEnvConfig(budget=0.01, max_turns=2, max_obs_tokens=32)
    eng = RolloutEngine(lambda: make_env("router_r1", recorded_pool, config=cfg, tokenizer=tokenizer), tokenizer)
    a = eng.run(tasks, HFPolicy(model, tokenizer, max_new_tokens=24, temperature=0.0))
    pol = VLLMPolicy(HFBackend(model, tokenizer), tokenizer, max_new_tokens=24, temperature=0.0)
    b = eng.run(tasks, pol)
    assert pol.calls == 2
    for x, y in zip(a, b):
        assert x["completion_ids"] == y["completion_ids"] and x["env_mask"] == y["env_mask"]
        assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-5)
        assert x["policy_turns"] == y["policy_turns"] and x["quality"] == y["quality"]


class _Fixed:
    """A backend returning given raw outputs: the shape vLLM returns (ids may run past a stop
    string when it was matched as text, and end in EOS when the model stopped)."""

    def __init__(self, outs):
        self.outs, self.seen = outs, None

    def generate_ids(self, prompts, sampling):
        self.seen = (prompts, sampling)
        return self.outs


def test_turn_assembly_stops_eos_and_logprobs(tokenizer):
    eos = tokenizer.eos_token_id
    route = tokenizer.encode('<think>a</think><route model="m">q</route>', add_special_tokens=False)
    answer = tokenizer.encode("<think>b</think><answer>4</answer>", add_special_tokens=False)
    tail = tokenizer.encode(" extra words", add_special_tokens=False)
    chat = tokenizer.encode("<think>c</think> no action", add_special_tokens=False)
    outs = [
        (route + tail, [-0.1] * (len(route) + len(tail))),  # ran past the stop: cut at </route>
        (answer + [eos], [-0.2] * (len(answer) + 1)),  # EOS right after </answer>: kept, as HFPolicy keeps it
        (chat + [eos], [-0.3] * len(chat) + [-0.05]),  # EOS without an action: kept, with its log-prob
    ]
    be = _Fixed(outs)
    pol = VLLMPolicy(be, tokenizer, max_new_tokens=16, temperature=0.7, top_p=0.9)
    states = [EpisodeState(task=None, env=None, prompt_ids=[1, 2, 3]) for _ in outs]
    t = pol.act(states)
    assert t[0].ids == route and not t[0].eos and len(t[0].logprobs) == len(route)
    assert t[1].ids == answer + [eos] and t[1].eos and t[1].text.endswith("</answer>")
    assert t[2].ids == chat + [eos] and t[2].eos and t[2].logprobs[-1] == -0.05 and len(t[2].logprobs) == len(chat) + 1
    prompts, s = be.seen
    assert prompts == [[1, 2, 3]] * 3 and s.max_tokens == 16 and s.temperature == 0.7
    assert len(s.stop_token_ids) == 2  # the tiny tokenizer's </route>, </answer> are single tokens


def test_vllm_sampling_params():
    g = _sampling_kwargs(Sampling(max_tokens=8, temperature=0.0, top_p=0.5, top_k=5))
    assert g["temperature"] == 0.0 and g["top_p"] == 1.0 and g["top_k"] == -1 and g["logprobs"] == 0 and g["include_stop_str_in_output"]
    s = _sampling_kwargs(Sampling(max_tokens=8, temperature=0.7, top_p=0.9, top_k=0, stop=("</route>",), stop_token_ids=(7,)))
    assert s["top_k"] == -1 and s["stop"] == ["</route>"] and s["stop_token_ids"] == [7] and s["n"] == 1
