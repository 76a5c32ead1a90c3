"""Scripted all-names episodes, cut at the route decision (`algorithm.all_names_episodes: scripted`).

Why: in single-shot routing an episode makes one choice, its first route name; the rest (the
think text before the tag, the sub-query and the adoption after the reply) is the protocol the
warm start taught. A sampled all-names step (training/advantages.py) generates every episode in
full and runs the loss over all of it, about 60 tokens an episode on dcrouter, to train the
three to seven tokens of a name: on two CPU cores that held a 25-minute run to about 150
training tasks.

Here group episode k is the protocol's own episode to name k, written by `TargetPolicy` in the
warm start's shape (`policies.route_text` with the warm start's sub-query, then the adoption) and
run through the environment for its reward, so a name is scored by what calling that model on
this task earns. The completion handed to the loss is cut after the name's continuation
(`NAME">`): the tokens before the name are masked (the script wrote them, no sampler did), the
name's tokens carry the all-names advantage, and the loss reads their log-probs within the
allowed sets the decoder samples and scores names from (rollout/names.py). A step is then one
forward of each group's prompt for the weights and one forward and backward of it in the loss.

What is and is not the trained policy: the name distribution trained is the one the decoder
uses at the decision, given the prefix the warm start writes (`<think>Route.</think><route
model="` in the tag protocol). The protocol tokens are not trained, so they stay as the warm
start left them (or drift with the shared weights: measure format errors after), and nothing
after the first decision is trained: for routers that route once. Sampled evaluation and the
training curve still run the real decoder.
"""

from __future__ import annotations

from typing import Any

from rl_router.rollout.names import STEMS, allowed_sets, continuation
from rl_router.rollout.policies import ScriptedPolicy
from rl_router.rollout.state import EpisodeState

ROUTE = tuple((stem, cont) for stem, cont, kind in STEMS if kind == "route")


class TargetPolicy(ScriptedPolicy):
    """Route the task to the episode's `route_target` (the name the all-names group gives it),
    once, in the warm start's shape (`query`, `adopt`: `ScriptedPolicy.always`), then answer
    from that reply."""

    def __init__(self, tokenizer: Any, *, query: str = "short", adopt: bool = True):
        super().__init__(tokenizer, lambda _t: "", name="targets", routes=1, query=query, adopt=adopt)

    def _text(self, s: EpisodeState) -> str:
        if s.route_target is None:
            raise ValueError("TargetPolicy needs every episode's route_target (all-names groups: rollout.engine.enumerate_targets)")
        self.choose = lambda _t: s.route_target  # this episode's own name
        return super()._text(s)


def cut_at_decision(ep: dict[str, Any], tokenizer: Any, names: list[str], target: str, *, whole_episode: bool = False) -> dict[str, Any]:
    """The episode with its completion cut after its first route name: the route turn's tokens
    up to the stem (masked), then `target`'s continuation (in the loss, with each position's
    allowed set over `names`). `whole_episode`: then also the rest of the episode, masked from
    the policy loss: the route turn's sub-query and closing tag, the pool's reply and the
    turns after it (the adoption), what the protocol anchor (training/anchor.py) holds on one
    episode per group. `script_mask` marks the tokens the script wrote (before the name, and
    with `whole_episode` the rest of the router's turns), not the name's and not the
    environment's (the reply, the closing EOS): the anchor's tokens. The episode's outcome
    fields (quality, cost, format_error, ...) are the whole episode's. Raises ValueError where
    the first turn has no route stem or the tokenizer merges across it."""
    text = (ep.get("policy_turns") or [""])[0]
    found = [(text.find(stem), stem, cont) for stem, cont in ROUTE if stem in text]
    if not found:
        raise ValueError(f"scripted episode has no route stem in its first turn: {text[:80]!r}")
    at, stem, cont = min(found)
    conts = {n: continuation(tokenizer, stem, cont.format(name=n)) for n in names}
    if conts.get(target) is None:
        raise ValueError(f"the tokenizer merges {target!r} across {stem!r}: it cannot be a name decision")
    allowed = allowed_sets({n: c for n, c in conts.items() if c is not None})
    prefix = text[: at + len(stem)]
    ids = tokenizer.encode(text, add_special_tokens=False)
    k = next((k for k in range(len(ids) + 1) if tokenizer.decode(ids[:k]) == prefix), None)
    if k is None:  # no token boundary at the stem's end in the whole turn's tokens: encode the prefix alone
        ids, k = tokenizer.encode(prefix, add_special_tokens=False), None
    pre = ids[:k] if k is not None else ids
    name_ids = list(conts[target])
    post, post_script = [], []
    if whole_episode:
        rest = text[at + len(stem) + len(cont.format(name=target)) :]
        post = tokenizer.encode(rest, add_special_tokens=False) if rest else []
        post_script = [1] * len(post)
        mask = list(ep["env_mask"])
        first_turn_end = mask.index(0) if 0 in mask else len(mask)  # the route turn's tokens, then the reply (masked) and the turns after it
        post += list(ep["completion_ids"][first_turn_end:])
        post_script += mask[first_turn_end:]  # the router's turns (the script's), not the replies or the closing EOS
    out = dict(ep)
    out["completion_ids"] = pre + name_ids + post
    out["env_mask"] = [0] * len(pre) + [1] * len(name_ids) + [0] * len(post)
    out["script_mask"] = [1] * len(pre) + [0] * len(name_ids) + post_script
    out["logprobs"] = [float("nan")] * (len(pre) + len(name_ids) + len(post))
    out["decision_tokens"] = [(len(pre) + j, a) for j, a in enumerate(allowed[target])]
    out["route_target"] = target
    out["route_candidates"] = len(allowed)
    return out
