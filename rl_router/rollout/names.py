"""Route decisions made once, by name: the cost knob as an exact threshold on the router's log-odds.

A *decision point* is where a turn's text reaches a stem after which its action names a model:

| stem | continuation scored | candidates |
|---|---|---|
| `<route model="` | `NAME">` | every pool model |
| `"model": "` | `NAME",` (a tool call's arguments) | every pool model |
| `<answer>@` | `NAME</answer>` | the models this episode called |

The router's distribution over the candidates is its next-token distribution renormalised,
position by position, over the tokens that continue some candidate (`allowed_sets`: a trie over
the candidates' continuations), so log p(n) = sum_k log softmax(logits_k)[allowed_k][n_k]. It is
one distribution for training and for evaluation: training samples it token by token (at the
trainer's temperature, and the loss recomputes exactly these renormalised log-probs from one
forward pass: `training/logprobs.py`), greedy evaluation takes
argmax_n log p(n) + B * w(n), with w(n) the model's price position (0 cheapest, 1 costliest),
scoring every candidate's continuation teacher-forced (one batched forward on the shared context).
So the choice flips from n to m exactly when B * (w(m) - w(n)) exceeds log p(n) - log p(m):
B is a threshold on the router's own log-odds between names, whatever the tokenizer splits
them into and whether names share a prefix (`gpt-4o` / `gpt-4o-mini`): each name is scored
with its closing text, so a name that is a prefix of another is never credited with the
other's mass. The chosen tokens are forced, and `@NAME` can only adopt a model the episode
called (so no bias can route to one model and adopt another, and no sample adopts a model
that was never called). The decision is the action's own: free text before it is the
router's to write (the warm start's think text names no model, `policies.route_text`, so the
name is not already decided by copying it), and a router may reconsider there.

The continuation's tokens are `encode(stem + continuation)` after `encode(stem)`; a name whose
tokens do not start at the stem's end (a tokenizer that merges across it) is not offered,
and if none can be, the point is not a decision (counted in `undecided`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

#: (stem, continuation template, kind): kind "route" (a cost decision) or "adopt" (held to called models)
STEMS: tuple[tuple[str, str, str], ...] = (
    ('<route model="', '{name}">', "route"),
    ('"model": "', '{name}",', "route"),
    ("<answer>@", "{name}</answer>", "adopt"),
)

_CONT: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str], list[int] | None]]" = weakref.WeakKeyDictionary()
_VOCAB: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def vocab_strings(tokenizer: Any) -> list[str]:
    """Each token id's text (decoded alone), cached per tokenizer: a turn's text is built by
    appending these, so stems are found without decoding the turn at every step."""
    if tokenizer not in _VOCAB:
        _VOCAB[tokenizer] = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return _VOCAB[tokenizer]


def continuation(tokenizer: Any, stem: str, text: str) -> list[int] | None:
    """Token ids of `text` written right after `stem`, or None when the tokenizer would merge
    across the stem's end (then the stem is not a token boundary for this text)."""
    cache = _CONT.setdefault(tokenizer, {})
    key = (stem, text)
    if key not in cache:
        a = tokenizer.encode(stem, add_special_tokens=False)
        b = tokenizer.encode(stem + text, add_special_tokens=False)
        cache[key] = b[len(a):] if b[: len(a)] == a and len(b) > len(a) else None
    return cache[key]


def allowed_sets(conts: Mapping[str, Sequence[int]]) -> dict[str, list[list[int]]]:
    """For each name, the tokens the name distribution allows at each position of its
    continuation: every candidate's token at that position among the candidates that agree
    with this one so far (a trie over the continuations). The name distribution is the
    router's next-token distribution renormalised over these sets, position by position, so
    p(name) = prod_k softmax(logits_k)[allowed_k][tok_k]: a proper distribution over the
    candidates, sampled token by token in training and scored whole for greedy decisions, and
    computed from one forward pass in the loss (`training/logprobs.py`)."""
    out: dict[str, list[list[int]]] = {}
    items = [(n, list(c)) for n, c in conts.items()]
    for n, c in items:
        out[n] = [sorted({c2[k] for _, c2 in items if len(c2) > k and c2[:k] == c[:k]}) for k in range(len(c))]
    return out


def stem_at_end(text: str) -> tuple[str, str, str] | None:
    """The decision stem `text` (a turn so far) ends with, if any."""
    for stem, cont, kind in STEMS:
        if text.endswith(stem):
            return stem, cont, kind
    return None


@dataclass
class Decision:
    """What one decision point saw and chose (kept per turn in the episode, for curves).
    Greedy (or sampled with a cost-knob bias): `scores` are every candidate's log-probability.
    Sampled: `scores` is None; `logprob` is the chosen name's log-probability under the
    distribution it was drawn from (at the sampling temperature) and `entropy` the sum of the
    per-position entropies along it (the chain rule makes that an unbiased estimate of the
    decision's entropy, in nats)."""

    stem: str
    names: list[str]
    scores: list[float] | None
    choice: str
    bias: float
    logprob: float | None = None
    entropy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"stem": self.stem, "names": self.names, "scores": self.scores, "choice": self.choice, "bias": self.bias}
        if self.logprob is not None:
            d.update(logprob=self.logprob, entropy=self.entropy)
        return d


def cost_weights(pool: Any) -> dict[str, float]:
    """Each model's position between the cheapest (0) and the costliest (1) by what a call
    typically costs (`Pool.typical_costs`: measured on a recorded pool's tasks, else list price
    in + out per 1M tokens): the share of the bias its name gets."""
    price = {m: float(v) for m, v in pool.typical_costs().items()}
    lo, hi = min(price.values()), max(price.values())
    return {m: 0.0 if hi <= lo else (p - lo) / (hi - lo) for m, p in price.items()}


def choose(scores: Sequence[float], names: Sequence[str], weights: Mapping[str, float], bias: float) -> str:
    """argmax log p(n) + bias * w(n); ties to the earlier name (pool order)."""
    best = max(range(len(names)), key=lambda i: (scores[i] + bias * float(weights.get(names[i], 0.0)), -i))
    return names[best]


def sample_choice(scores: Sequence[float], names: Sequence[str], weights: Mapping[str, float], bias: float, temperature: float, generator: torch.Generator | None = None) -> str:
    """A name drawn from softmax((log p(n) + bias * w(n)) / temperature)."""
    x = torch.tensor([s + bias * float(weights.get(n, 0.0)) for s, n in zip(scores, names)]) / max(temperature, 1e-6)
    return names[int(torch.multinomial(torch.softmax(x, dim=0), 1, generator=generator))]


def group_biases(scores: Sequence[float], names: Sequence[str], weights: Mapping[str, float], biases: Sequence[float]) -> dict[str, tuple[float, ...]]:
    """The choice at each bias, grouped: choice -> the biases that make it (first-seen order)."""
    out: dict[str, list[float]] = {}
    for b in biases:
        out.setdefault(choose(scores, names, weights, b), []).append(b)
    return {k: tuple(v) for k, v in out.items()}
