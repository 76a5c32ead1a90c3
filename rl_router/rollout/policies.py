"""Policies that produce one router turn per active episode: an LM (HF generate) or a script.

A policy sees `EpisodeState`s (context token ids, task, last observation) and returns one
`Turn` each. The rollout engine is agnostic to which: the always-<model> baselines run
through the same engine, tokenizer and environment as the trained router, so their
numbers are comparable.
"""

from __future__ import annotations

import random
import weakref
from typing import Any, Callable

from rl_router.answers import extract_final_answer
from rl_router.precision import autocast_for
from rl_router.prompts import SHORT_QUERY, STEP_NOTE
from rl_router.protocol import STOP_STRINGS
from rl_router.rollout.state import EpisodeState, Turn
from rl_router.tasks import Task


def first_stop(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> int:
    """Index just after the earliest stop string in `text`, or -1."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return min(ends) if ends else -1


def cut_at_stop(ids: list[int], tokenizer: Any, stops: tuple[str, ...] = STOP_STRINGS) -> list[int]:
    """Shortest prefix of `ids` whose decoding contains a stop string (binary search: prefix
    containment is monotone), or `ids` unchanged if none does."""
    if first_stop(tokenizer.decode(ids), stops) < 0:
        return ids
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if first_stop(tokenizer.decode(ids[:mid]), stops) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return ids[:lo]


def split_turn(new: list[int], tokenizer: Any, stops: tuple[str, ...] = STOP_STRINGS) -> tuple[list[int], bool]:
    """(the turn's tokens, whether it ended by EOS) from what generate returned for one row.

    The turn ends at the earliest stop string, or else at EOS. Why the order matters: in a
    batch, a row that stopped early is padded until the others finish, and many chat models
    pad with their EOS (SmolLM2: pad = eos = <|im_end|>). A row that stopped at `</route>` then
    shows EOS right after it, which is padding, not the router ending its episode."""
    eos_id = tokenizer.eos_token_id
    eos_at = new.index(eos_id) if eos_id in new else None
    body = new if eos_at is None else new[:eos_at]
    cut = cut_at_stop(body, tokenizer, stops)
    stopped = first_stop(tokenizer.decode(cut), stops) >= 0
    return cut, eos_at is not None and not stopped


#: per tokenizer object (weakly held: an entry dies with its tokenizer, so a new tokenizer
#: that Python puts at a freed address never inherits another one's stop ids)
_STOP_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], dict[str, Any]]]" = weakref.WeakKeyDictionary()


def _stop_kwargs(tokenizer: Any, stops: tuple[str, ...]) -> dict[str, Any]:
    """How generate stops a turn. When every stop string is a single token (the tiny
    router's tags are), they are extra EOS ids, checked inside generate for free; otherwise
    transformers' StopStringCriteria, built once per tokenizer: its constructor scans the
    whole vocabulary (~0.2 s), which `generate(stop_strings=...)` would repeat on every call."""
    per_tok = _STOP_CACHE.setdefault(tokenizer, {})
    key = tuple(stops)
    if key not in per_tok:
        ids = [tokenizer.encode(s, add_special_tokens=False) for s in stops]
        if all(len(i) == 1 for i in ids):
            per_tok[key] = {"eos_token_id": [tokenizer.eos_token_id] + [i[0] for i in ids]}
        else:
            from transformers import StoppingCriteriaList, StopStringCriteria

            per_tok[key] = {"eos_token_id": tokenizer.eos_token_id, "stopping_criteria": StoppingCriteriaList([StopStringCriteria(tokenizer, list(stops))])}
    return per_tok[key]


class GeneratePolicy:
    """Batched `model.generate` over the episodes' full contexts (left padded), re-prefilled
    every turn: the reference `HFPolicy` is measured and tested against, and the path under
    DeepSpeed ZeRO-3, where every rank must run the same number of forward passes
    (transformers' `synced_gpus`). No cost knob here (`HFPolicy` decides names).

    Returns per-token log-probabilities of the sampled tokens under the sampling
    distribution (logits / temperature), which TRL can use for importance sampling.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_strings: tuple[str, ...] = STOP_STRINGS, synced_gpus: bool = False, route_bias: float = 0.0, route_weights: dict[str, float] | None = None):
        self.model, self.tokenizer = model, tokenizer
        if route_bias:
            raise ValueError("the cost knob decides by name in HFPolicy's cached decoder; it is not available with model.generate (ZeRO-3)")
        self.route_bias, self.route_weights = 0.0, route_weights
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.stop_strings = stop_strings
        # DeepSpeed ZeRO-3: every rank must run the same number of forward passes, so
        # generate keeps stepping until all ranks finish (transformers' synced_gpus), and a
        # rank with nothing to do still generates from a one-token dummy context
        self.synced_gpus = synced_gpus
        self.dummy_calls = 0

    def act(self, states: list[EpisodeState]) -> list[Turn]:
        import torch

        tok, model = self.tokenizer, self.model
        if not states:
            self.dummy_calls += 1
            if self.synced_gpus:
                dev = next(model.parameters()).device
                ids = torch.full((1, 1), tok.eos_token_id, dtype=torch.long, device=dev)
                with torch.no_grad():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, synced_gpus=True)
            return []
        ctxs = [s.context_ids for s in states]
        width = max(len(c) for c in ctxs)
        pad = tok.pad_token_id
        input_ids = torch.full((len(ctxs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ctxs), width), dtype=torch.long)
        for i, c in enumerate(ctxs):
            input_ids[i, width - len(c):] = torch.tensor(c)
            attn[i, width - len(c):] = 1
        device = next(model.parameters()).device
        greedy = self.temperature <= 0
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": not greedy,
            "pad_token_id": pad,
            **_stop_kwargs(tok, self.stop_strings),
            "return_dict_in_generate": True,
            "synced_gpus": self.synced_gpus,
            "output_logits": True,
        }
        if not greedy:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device), **kw)
        if was_training:
            model.train()
        new_ids = out.sequences[:, width:]
        seqs = new_ids.tolist()
        logits = torch.stack(out.logits, dim=1).float()  # (B, T, V) raw logits
        logp = torch.log_softmax(logits / (self.temperature if not greedy else 1.0), dim=-1)
        chosen = logp.gather(-1, new_ids.unsqueeze(-1).to(logp.device)).squeeze(-1).tolist()  # (B, T) log p of each sampled token
        turns = []
        eos_id = tok.eos_token_id
        for i, new in enumerate(seqs):
            cut, eos = split_turn(new, tok, self.stop_strings)
            new = cut + [eos_id] if eos else cut
            lps = chosen[i][: len(cut)] + ([float(logp[i, len(cut), eos_id])] if eos else [])
            turns.append(Turn(new, lps, tok.decode(cut), eos))
        return turns


