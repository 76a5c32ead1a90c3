"""The cost knob: a scalar added to the logits of the tokens that choose a costlier model.

Why: a trained LLM router is one point on the cost-quality plane; users want the whole curve
(RouteLLM's threshold). Where the router names the model to call, the first token that commits
the name to one pool model gets `bias x weight(model)` added to its logit, with weight 0 for
the cheapest model, 1 for the costliest and the price position in between. Positive bias: more
calls to costly models; negative: fewer. Greedy decoding then flips a choice exactly when the
router's own logit margin between the names is smaller than the bias, so bias is a threshold
on the router's log-odds, the same for every tokenizer.

With the knob on (bias not 0), a model name, once begun, is also held to the pool's names:
inside a name only tokens that continue (or complete) a pool model's name are allowed. Why: a
large bias can push a router onto a name it would not have chosen, and a small router then
misspells the rest of it ("gpt-1106"), an invalid action, not a costlier call. Bias 0 leaves
generation exactly as it is.

A decision point is the text right after a *header* where a model name follows:
`<route model="` (tag protocol), `"model": "` (tool calls), and `Route to ` (the think text of
the compact warm-start trajectories, where the router names its choice before the tag). The
processor decodes the last tokens of the current turn only, so names in earlier turns or in
the prompt never count.
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping

#: (anchor, header): the header's first word finds it in the text; the name follows the header
HEADERS: tuple[tuple[str, str], ...] = (
    ("<route", '<route model="'),
    ('"model"', '"model": "'),
    ('"model"', '"model":"'),
    ("Route", "Route to "),
)
WINDOW = 48  # tokens decoded per step: enough for a header and the longest shared name prefix


def cost_weights(pool: Any) -> dict[str, float]:
    """Each model's position between the cheapest (0) and the costliest (1) by list price
    (input + output per 1M tokens): the share of the bias its name gets."""
    price = {m: float(pool.card(m).price_in) + float(pool.card(m).price_out) for m in pool.model_names}
    lo, hi = min(price.values()), max(price.values())
    return {m: 0.0 if hi <= lo else (p - lo) / (hi - lo) for m, p in price.items()}


_VOCAB: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()
_COMMITS: "weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], dict[str, list[int]]]]" = weakref.WeakKeyDictionary()
_NAMES: "weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[int]]]" = weakref.WeakKeyDictionary()


def _vocab(tokenizer: Any) -> list[str]:
    if tokenizer not in _VOCAB:
        _VOCAB[tokenizer] = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return _VOCAB[tokenizer]


def committing_tokens(tokenizer: Any, models: tuple[str, ...], rest: str, typed: str) -> dict[str, list[int]]:
    """Token ids that commit the name to one model, when `rest` of the header is still to come
    and `typed` of the name is already written: the token's text is `rest` + more name, and
    that name prefix (or the name and its closing quote) fits exactly one model."""
    key = (models, rest, typed)
    cache = _COMMITS.setdefault(tokenizer, {})
    if key not in cache:
        live = [m for m in models if m.startswith(typed)]
        out: dict[str, list[int]] = {}
        if len(live) > 1:
            for i, s in enumerate(_vocab(tokenizer)):
                if len(s) <= len(rest) or not s.startswith(rest):
                    continue
                w = typed + s[len(rest):]
                fits = [m for m in live if m.startswith(w) or w.startswith(m + '"')]
                if len(fits) == 1:
                    out.setdefault(fits[0], []).append(i)
        cache[key] = out
    return cache[key]


def name_tokens(tokenizer: Any, models: tuple[str, ...], typed: str) -> list[int]:
    """Token ids that keep a name begun as `typed` on some pool model's name (or complete it)."""
    key = (models, typed)
    cache = _NAMES.setdefault(tokenizer, {})
    if key not in cache:
        live = [m for m in models if m.startswith(typed)]
        cache[key] = [i for i, s in enumerate(_vocab(tokenizer)) if s and any(m.startswith(typed + s) or (typed + s).startswith(m) for m in live)]
    return cache[key]


def decision_state(text: str, models: tuple[str, ...]) -> tuple[str, str] | None:
    """(rest of the header, name typed so far) when `text` (the turn so far) ends inside an open
    model choice, else None."""
    best: tuple[int, str, str] | None = None
    for anchor, header in HEADERS:
        i = text.rfind(anchor)
        if i < 0:
            continue
        tail = text[i:]
        if header.startswith(tail):
            state = (header[len(tail):], "")
        elif tail.startswith(header):
            typed = tail[len(header):]
            if not any(m.startswith(typed) for m in models) or any(typed.startswith(m) for m in models):
                continue  # not a name, or already complete
            state = ("", typed)
        else:
            continue
        if best is None or i > best[0]:
            best = (i, *state)
    return None if best is None else (best[1], best[2])


class RouteBiasProcessor:
    """A transformers LogitsProcessor for one `generate` call (`start`: where this turn's new
    tokens begin in input_ids)."""

    def __init__(self, tokenizer: Any, weights: Mapping[str, float], bias: float, start: int):
        self.tokenizer, self.bias, self.start = tokenizer, float(bias), start
        self.weights = dict(weights)
        self.models = tuple(sorted(self.weights))
        self.decisions = 0  # rows x steps where the bias was applied (for tests and logs)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.bias == 0.0:
            return scores
        L = input_ids.shape[1]
        lo = max(self.start, L - WINDOW)
        if lo >= L:
            return scores
        for row, ids in enumerate(input_ids[:, lo:].tolist()):
            state = decision_state(self.tokenizer.decode(ids), self.models)
            if state is None:
                continue
            rest, typed = state
            if not rest:  # inside the name: pool names only
                allowed = name_tokens(self.tokenizer, self.models, typed)
                if allowed:
                    keep = scores[row, allowed].clone()
                    scores[row, :] = float("-inf")
                    scores[row, allowed] = keep
            commits = committing_tokens(self.tokenizer, self.models, rest, typed)
            if not commits:
                continue
            self.decisions += 1
            for m, tok_ids in commits.items():
                if self.weights[m]:
                    scores[row, tok_ids] += self.bias * self.weights[m]
        return scores
