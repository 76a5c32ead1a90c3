"""Advantage estimators over groups of episodes of the same task.

All take rewards as a flat tensor whose groups of `G` consecutive entries share a task
(TRL's RepeatSampler order) and return one advantage per episode.

GRPO (reference, TRL computes it itself):  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

RLOO (leave-one-out baseline, Ahmadian et al. 2024):
    A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r_group))
An unbiased baseline that excludes the episode's own reward; no std scaling.

BoPO (boundary-guided, reference-guided advantage; the reward is in `training/boundary.py`):
    b_g   = (1 - beta) * mean(r_group) + beta * r_ref(task)
    A_i   = r_i - b_g
    A_i   = min(A_i, 0)   if episode i failed and a boundary policy succeeds on the task
    A_i   = max(A_i, 0)   if episode i succeeded on such a task
`r_ref` is the reward the better boundary policy (always-cheapest / always-strongest) earns on
this task. Mixing it into the baseline keeps a signal when the whole group agrees (every
episode took the cheap model and failed a task the strong model solves: GRPO's advantage is 0,
BoPO's is negative). But a baseline alone changes nothing in expectation (a per-task constant
cancels from the policy gradient), so by itself BoPO would be REINFORCE on its reward, and a
router that cannot tell tasks apart would be pushed to always-cheap as soon as the cheap model
solves more than 1/(1 + lam) of the solvable tasks (2/3 at lam 0.5): the cheap-failure
solution the paper's reference-guided advantage exists to avoid. The two clamps are what
changes the expected gradient: on a task the boundaries show solvable, a failure is never
pushed up and a success never pushed down, whatever it cost next to its group. Enumerating
every group of a task-blind router exactly (tests/test_bopo.py), the expected gradient on the
strong model stays positive near always-cheap for cheap-solves shares up to 0.95 (it is
-0.175 at 0.8 without the success clamp, and GRPO's on the same reward -0.15). Our reading of
arXiv 2602.21227's intent (a reference-guided advantage against degenerate cheap failures),
not a transcription of its formula.

All names (`algorithm.advantage: all_names`; an all-actions policy gradient): each group takes
every pool model once at its first route decision (the rollout forces name k on the group's
k-th episode, `engine.enumerate_targets`; the rest of the episode is sampled), and episode i is
weighted by p_i = pi(m_i | its context), the probability the router gives the name it was made
to take:
    w_i = p_i / c                        (c = G / K: the group's episodes assigned each of K names)
    b_g = sum_i w_i r_i / sum_i w_i      (the policy's expected reward on the task)
    A_i = G * w_i * (r_i - b_g)
so the group's mean of A_i grad log pi(m_i) is sum_m pi(m) (r_m - b) grad log pi(m) =
grad sum_m pi(m) r_m: the route decision's exact expected-reward gradient on the task, not one
sampled estimate of it (exact where the group's episodes reach the decision with the same
context, as single-shot routers' near-fixed `<think>Route.</think>` does; unbiased in
expectation otherwise; and under TRL's token-summed losses, `loss_type: dapo` (its default) or
bnpo, not `grpo`'s per-sequence 1/|o_i|). Sampling G names from a collapsing policy compares few models per task
(the collapse exploration.py describes); here every model is compared on every task, each in
proportion to how likely the router is to call it. The price is one call of every model per
training task (a recorded pool replays them). Exact is not better by itself: an action's exact
gradient is proportional to its probability, so from a warm start it may settle on the good
model already favoured (measured on dcrouter: README, "All-names groups"). Episodes that reached no route decision keep
r_i - b_g unweighted. Scaled like GRPO (`scale`: batch, group or none).

All names, uniform weights (`algorithm.all_names_weights: uniform`): the same groups, every
episode weighted alike,
    A_i = r_i - mean(r_group)
so the group's sum of A_i grad log pi(m_i) is c * sum_m (r_m - rbar) grad log pi(m). For a
softmax over the names with logits z, grad_z log pi(m) = e_m - pi, and the sum is
c * (r - rbar): each model's logit moves by how much better than the task's average it is,
whatever its probability. That is the natural policy gradient's step for a softmax policy
(Kakade 2001; its tabular update is z += eta * A(m), and A differs from r - rbar by a constant
that leaves the softmax unchanged), which converges without the plateau above (Agarwal et al.
2021, Mei et al. 2020). It is not the gradient of the expected reward: it is the steepest
ascent in the policy's own (Fisher) geometry, on this decision only. The argument is for one
softmax over whole names; a router writes names as tokens that names share, so it holds for a
token-level router only roughly (measured on dcrouter it collapsed like the exact gradient:
README, "All-names groups").

All names, mirror target (`algorithm.all_names_weights: mirror`, temperature
`algorithm.all_names_temperature` = eta): each group's nine (K) rewards and the router's own
probabilities pi of the names define a target distribution over names,
    q_m = pi(m) exp(rbar_m / eta) / Z              (rbar_m: mean reward of name m's episodes)
the KL-regularised improvement of pi (mirror descent's step, the E-step of MPO, Abdolmaleki et
al. 2018: argmax_q E_q[r] - eta KL(q || pi)), and the episodes are weighted so that the group's
update is the gradient of K times the cross-entropy from q to the router's names:
    A_i = K / c * (q_{m_i} - pi(m_i))             (pi renormalised over the group's names)
For one softmax over names its logits move by K (q - pi): toward the target, whatever a good
model's current probability (a model at 1% whose reward is 0.3 above the rest has
q = 0.01 e^(0.3/eta) / Z, 0.95 at eta 0.1), so the exact gradient's plateau is gone. Unlike the
uniform weights this holds for a router that writes names as shared tokens: the cross-entropy
to a distribution over whole names is minimised at q by any factorisation of the names into
tokens, while sum_m (r_m - rbar) log pi(m) (uniform) lets one first token collect the summed
advantages of every name it starts. (pi(m) as the baseline is exact: the group's names carry all
of the decision's mass, so sum_m pi(m) grad log pi(m) = 0.) Rewards enter only through
rbar / eta, so `scale` does not apply; eta is in reward units (0.1: a reward lead of 0.1
multiplies a name's odds by e). Episodes with no route decision get 0: the target is over names.

Credit per token (`algorithm.all_names_credit: name`): the all-names advantage above is a
property of the name an episode was made to take, not of the tokens it wrote after it. Given
to every token (`episode`, the default), it pushes an episode's protocol tokens (the closing
`">`, the adoption after the reply) up or down with its name's advantage: under the mirror
target a name's episodes are pushed down by about K pi(m) whatever they wrote, and a broken
episode costs little more than a well-formed one, so nothing holds the protocol (measured on
dcrouter: 18% format errors after 16 steps; README, "All-names groups"). With `name`, the
tokens up to the end of the first route name take the all-names advantage and the tokens after
it the episode's own GRPO advantage (its reward against its group's, scaled as
`scale_rewards` says): the decision is trained toward the target, the rest of the episode by
its own outcome, as sampled GRPO trains it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _groups(rewards: torch.Tensor, G: int) -> torch.Tensor:
    if G < 1 or rewards.numel() % G:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={G}")
    return rewards.view(-1, G)


def grpo_advantages(rewards: torch.Tensor, G: int, eps: float = 1e-4) -> torch.Tensor:
    g = _groups(rewards, G)
    std = g.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(g[:, :1])
    return ((g - g.mean(dim=1, keepdim=True)) / (std + eps)).reshape(-1)


def rloo_advantages(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """NaN rewards (TRL's unscorable episodes: every reward function returned None) are left
    out of the other episodes' baselines and get advantage 0, as TRL does for GRPO."""
    if G < 2:
        raise ValueError("RLOO needs num_generations >= 2 (the baseline leaves one out)")
    g = _groups(rewards, G)
    valid = ~torch.isnan(g)
    v = torch.where(valid, g, torch.zeros_like(g))
    n_others = valid.sum(dim=1, keepdim=True) - valid.long()
    others = (v.sum(dim=1, keepdim=True) - v) / n_others.clamp(min=1)
    adv = torch.where(valid & (n_others > 0), g - others, torch.zeros_like(g))
    return adv.reshape(-1)


def bopo_advantages(rewards: torch.Tensor, G: int, ref_rewards: torch.Tensor, success: torch.Tensor, ref_solvable: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """`ref_rewards`, `ref_solvable`: per episode (constant within a group); `success`: per
    episode. NaN rewards (unscorable episodes) are left out of the group mean and get 0."""
    g = _groups(rewards, G)
    ref = _groups(ref_rewards.to(rewards.dtype), G)[:, :1]
    mean = torch.nanmean(g, dim=1, keepdim=True)
    mean = torch.where(torch.isnan(mean), ref, mean)  # a wholly unscorable group: baseline = reference
    base = (1 - beta) * mean + beta * ref
    adv = (g - base).reshape(-1)
    solvable, ok = ref_solvable.bool(), success.bool()
    adv = torch.where(solvable & ~ok, torch.clamp(adv, max=0.0), adv)  # failing a solvable task is never pushed up
    adv = torch.where(solvable & ok, torch.clamp(adv, min=0.0), adv)  # solving it is never pushed down
    return torch.nan_to_num(adv, nan=0.0)


ALL_NAMES_WEIGHTS = ("policy", "uniform", "mirror")
ALL_NAMES_CREDITS = ("episode", "name")


def all_names_advantages(rewards: torch.Tensor, G: int, names: list[str | None], logps: torch.Tensor, K: int, scale: str = "batch", eps: float = 1e-4,
                         weights: str = "policy", temperature: float = 0.1) -> torch.Tensor:
    """`names[i]`, `logps[i]`: the name episode i's first route decision took and its log-prob
    under the router's name distribution (None / NaN where it made none); `K` the number of
    names a group takes in turn (each G / K times). NaN rewards (unscorable episodes) get 0
    and no share of the baseline. `weights`: policy (the exact gradient), uniform (the
    natural gradient's direction) or mirror (toward the KL-regularised target at `temperature`;
    module docstring)."""
    if K < 1 or G % K:
        raise ValueError(f"all-names groups of {G} cannot take {K} names equally often")
    if weights not in ALL_NAMES_WEIGHTS:
        raise ValueError(f"all-names weights {weights!r}: use one of {ALL_NAMES_WEIGHTS}")
    g = _groups(rewards, G)
    p = torch.nan_to_num(logps.to(rewards.dtype).exp(), nan=0.0).view(-1, G)
    valid = ~torch.isnan(g)
    named = torch.tensor([n is not None for n in names], device=rewards.device).view(-1, G) & valid
    if weights == "mirror":
        return _mirror_advantages(g, p, named, [names[i * G:(i + 1) * G] for i in range(g.shape[0])], K, G, temperature).reshape(-1)
    if weights == "uniform":
        p = torch.full_like(p, 1.0 / K)  # every name's episodes count alike: A_i = r_i - mean(r)
    w = torch.where(named, p * K / G, torch.zeros_like(g))  # p_i / c, c = G / K episodes assigned each name
    r = torch.where(valid, g, torch.zeros_like(g))
    wsum = w.sum(dim=1, keepdim=True)
    plain = valid.sum(dim=1, keepdim=True).clamp(min=1)
    base = torch.where(wsum > 0, (w * r).sum(dim=1, keepdim=True) / wsum.clamp(min=1e-30), r.sum(dim=1, keepdim=True) / plain)
    adv = torch.where(named, G * w * (r - base), r - base)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    if scale == "batch":
        adv = adv / (rewards[~torch.isnan(rewards)].std() + eps if int((~torch.isnan(rewards)).sum()) > 1 else 1.0)
    elif scale == "group":
        adv = adv / (torch.stack([x[~torch.isnan(x)].std() if int((~torch.isnan(x)).sum()) > 1 else x.new_tensor(0.0) for x in g])[:, None] + eps)
    return adv.reshape(-1)


def _mirror_advantages(g: torch.Tensor, p: torch.Tensor, named: torch.Tensor, group_names: list[list[str | None]], K: int, G: int, eta: float) -> torch.Tensor:
    """A_i = K / c * (q_{m_i} - pi(m_i)) per group (module docstring), 0 for unnamed episodes."""
    if not eta > 0:
        raise ValueError(f"all-names mirror temperature must be > 0, got {eta}")
    adv = torch.zeros_like(g)
    c = G / K
    for row, names in enumerate(group_names):
        idx: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            if n is not None and bool(named[row, i]):
                idx.setdefault(n, []).append(i)
        if not idx:
            continue
        keys = list(idx)
        pi = torch.stack([p[row, idx[k][0]] for k in keys])
        pi = pi / pi.sum().clamp(min=1e-30)
        rbar = torch.stack([g[row, idx[k]].mean() for k in keys])
        q = torch.softmax(torch.log(pi.clamp(min=1e-30)) + rbar / eta, dim=0)
        for j, k in enumerate(keys):
            adv[row, idx[k]] = K / c * (q[j] - pi[j])
    return adv


def first_decision_end(decision_tokens: Sequence[tuple[int, Sequence[int]]] | None) -> int:
    """One past the last completion position of an episode's first name decision, 0 when it
    made none. A name's tokens are consecutive positions and the next decision comes after a
    reply, so the first decision is the first run of consecutive positions."""
    pos = sorted(p for p, _ in decision_tokens or [])
    if not pos:
        return 0
    end = pos[0]
    for p in pos[1:]:
        if p != end + 1:
            break
        end = p
    return end + 1


def name_credit(name_adv: torch.Tensor, episode_adv: torch.Tensor, decision_tokens: Sequence[Sequence[tuple[int, Sequence[int]]] | None], width: int) -> torch.Tensor:
    """(episodes x width) per-token advantages (`algorithm.all_names_credit: name`, module
    docstring): `name_adv[b]` on episode b's completion tokens up to the end of its first name
    decision, `episode_adv[b]` on the rest (all of it where the episode made no decision)."""
    if len(decision_tokens) != name_adv.numel() or episode_adv.shape != name_adv.shape:
        raise ValueError(f"{name_adv.numel()} name advantages, {episode_adv.numel()} episode advantages and {len(decision_tokens)} decision lists")
    out = episode_adv.reshape(-1, 1).expand(-1, width).clone()
    for b, d in enumerate(decision_tokens):
        end = min(first_decision_end(d), width)
        out[b, :end] = name_adv.reshape(-1)[b]
    return out