class HFPolicy:
    """A transformers router decoding its turns with a KV cache kept across turns
    (`decoder.Session`): a turn feeds only what is new, the system prompt is computed once per
    batch, and only the last position's logits are computed. With `names` (the pool's models),
    route decisions are made by name (`names.py`): greedy takes the most likely name plus the
    cost knob (`route_bias` is B, added as B x route_weights[model] to each name's
    log-probability; `biases`, several, forks an episode wherever its biases disagree, so one
    run gives every bias's episodes: `eval --curve`); sampling at B = 0 (training) draws the
    name from the same name distribution, token by token, so training and evaluation run one
    policy. `names=None` leaves every token free (the vocabulary's distribution).

    Returns per-token log-probabilities of the emitted tokens under the distribution each was
    drawn from (logits / temperature, renormalised inside a name decision), which TRL uses for
    importance sampling, and per token the set a decision renormalised over (`Turn.allowed`).
    Sampling with B != 0 draws the name from softmax((log p + B w) / T) and forces it: its
    tokens' log-probs are then the vocabulary's, not the sampled distribution's (use it to look
    at episodes, not to train). Under DeepSpeed ZeRO-3 (`synced_gpus`) it falls back to
    `GeneratePolicy`, which decides nothing by name."""

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_strings: tuple[str, ...] = STOP_STRINGS,
                 synced_gpus: bool = False, route_bias: float = 0.0, route_weights: dict[str, float] | None = None, biases: tuple[float, ...] | None = None, names: list[str] | None = None,
                 logprobs: bool | None = None, cancel: Any = None, autocast: str | None = None, share_prompts: bool = False, share_system_prompt: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.share_prompts = share_prompts  # a GRPO group's samples start from one prompt: prefill it once (decoder.Session.share_contexts)
        self.share_system_prompt = share_system_prompt  # distinct tasks read their common system prompt once (decoder.Session.share_prefix)
        self.autocast = autocast  # "bfloat16": the decoder's forwards under bf16 autocast where native (precision.py)
        self.cancel = cancel  # a threading.Event: set, the decode stops (decoder.GenerationCancelled)
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.stop_strings = stop_strings
        self.synced_gpus = synced_gpus
        self.biases = tuple(float(b) for b in (biases if biases else (route_bias,)))
        self.route_bias = self.biases[0]
        if any(self.biases) and not route_weights:
            raise ValueError("route_bias needs route_weights (names.cost_weights(pool))")
        self.route_weights = dict(route_weights or {})
        self.names = list(names or self.route_weights)
        self.greedy = temperature <= 0
        self.logprobs = (not self.greedy) if logprobs is None else logprobs  # greedy turns are never importance-weighted: no log-softmax unless asked
        self.decides = bool(self.names)
        self._fallback = GeneratePolicy(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, stop_strings=stop_strings, synced_gpus=True) if synced_gpus else None
        self.session: Any = None
        self.dummy_calls = 0
        self.undecided = 0  # decision points where no name could be scored (see names.py)

    def act(self, states: list[EpisodeState]) -> list[Turn]:
        import torch

        from rl_router.rollout.decoder import Session, decode_threads, decode_turns
        from rl_router.rollout.names import vocab_strings

        if self._fallback is not None:
            out = self._fallback.act(states)
            self.dummy_calls = self._fallback.dummy_calls
            return out
        if not states:
            self.dummy_calls += 1
            self.session = None
            return []
        tok, model = self.tokenizer, self.model
        if self.session is None or self.session.model is not model:
            self.session = Session(model, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, share_contexts=self.share_prompts, share_prefix=self.share_system_prompt)
        for s in states:
            if s.biases is None:
                s.biases = self.biases
        was_training = model.training
        model.eval()
        # one entry per session row: the episode it belongs to and the biases it stands for
        meta = [{"state": st, "biases": tuple(st.biases)} for st in states]
        threads = torch.get_num_threads()
        on_cpu = next(model.parameters()).device.type == "cpu"
        cast = autocast_for(model, self.autocast)
        try:
            with cast:  # bf16 where the recipe asks and bf16 is native (precision.py)
                if on_cpu:  # a small router decodes faster on one thread (decoder.decode_threads measures it)
                    torch.set_num_threads(decode_threads(model, len(states)))
                self.session.sync([st.uid for st in states], [st.context_ids for st in states])
                turns, forks = decode_turns(self.session, tokenizer=tok, vocab=vocab_strings(tok), max_new_tokens=self.max_new_tokens, stop_strings=self.stop_strings,
                                            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, want_logprobs=self.logprobs,
                                            decide=(lambda sess, rows, ts: self._decide(sess, rows, ts, meta)) if self.decides else None,
                                            should_stop=self.cancel.is_set if self.cancel is not None else None,
                                            max_positions=getattr(getattr(model, "config", None), "max_position_embeddings", None))
        finally:
            torch.set_num_threads(threads)
            if was_training:
                model.train()
        out = [self._turn(t) for t in turns[: len(states)]]
        for i, st in enumerate(states):
            st.biases = meta[i]["biases"]
        for j, f in enumerate(forks):  # a forked row becomes its own episode, with the biases that chose it
            row = len(states) + j
            origin = meta[row]["state"]
            child = origin.fork()
            child.biases = meta[row]["biases"]
            self.session.keys[row] = child.uid
            out[states.index(origin)].forks.append((child, self._turn(f.turn)))
        return out

    def _turn(self, t: Any) -> Turn:
        ids = list(t.ids)
        body = ids[:-1] if t.eos else ids
        return Turn(ids, list(t.logprobs), self.tokenizer.decode(body), t.eos, decisions=list(t.decisions), allowed=list(t.allowed) if any(a is not None for a in t.allowed) else None)

    def _score_names(self, session: Any, jobs: list[Any]) -> list[list[float]]:
        """Each job's names scored: log p(name) under the name distribution
        (names.allowed_sets), every candidate of every job in one tree-attention forward
        (decoder.Session.score_names)."""
        got = session.score_names([job[0] for job in jobs], [{n: job[4][n] for n in job[3]} for job in jobs])
        return [[g[n] for n in job[3]] for g, job in zip(got, jobs)]

    def _decide(self, session: Any, rows: list[int], turns: list[Any], meta: list[dict[str, Any]]) -> list[Any]:
        """Rows whose text just reached a decision stem: score the allowed names, choose, force
        the choice's tokens; fork rows whose biases disagree (names.py, decoder.Fork)."""
        from rl_router.rollout.decoder import Fork, NameDraw
        from rl_router.rollout.names import Decision, choose, continuation, group_biases, sample_choice, stem_at_end

        tok = self.tokenizer
        jobs = []
        for r in rows:
            t = turns[r]
            hit = stem_at_end(t.text)
            if hit is None:
                continue
            stem, tmpl, kind = hit
            state = meta[r]["state"]
            draw = not self.greedy and not any(meta[r]["biases"])  # training's case: sample the name distribution token by token
            if kind == "route" and t.choice is not None:  # the turn already chose: the tag carries the same name
                cont = continuation(tok, stem, tmpl.format(name=t.choice))
                if cont:
                    t.forced = list(cont)
                    t.forced_allowed = [[x] for x in cont] if draw else [None] * len(cont)
                continue
            if kind == "adopt":
                calls = (state.info or {}).get("calls") or {}
                names = [n for n in self.names if calls.get(n)]
            else:
                names = list(self.names)
            conts = {n: continuation(tok, stem, tmpl.format(name=n)) for n in names}
            names = [n for n in names if conts[n]]
            if not names:
                self.undecided += 1
                continue
            if draw:
                target = state.route_target if kind == "route" and state.route_target in names else None
                if kind == "route":
                    state.route_target = None  # only the episode's first route decision is enumerated
                t.trie = NameDraw(stem, kind, names, {n: list(conts[n]) for n in names}, target=target)
                continue
            jobs.append((r, stem, kind, names, conts, meta[r]["biases"]))
        if not jobs:
            return []
        all_scores = self._score_names(session, jobs)
        forks: list[Any] = []
        for (r, stem, kind, names, conts, row_biases), sc in zip(jobs, all_scores):
            t = turns[r]
            biases = row_biases if kind == "route" else (0.0,)
            if kind == "route" and self.greedy and len(biases) > 1:
                groups = group_biases(sc, names, self.route_weights, biases)
            elif self.greedy:
                groups = {choose(sc, names, self.route_weights, biases[0]): biases}
            else:
                groups = {sample_choice(sc, names, self.route_weights, biases[0], self.temperature): biases}
            items = list(groups.items())
            for i, (choice, bs) in enumerate(items):
                target = t if i == 0 else t.copy()
                target.forced = list(conts[choice])
                target.decisions.append(Decision(stem, names, [float(x) for x in sc], choice, bs[0]).as_dict())
                if kind == "route":
                    target.choice = choice
                if i == 0:
                    if kind == "route" and len(items) > 1:
                        meta[r]["biases"] = bs
                    continue
                session.select(list(range(session.rows)) + [r])  # the fork's row: a copy of r's cache
                meta.append({"state": meta[r]["state"], "biases": bs})
                forks.append(Fork(r, bs, target))
        return forks


