"""Boundary policies, the difficulty taxonomy, boundary-guided SFT data and BoPO's reward.

BoPO (Budget-Aware Agentic Routing via Boundary-Guided Training) anchors learning on two
boundary policies per task: always-cheapest and always-strongest.

1. `run_boundaries`: run both on every task (same engine, env and budget as training) and
   record success and cost of each. Exact on recorded pools (they are the data's columns).
2. `classify`: "both" (cheap suffices), "strong_only" (only the strong model succeeds),
   "cheap_only" (rare), "neither".
3. `synthesize_sft`: warm-start trajectories by stratified sampling over classes of the
   *cost-efficient successful* boundary trajectory of each task: the cheap trajectory when
   cheap succeeds, the strong one when only strong succeeds; "neither" tasks contribute
   the cheap (least wasteful) trajectory at a small rate. Stratifying stops the warm start
   from collapsing to whichever boundary is more common.
   `mix="stepwise"` replaces the strong trajectory of a strong_only task by the
   boundary-guided hybrid (`StepwiseBoundaryPolicy`): in agentic envs cheap at every step
   the cheap boundary got right, strong where it slipped; in Router-R1 envs a cascade (cheap
   first, then strong). The two boundary runs say where the strong model is needed; a
   whole-task boundary trajectory hides it.
4. `BoPOReward`: boundary-relative reward. With c_lo, c_hi the boundary costs on the task,
       c~ = clip((c - c_lo) / max(c_hi - c_lo, eps), 0, 2)
       r  = 1 + lam * (1 - c~)     if the episode succeeded      (in [1 - lam, 1 + lam])
       r  = -mu * c~               if it failed                   (in [-2 mu, 0])
       r  = -1                     if its format is broken
   With lam < 1 every success outranks every failure whatever it cost, and with mu < 0.5 a
   format failure is the worst outcome. `ref_reward(task)` is the reward of the better
   boundary on the task, used by the reference-guided advantage (`advantages.py`).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from rl_router.prompts import SHORT_QUERY, STEP_NOTE
from rl_router.rollout.policies import ScriptedPolicy, adopt_text, route_text, text_turns
from rl_router.protocol import check_format
from rl_router.boundary_records import CLASSES, BoundaryRecord
from rl_router.errors import check_pool_errors
from rl_router.rollout.engine import RolloutEngine, run_sharded
from rl_router.tasks import Task

class StepwiseBoundaryPolicy:
    """The boundary-guided hybrid: cheap wherever the cheap boundary run was right, strong
    only where it slipped. Scripted turns in the boundary policies' own shape (so SFT teaches
    a choice, not new syntax).

    Agentic envs: per step, cheap at every (step, attempt) the cheap boundary got right.
    Router-R1 envs: a cascade, route to cheap first; adopt its answer where the cheap boundary
    succeeded (or the strong one failed too), else route to strong and adopt that: the
    router sees the cheap reply before deciding, so it can learn which replies to distrust."""

    def __init__(self, tokenizer: Any, cheap: str, strong: str, episodes: dict[str, dict[str, dict[str, Any]]]):
        self.tokenizer, self.cheap, self.strong = tokenizer, cheap, strong
        self.cheap_ok = {tid: {(st["step"], st.get("attempt", 0)) for st in (eps["cheap"].get("steps") or []) if st.get("correct")} for tid, eps in episodes.items()}
        self.escalate = {tid for tid, eps in episodes.items() if not (eps["cheap"].get("quality") or 0) > 0 and (eps["strong"].get("quality") or 0) > 0}

    def _text(self, s: Any) -> str:
        if getattr(s.env, "final_action", "answer") == "route":
            inner = getattr(s.env, "inner", s.env)
            m = self.cheap if inner.step_key() in self.cheap_ok.get(s.task.task_id, set()) else self.strong
            return route_text(m, STEP_NOTE, s.env)
        k = len(s.policy_turns)
        m = self.strong if s.task.task_id in self.escalate else self.cheap
        if k == 0 or (k == 1 and m == self.strong):
            return route_text(self.cheap if k == 0 else m, SHORT_QUERY, s.env)
        return adopt_text(m, s.env)

    def act(self, states: list[Any]) -> list[Any]:
        return text_turns(self.tokenizer, [self._text(s) for s in states])


class FormatOnlyPolicy:
    """A warm start that teaches the protocol and no routing rule: per task (seeded by its id)
    1 to `max_calls` calls to distinct models drawn uniformly, then adopt one of the called
    models drawn uniformly. What RL starts from then holds every behaviour a router can have
    (one call or several, any model, any adoption) with entropy to explore, and nothing we
    chose (`sft_mix: format`)."""

    def __init__(self, tokenizer: Any, models: Sequence[str], max_calls: int, seed: int = 0):
        self.tokenizer, self.models, self.max_calls, self.seed = tokenizer, list(models), max(1, int(max_calls)), seed

    def _plan(self, task: Task) -> tuple[list[str], str]:
        rng = random.Random(f"{self.seed}:format:{task.task_id}")
        k = rng.randint(1, min(self.max_calls, len(self.models)))
        calls = rng.sample(self.models, k)
        return calls, rng.choice(calls)

    def _text(self, s: Any) -> str:
        calls, adopt = self._plan(s.task)
        k = len(s.policy_turns)
        return route_text(calls[k], SHORT_QUERY, s.env) if k < len(calls) else adopt_text(adopt, s.env)

    def act(self, states: list[Any]) -> list[Any]:
        return text_turns(self.tokenizer, [self._text(s) for s in states])


def run_boundaries(engine: RolloutEngine, pool: Any, tasks: list[Task], tokenizer: Any, *, cheap: str | None = None, strong: str | None = None, style: str = "verbatim", batch_size: int = 64, stepwise: bool = False, max_error_rate: float = 1.0,
                   cascade: tuple[str, str, str] | None = None, per_topic: dict[str, str] | None = None, format_calls: int | None = None, seed: int = 0,
                   boundaries: bool = True) -> tuple[dict[str, BoundaryRecord], dict[str, dict[str, dict[str, Any]]]]:
    """Run always-cheap and always-strong on `tasks`; return records and their episodes.
    `stepwise` (agentic envs) also runs the boundary-guided hybrid, kept as episodes[tid]["stepwise"];
    `cascade` = (a, b, strong) also runs the agreement cascade (evaluation/baselines.py), kept
    as episodes[tid]["cascade"]; `per_topic` (task id -> model) the single-shot route to each
    task's topic model, kept as episodes[tid]["per_topic"]; `format_calls` the format-only
    trajectories (`FormatOnlyPolicy`, up to that many calls), kept as episodes[tid]["format"]. Stops (PoolFailure) when more than
    `max_error_rate` of a boundary's episodes hit pool errors. `boundaries=False` skips
    always-cheap and always-strong (no records are returned) where only the other trajectories
    are wanted."""
    if stepwise and not boundaries:
        raise ValueError("stepwise trajectories are built from the boundary runs: boundaries=False cannot have them")
    cheap = cheap or pool.cheapest().name
    strong = strong or pool.strongest().name
    episodes: dict[str, dict[str, dict[str, Any]]] = {t.task_id: {} for t in tasks}
    for role, model in (("cheap", cheap), ("strong", strong)) if boundaries else ():
        compact = style == "compact"
        policy = ScriptedPolicy.always(tokenizer, model, query="short" if compact else "question", adopt=compact)
        eps = run_sharded(engine, tasks, policy, batch_size=batch_size)
        check_pool_errors(eps, max_error_rate, f"boundary always-{model}")
        for t, ep in zip(tasks, eps):
            episodes[t.task_id][role] = ep
    if stepwise:
        hybrid = StepwiseBoundaryPolicy(tokenizer, cheap, strong, episodes)
        for t, ep in zip(tasks, run_sharded(engine, tasks, hybrid, batch_size=batch_size)):
            episodes[t.task_id]["stepwise"] = ep
    if per_topic is not None:
        policy = ScriptedPolicy(tokenizer, lambda t: per_topic[t.task_id], name="per-topic", query="short", adopt=True)
        eps = run_sharded(engine, tasks, policy, batch_size=batch_size)
        check_pool_errors(eps, max_error_rate, "per-topic routes")
        for t, ep in zip(tasks, eps):
            episodes[t.task_id]["per_topic"] = ep
    if format_calls:
        eps = run_sharded(engine, tasks, FormatOnlyPolicy(tokenizer, pool.model_names, format_calls, seed=seed), batch_size=batch_size)
        check_pool_errors(eps, max_error_rate, "format-only trajectories")
        for t, ep in zip(tasks, eps):
            episodes[t.task_id]["format"] = ep
    if cascade is not None:
        from rl_router.evaluation.baselines import AgreementCascadePolicy

        eps = run_sharded(engine, tasks, AgreementCascadePolicy(tokenizer, *cascade), batch_size=batch_size)
        check_pool_errors(eps, max_error_rate, "agreement cascade")
        for t, ep in zip(tasks, eps):
            episodes[t.task_id]["cascade"] = ep
    records = {
        tid: BoundaryRecord(tid, cheap, strong, eps["cheap"]["quality"] > 0, float(eps["cheap"]["cost"]), eps["strong"]["quality"] > 0, float(eps["strong"]["cost"]))
        for tid, eps in episodes.items()
    } if boundaries else {}
    return records, episodes


def synthesize_sft(records: dict[str, BoundaryRecord], episodes: dict[str, dict[str, dict[str, Any]]], n: int, *, seed: int = 0, neither_rate: float = 0.1, strong_only_share: float | None = None, mix: str = "efficient") -> list[dict[str, Any]]:
    """Stratified sample of `n` cost-efficient boundary trajectories (see module docstring).

    `strong_only_share` sets the share of strong_only tasks (the escalations) instead of an
    equal share per class. Why: greedy decoding escalates only where the warm-started router
    puts P(escalate | context) above 1/2, but on the cost-quality plane an escalation pays as
    soon as P(cheap wrong and strong right | context) beats the random mixture's slope (about
    0.3 on GSM8K), so a router trained on the natural mix escalates too rarely. Oversampling
    the escalations moves the greedy threshold toward that break-even.

    mix="both" instead takes both boundary trajectories of every task, in equal numbers: a
    warm start that teaches the protocol but no routing preference (maximal exploration of
    the routing decision for the RL stage; used to compare RL objectives from one start).
    mix="agreement" (three or more models) takes each task's agreement-cascade trajectory
    (call two cheap models, adopt the answer they agree on, else call the best model): the
    boundary-guided cascade generalised to N models, between the cheapest boundary and the
    strongest.
    """
    if mix == "both":
        rng = random.Random(seed)
        both = [episodes[tid][role] for tid in records for role in ("cheap", "strong")]
        rng.shuffle(both)
        return [both[i % len(both)] for i in range(n)]
    if mix in ONE_PER_TASK:
        return _one_per_task(episodes, ONE_PER_TASK[mix], n, seed, mix)
    if mix not in ("efficient", "stepwise"):
        raise ValueError(f"algorithm.sft_mix: unknown {mix!r}; use efficient, stepwise, both, agreement, per_topic or format")
    pick = {"both": "cheap", "cheap_only": "cheap", "strong_only": "strong", "neither": "cheap"}
    strata: dict[str, list[dict[str, Any]]] = {k: [] for k in CLASSES}
    for tid, r in records.items():
        ep = episodes[tid][pick[r.klass]]
        hybrid = episodes[tid].get("stepwise")
        if mix == "stepwise" and r.klass == "strong_only" and hybrid is not None and (hybrid.get("quality") or 0) > 0:
            ep = hybrid
        strata[r.klass].append(ep)
    rng = random.Random(seed)
    n_neither = int(round(n * neither_rate)) if strata["neither"] else 0
    main = [k for k in ("both", "strong_only", "cheap_only") if strata[k]]
    out: list[dict[str, Any]] = [rng.choice(strata["neither"]) for _ in range(n_neither)]
    if strong_only_share is not None and not 0.0 <= strong_only_share <= 1.0 - neither_rate:
        raise ValueError(f"algorithm.strong_only_share must be in [0, 1 - neither_rate], got {strong_only_share}")
    counts = {k: (n - n_neither) // max(1, len(main)) for k in main}
    if strong_only_share is not None and "strong_only" in counts:
        counts["strong_only"] = int(round(n * strong_only_share))
        rest = [k for k in main if k != "strong_only"]
        for k in rest:
            counts[k] = (n - n_neither - counts["strong_only"]) // max(1, len(rest))
    for k in main:
        pool = strata[k][:]
        rng.shuffle(pool)
        out += [pool[i % len(pool)] for i in range(counts[k])]
    rng.shuffle(out)
    return out


#: the mixes that take one trajectory per task: sft_mix -> (the episodes' key, which run_boundaries argument makes them)
#   per_topic: every task routed once to its topic's model (the most accurate on the train tasks
#     of that topic, at the recipe's trade-off): what the subject line tells a router;
#   format: the protocol with no routing rule, random calls and adoptions (FormatOnlyPolicy);
#   agreement: the agreement-cascade trajectory (two cheap models, then the best one where they
#     disagree), escalations kept at their natural share: the rule is a function of what the
#     router sees, so imitating it is learnable and transfers to unseen tasks
ONE_PER_TASK = {"per_topic": ("per_topic", "per_topic"), "format": ("format", "format_calls"), "agreement": ("cascade", "cascade")}


def _one_per_task(episodes: dict[str, dict[str, dict[str, Any]]], key_arg: tuple[str, str], n: int, seed: int, mix: str) -> list[dict[str, Any]]:
    """`n` rows cycling over every task's well-formed `key` trajectory, in a seeded order."""
    key, arg = key_arg
    rows = [eps[key] for eps in episodes.values() if key in eps and not eps[key].get("format_error")]
    if not rows:
        raise ValueError(f"algorithm.sft_mix: {mix} needs the {key} episodes (run_boundaries({arg}=...))")
    random.Random(seed).shuffle(rows)
    return [rows[i % len(rows)] for i in range(n)]


