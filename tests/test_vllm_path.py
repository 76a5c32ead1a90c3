"""The vLLM generation code path without the vLLM engine (CPU CI has none).

`VLLMPolicy` turns a backend's raw completions (token ids + sampled-token log-probs, with
vLLM's stop semantics) into router turns. Here the backend is an independent greedy decoder
written for the test (one forward pass per token, stop at EOS or a stop token id, log-probs
from the same forward): it shares no code with `HFPolicy`, so agreeing with `HFPolicy`'s
episodes token for token checks both turn assemblies. The colocate and server backends
themselves need vLLM / `trl vllm-serve` and a GPU: not exercised here."""

from __future__ import annotations

import pytest
import torch

from rl_router.envs import RoutingEnvConfig, make_env
from rl_router.rollout.policies import EpisodeState, HFPolicy
from rl_router.rollout.engine import RolloutEngine
from rl_router.rollout.vllm import Sampling, VLLMPolicy, _sampling_kwargs


class _GreedyDecoder:
    """vLLM's contract, decoded by hand: greedy, at most `max_tokens`, stops after EOS or a
    stop token id (kept in the output, as include_stop_str_in_output does)."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok

    def generate_ids(self, prompts, sampling):
        stops = {self.tok.eos_token_id, *sampling.stop_token_ids}
        out = []
        for p in prompts:
            ids, lps = [], []
            with torch.no_grad():
                for _ in range(sampling.max_tokens):
                    logp = torch.log_softmax(self.model(torch.tensor([p + ids])).logits[0, -1].float(), -1)
                    t = int(logp.argmax())
                    ids.append(t)
                    lps.append(float(logp[t]))
                    if t in stops:
                        break
            out.append((ids, lps))
        return out


def test_vllm_policy_reproduces_hf_policy_greedy_with_an_independent_decoder(tiny_router, tokenizer, recorded_pool):
    model = tiny_router[0]
    tasks = recorded_pool.tasks()[:6]
    cfg = RoutingEnvConfig(budget=0.01, max_turns=2, max_obs_tokens=32)
    eng = RolloutEngine(lambda: make_env("router_r1", recorded_pool, config=cfg, tokenizer=tokenizer), tokenizer)
    a = eng.run(tasks, HFPolicy(model, tokenizer, max_new_tokens=24, temperature=0.0, logprobs=True))
    pol = VLLMPolicy(_GreedyDecoder(model, tokenizer), tokenizer, max_new_tokens=24, temperature=0.0)
    b = eng.run(tasks, pol)
    assert pol.calls == 2
    assert any(sum(x["env_mask"]) > 1 for x in a)  # the router generated tokens (a non-empty comparison)
    for x, y in zip(a, b):
        assert x["completion_ids"] == y["completion_ids"] and x["env_mask"] == y["env_mask"]
        assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-4, nan_ok=True)
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