def route_text(model: str, query: str, env: Any = None) -> str:
    """A scripted route turn, in the one shape every scripted policy (and the SFT data built
    from them) uses; in the env's own action syntax when it has one (tool calls). The think
    text does not name the model: the name is chosen once, at the tag, from the name
    distribution (rollout/names.py), so a warm start that copies a name out of its own think
    text does not leave the decision with no entropy to explore or a knob to move."""
    if env is not None and hasattr(env, "render_route"):
        return env.render_route(model, query)
    return f'<think>Route.</think><route model="{model}">{query}</route>'


def adopt_text(model: str, env: Any = None) -> str:
    """A scripted answer turn adopting `model`'s final answer (the name chosen at `@`)."""
    return answer_text(f"@{model}", env, think="Adopt.")


def answer_text(answer: str, env: Any = None, think: str = "Adopt the reply's final answer.") -> str:
    if env is not None and hasattr(env, "render_answer"):
        return env.render_answer(answer)
    return f"<think>{think}</think><answer>{answer}</answer>"


def text_turns(tokenizer: Any, texts: list[str]) -> list[Turn]:
    """Scripted turns from their text (no sampler: log-probs NaN, never EOS)."""
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        out.append(Turn(ids, [float("nan")] * len(ids), text, False))
    return out