def sft_rows(episodes: Sequence[dict[str, Any]], eos_id: int | None = None) -> list[dict[str, Any]]:
    """Pre-tokenized SFT rows: loss on the router's own tokens only (prompt and inserted tokens
    -100). With `eos_id`, an EOS the engine appended to close one of the router's turns (right
    after a policy token: the end of the episode, or of every tool-call turn) is labelled too:
    RL leaves it out of the loss (no sampler produced it), but a warm start imitates whole
    turns as the chat template ends them, and a tool-calling loop needs the model to end them."""
    rows = []
    for ep in episodes:
        ids = list(ep["prompt_ids"]) + list(ep["completion_ids"])
        comp, mask = list(ep["completion_ids"]), list(ep["env_mask"])
        if eos_id is not None:
            for i in range(1, len(comp)):
                if comp[i] == eos_id and mask[i] == 0 and mask[i - 1] == 1:
                    mask[i] = 1
        labels = [-100] * len(ep["prompt_ids"]) + [t if m == 1 else -100 for t, m in zip(comp, mask)]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


class BoPOReward:
    """Boundary-relative reward (formula in the module docstring). Reads `task_id`,
    `quality` (or `answer` + `gold`), `cost` and `policy_turns` from the rollout kwargs."""

    __name__ = "bopo_reward"

    def __init__(self, records: dict[str, BoundaryRecord], lam: float = 0.5, mu: float = 0.25, eps: float = 1e-9):
        if not 0 <= lam < 1:
            raise ValueError(f"algorithm.bopo_lam must be in [0, 1) so every success outranks every failure, got {lam}")
        if not 0 <= mu < 0.5:
            raise ValueError(f"algorithm.bopo_mu must be in [0, 0.5) so a format failure stays the worst outcome, got {mu}")
        self.records, self.lam, self.mu, self.eps = records, lam, mu, eps

    def rel_cost(self, task_id: str, cost: float) -> float:
        r = self.records[task_id]
        span = max(r.strong_cost - r.cheap_cost, self.eps)
        return min(2.0, max(0.0, (cost - r.cheap_cost) / span))

    def score(self, task_id: str, success: bool, cost: float, format_ok: bool = True) -> float:
        if not format_ok:
            return -1.0
        c = self.rel_cost(task_id, cost)
        return 1.0 + self.lam * (1.0 - c) if success else -self.mu * c

    def ref_reward(self, task_id: str) -> float:
        r = self.records[task_id]
        return max(self.score(task_id, r.cheap_success, r.cheap_cost), self.score(task_id, r.strong_success, r.strong_cost))

    def __call__(self, prompts: Sequence[Any] = (), completions: Sequence[Any] = (), completion_ids: Any = None, **kwargs: Any) -> list[float]:
        tids, costs, quality = kwargs["task_id"], kwargs["cost"], kwargs["quality"]
        turns = kwargs.get("policy_turns") or [None] * len(tids)
        given = kwargs.get("format_error")  # the environment's verdict, when the rollout gives it
        ok = [why is None for why in given] if given is not None else [pt is None or check_format(pt) is None for pt in turns]
        return [self.score(t, (q or 0) > 0, float(c or 0.0), format_ok=f) for t, c, q, f in zip(tids, costs, quality, ok)]