def last_reply(s: EpisodeState) -> str:
    """The last observation as the tag env writes it (a tool env wraps it in its chat template's
    tool response: unwrap it)."""
    obs = s.last_obs
    if "<tool_response>" in obs:
        obs = obs.split("<tool_response>\n", 1)[-1].rsplit("\n</tool_response>", 1)[0]
    return obs


class ScriptedPolicy:
    """Route the task's question verbatim to `choose(task)`, then answer with that reply's
    final answer. `always(model)` is a boundary policy; `random(models)` the random baseline."""

    SHORT_QUERY = SHORT_QUERY
    STEP_NOTE = STEP_NOTE

    def __init__(self, tokenizer: Any, choose: Callable[[Task], str], name: str = "scripted", *, routes: int = 1, query: str = "question", adopt: bool = False):
        if query not in ("question", "short"):
            raise ValueError(f"query must be 'question' or 'short', got {query!r}")
        self.tokenizer, self.choose, self.name, self.routes, self.query, self.adopt = tokenizer, choose, name, routes, query, adopt

    @classmethod
    def always(cls, tokenizer: Any, model: str, *, routes: int = 1, query: str = "question", adopt: bool = False) -> "ScriptedPolicy":
        """A boundary policy. `query="short"` routes a fixed short sub-query instead of the
        question (recorded and simulated pools resolve it to the episode's task) and
        `adopt=True` answers `@model` instead of re-typing the reply's final answer: the
        trajectory shapes a tiny router can imitate."""
        return cls(tokenizer, lambda _t: model, name=f"always-{model}", routes=routes, query=query, adopt=adopt)

    @classmethod
    def random(cls, tokenizer: Any, models: list[str], seed: int = 0, *, query: str = "question", adopt: bool = False) -> "ScriptedPolicy":
        rng = random.Random(seed)
        return cls(tokenizer, lambda _t: rng.choice(models), name="random", query=query, adopt=adopt)

    def _text(self, s: EpisodeState) -> str:
        agentic = getattr(s.env, "final_action", "answer") == "route"  # agentic envs: route at every step
        if agentic or len(s.policy_turns) < self.routes:
            m = self.choose(s.task)
            q = self.STEP_NOTE if agentic else s.task.question if self.query == "question" else self.SHORT_QUERY
            return route_text(m, q, s.env)
        obs = last_reply(s)
        if self.adopt and "error:" not in obs:
            return adopt_text(obs.split("[", 1)[-1].split(" |", 1)[0], s.env)
        body = obs.split("]\n", 1)[-1] if "error:" not in obs else ""
        ans = extract_final_answer(body.replace("</information>", ""), s.task.answer_type) if body else "unknown"
        return answer_text(ans, s.env)

    def act(self, states: list[EpisodeState]) -> list[Turn]:
        return text_turns(self.tokenizer, [self._text(s) for s in states])