def boundary_reward_refs(reward: BoPOReward, task_ids: Sequence[str]) -> tuple[list[float], list[bool]]:
    return [reward.ref_reward(t) for t in task_ids], [reward.records[t].solvable for t in task_ids]


def boundaries_for_recipe(recipe_path: str, sets: list[str], *, n: int | None = None) -> tuple[dict[str, BoundaryRecord], dict[str, dict[str, dict[str, Any]]], tuple[str, str], int]:
    """`rl-router boundaries`: both boundary policies on the recipe's (first n) train tasks."""
    from rl_router.models import tokenizer_from_recipe
    from rl_router.pools.factory import max_error_rate
    from rl_router.recipe import load_recipe, validate_against_pool
    from rl_router.rollout.engine import make_engine
    from rl_router.task_sources import recipe_pool, recipe_tasks

    r = load_recipe(recipe_path, sets)
    pool = recipe_pool(r)
    tasks = recipe_tasks(r, pool)[0]
    tasks = tasks[:n] if n else tasks
    cheap, strong = validate_against_pool(r, pool, tasks)
    tok = tokenizer_from_recipe(r)
    records, eps = run_boundaries(make_engine(r, pool, tok), pool, tasks, tok, cheap=cheap, strong=strong, style=r.algorithm.sft_style, max_error_rate=max_error_rate(r.pool))
    return records, eps, (cheap, strong), len(tasks)
