"""The rollout engine: batches of multi-turn episodes in lock-step turns.

Each turn: one batched policy call for every active episode (so every rank makes the same
number of generate calls, which ZeRO-3 needs), then all environment steps of the turn run
concurrently on the shared event loop (so 64 episodes x 3 routes at 200 ms take about
3 x 200 ms of pool time, not 64 x 3 x 200 ms).

Token layout per episode, exactly what TRL 1.16's `GRPOTrainer(rollout_func=...)` takes:
`prompt_ids` (chat template + generation prompt), `completion_ids` = policy tokens and
environment-inserted `<information>` tokens interleaved, ending in EOS when the router
answered, `env_mask` (1 = policy token, 0 = inserted, and 0 on an EOS the engine appended
after `</answer>`, which no sampler produced; TRL zeroes the loss on 0s) and
`decision_tokens` ((position, token set) where a name decision renormalised the router's
distribution: the loss renormalises there too, `training/logprobs.py`),
`logprobs` (sampling log-probs of sampled policy tokens; NaN, TRL 1.16's "no sampler
log-prob", on inserted tokens, on scripted turns and on the EOS the engine appends after
`</answer>`, which no sampler produced: TRL's importance-sampling correction then leaves
those tokens at ratio 1 instead of scaling the episode by an invented probability). Extra
keys become reward kwargs in TRL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from rl_router.aio import gather_sync
from rl_router.envs.base import EPISODE_FIELDS, TextEnv
from rl_router.rollout.state import EpisodeState, Policy
from rl_router.prompts import encode_chat
from rl_router.tasks import Task

#: the log-prob of a token no sampler produced (TRL 1.16 neutralises NaN in its IS ratio)
NO_LOGPROB = float("nan")


@dataclass
class RolloutStats:
    turns: int = 0
    generate_s: float = 0.0
    env_s: float = 0.0
    episodes: int = 0


class RolloutEngine:
    def __init__(self, env_factory: Callable[[], TextEnv], tokenizer: Any, *, max_completion_tokens: int = 2048, max_turns: int | None = None):
        self.env_factory = env_factory
        self.tokenizer = tokenizer
        self.max_completion_tokens = max_completion_tokens
        self.max_turns = max_turns  # safety stop; the env's own max_turns normally ends episodes first
        self.stats = RolloutStats()
        self._prompt_cache: dict[tuple[Any, ...], list[int]] = {}

    def _start(self, task: Task, seed: int | None) -> EpisodeState:
        env = self.env_factory()
        obs, info = env.reset(task, seed=seed)
        if hasattr(env, "prompt_ids"):
            ids = env.prompt_ids(self.tokenizer)
        else:  # the same opening messages always tokenize alike: encode once per engine
            key = tuple((m.get("role"), m.get("content")) for m in env.messages)
            ids = self._prompt_cache.get(key)
            if ids is None:
                ids = self._prompt_cache.setdefault(key, encode_chat(self.tokenizer, env.messages))
                if len(self._prompt_cache) > 50_000:
                    self._prompt_cache.clear()
        return EpisodeState(task=task, env=env, prompt_ids=list(ids), last_obs=obs, info=info)

    def run(self, tasks: list[Task], policy: Policy, *, seed: int | None = None, keep_going: Callable[[bool], bool] | None = None, targets: list[str | None] | None = None) -> list[dict[str, Any]]:
        """Run one episode per task (repeat tasks for groups) and return episode dicts.
        `targets[i]`: the name episode i's first route decision takes (`enumerate_targets`).

        `keep_going(local_active) -> any_rank_active`: under multi-process training every rank
        must make the same number of generate calls (ZeRO-3 gathers parameters inside each
        forward), so a rank whose episodes are all done keeps calling `policy.act([])` (a
        dummy generate) until no rank has an active episode."""
        states = [self._start(t, seed) for t in tasks]
        for s, target in zip(states, targets or ()):
            s.route_target = target
        eos = self.tokenizer.eos_token_id
        n_turns = 0
        while True:
            active = [s for s in states if not s.done]
            if keep_going is not None:
                if not keep_going(bool(active)):
                    break
                if not active:
                    policy.act([])  # stay in step with the ranks that still generate
                    continue
            elif not active:
                break
            n_turns += 1
            t0 = time.perf_counter()
            turns = policy.act(active)
            forks = [f for turn in turns for f in getattr(turn, "forks", ())]
            if forks:  # episodes split off at a decision (several cost-knob biases): run on from here
                states += [fs for fs, _ in forks]
                active = active + [fs for fs, _ in forks]
                turns = list(turns) + [ft for _, ft in forks]
            t1 = time.perf_counter()
            self.stats.generate_s += t1 - t0
            for s, turn in zip(active, turns):
                if getattr(turn, "allowed", None):
                    at = len(s.completion_ids)
                    s.decision_tokens += [(at + i, a) for i, a in enumerate(turn.allowed) if a is not None]
                s.completion_ids += turn.ids
                s.env_mask += [1] * len(turn.ids)
                s.logprobs += list(turn.logprobs) if turn.logprobs else [NO_LOGPROB] * len(turn.ids)
                s.policy_turns.append(turn.text)
                s.decisions.append(list(getattr(turn, "decisions", ())))
            results = gather_sync([s.env.astep(turn.text) for s, turn in zip(active, turns)])
            self.stats.env_s += time.perf_counter() - t1
            for s, turn, (obs, _r, terminated, truncated, info) in zip(active, turns, results):
                s.info = info
                per_turn_eos = getattr(s.env, "turn_ends_on_eos", False)  # tool calls: every turn ends with the end-of-turn token
                if not turn.eos and (terminated or per_turn_eos):  # close the turn with EOS, as the chat template would
                    # kept for TRL's truncation check (a completion that ends in EOS is complete), but
                    # masked out of the loss: no sampler produced it, so it must not be reinforced
                    s.completion_ids.append(eos)
                    s.env_mask.append(0)
                    s.logprobs.append(NO_LOGPROB)
                if terminated:
                    s.done, s.terminated, s.done_reason = True, True, info.get("done_reason") or "answer"
                    continue
                if turn.eos and not per_turn_eos:  # the router stopped talking without answering
                    s.done, s.truncated, s.done_reason = True, True, "eos_without_answer"
                    continue
                obs_ids = self.tokenizer.encode(obs, add_special_tokens=False) if obs else []
                s.completion_ids += obs_ids
                s.env_mask += [0] * len(obs_ids)
                s.logprobs += [NO_LOGPROB] * len(obs_ids)
                s.observations.append(obs)
                s.last_obs = obs
                if truncated:
                    s.done, s.truncated, s.done_reason = True, True, info.get("done_reason") or "truncated"
                elif len(s.completion_ids) >= self.max_completion_tokens or (self.max_turns and n_turns >= self.max_turns):
                    s.done, s.truncated, s.done_reason = True, True, "max_completion_tokens"
            self.stats.turns += 1
        self.stats.episodes += len(states)
        return [self._episode(s) for s in states]

    def run_batched(self, tasks: list[Task], policy: Policy, *, batch_size: int = 32, on_batch: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """`run` over `tasks` in lock-step batches of `batch_size` (bounds memory of one
        batched generate); `on_batch(n)` after each, for progress bars."""
        episodes: list[dict[str, Any]] = []
        for i in range(0, len(tasks), batch_size):
            chunk = tasks[i : i + batch_size]
            episodes += self.run(chunk, policy)
            if on_batch:
                on_batch(len(chunk))
        return episodes

    def _episode(self, s: EpisodeState) -> dict[str, Any]:
        n = self.max_completion_tokens
        ep: dict[str, Any] = {
            "prompt_ids": s.prompt_ids,
            "completion_ids": s.completion_ids[:n],
            "env_mask": s.env_mask[:n],
            "logprobs": s.logprobs[:n],
            "policy_turns": s.policy_turns,
            "observations": s.observations,
            "terminated": s.terminated,
            "truncated": s.truncated,
            "trace": s.info.get("trace", []),
            "budget": s.info.get("budget"),
            "decisions": s.decisions,  # per turn, the route decisions made by name (rollout/names.py)
            "decision_tokens": [(p, a) for p, a in s.decision_tokens if p < n],  # (position, allowed set): the loss renormalises there (training/logprobs.py)
            "biases": list(s.biases) if s.biases is not None else None,
        }
        for k in EPISODE_FIELDS:
            ep[k] = s.info.get(k)
        # the one format verdict: the tag grammar of the turns, or an action the env refused
        ep["format_error"] = s.env.format_error()
        if "steps" in s.info:
            ep["steps"] = s.info["steps"]
        if s.done_reason:
            ep["done_reason"] = s.done_reason
        return ep


def lockstep(state: Any) -> Callable[[bool], bool] | None:
    """`keep_going` for `RolloutEngine.run` under several processes (an accelerate
    `Accelerator` or `PartialState`): a rank with no active episode keeps stepping while any
    rank has one. None with one process (nothing to wait for)."""
    if state is None or state.num_processes < 2:
        return None
    import torch
    from accelerate.utils import gather

    def keep_going(local_active: bool) -> bool:
        flag = torch.tensor([1 if local_active else 0], device=state.device)
        return bool(gather(flag).sum().item() > 0)

    return keep_going


def by_length(tasks: list[Task]) -> list[int]:
    """Task indices shortest question first (stable): batches of tasks in this order pad little.
    A lock-step batch runs every row at its longest row's width, in the prefill (each row's
    context after the shared system prompt) and in every later attention; on LLMRouter's
    dcrouter queries, whose task part ranges from about 0 to 600 tokens, a batch of 64 in task
    order prefilled about 9x the tokens it held."""
    return sorted(range(len(tasks)), key=lambda i: len(tasks[i].question))


def in_task_order(items: list[Any], order: list[int]) -> list[Any]:
    """`items` (one per task, in `order`) back in task order."""
    out: list[Any] = [None] * len(items)
    for j, i in enumerate(order):
        out[i] = items[j]
    return out


def run_sharded(engine: RolloutEngine, tasks: list[Task], policy: Any, *, batch_size: int = 32, on_batch: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """`engine.run_batched` over the tasks in `by_length` order (episodes returned in task
    order), but with N processes each rank runs every N-th task of each batch of
    N x batch_size, ranks in lock-step per turn (ZeRO-3 generates collectively), and the
    episodes are gathered back on every rank."""
    order = by_length(tasks)
    return in_task_order(_run_sharded(engine, [tasks[i] for i in order], policy, batch_size=batch_size, on_batch=on_batch), order)


def _run_sharded(engine: RolloutEngine, tasks: list[Task], policy: Any, *, batch_size: int, on_batch: Callable[[int], None] | None) -> list[dict[str, Any]]:
    from rl_router.distributed import process_state

    state = process_state()
    n = state.num_processes
    if n == 1:
        return engine.run_batched(tasks, policy, batch_size=batch_size, on_batch=on_batch)
    from accelerate.utils import gather_object

    out: list[dict[str, Any]] = []
    step = batch_size * n
    for i in range(0, len(tasks), step):
        chunk = tasks[i : i + step]
        mine = chunk[state.process_index :: n]
        local = engine.run(mine, policy, keep_going=lockstep(state))
        parts = gather_object([local])  # one list per rank, in rank order
        merged: list[Any] = [None] * len(chunk)
        for r, part in enumerate(parts):
            merged[r::n] = part
        out += merged
        if on_batch:
            on_batch(len(chunk))
    return out


def run_biases(engine: RolloutEngine, tasks: list[Task], policy: Any, biases: list[float], *, batch_size: int = 32, on_batch: Callable[[int], None] | None = None) -> dict[float, list[dict[str, Any]]]:
    """Every bias's episodes from one pass: `policy` decides by name with all `biases` at once
    and forks an episode where they disagree (`HFPolicy(biases=...)`). Returns bias -> one
    episode per task, in task order; batched by length and sharded across ranks like
    `run_sharded`."""
    from rl_router.distributed import process_state

    order = by_length(tasks)
    tasks = [tasks[i] for i in order]
    state = process_state()
    n = state.num_processes
    out: dict[float, list[dict[str, Any]]] = {b: [] for b in biases}
    step = batch_size * n
    for i in range(0, len(tasks), step):
        chunk = tasks[i : i + step]
        mine = list(range(len(chunk)))[state.process_index :: n]
        local = engine.run([chunk[j] for j in mine], policy, keep_going=lockstep(state))
        by_task: dict[str, list[dict[str, Any]]] = {}
        for ep in local:
            by_task.setdefault(ep["task_id"], []).append(ep)
        part = [(j, by_task.get(chunk[j].task_id, [])) for j in mine]
        if n > 1:
            from accelerate.utils import gather_object

            part = [x for rank in gather_object([part]) for x in rank]
        eps_of = dict(part)
        for j in range(len(chunk)):
            for b in biases:
                out[b].append(next(e for e in eps_of[j] if b in (e.get("biases") or [])))
        if on_batch:
            on_batch(len(chunk))
    return {b: in_task_order(eps, order) for b, eps in out.items()}


def episodes_to_batch(episodes: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Columns from episode dicts: the dict-of-lists shape a TRL rollout_func returns."""
    keys = episodes[0].keys() if episodes else []
    return {k: [e[k] for e in episodes] for k in keys}


def enumerate_targets(n: int, names: list[str], group: int, offset: int = 0) -> list[str]:
    """All-names groups (`algorithm.advantage: all_names`): the episode at global position j
    (TRL's order: groups of `group` contiguous copies of a task, each process a contiguous
    slice starting at `offset`) takes names[(j mod group) mod len(names)] at its first route
    decision, so a group of a multiple of the pool's size calls every model equally often,
    also when it spans processes."""
    return [names[((offset + i) % group) % len(names)] for i in range(n)]


def make_rollout_func(engine: RolloutEngine, tasks: list[Task], policy_factory: Callable[[Any], Policy], *, enumerate_names: list[str] | None = None,
                      scripted: Policy | None = None, anchor_episode: bool = False) -> Callable[[list[Any], Any], dict[str, list[Any]]]:
    """A TRL 1.16 `rollout_func(prompts, trainer)`.

    TRL hands the per-process prompts already repeated `num_generations` times (contiguous
    groups) and expects one episode per entry. Prompts are task questions (a dataset's
    `prompt` column); they are mapped back to tasks here. `policy_factory(trainer)` builds
    the policy that generates with the trainer's current weights. `enumerate_names`: each
    group's first route decisions take these names in turn (`enumerate_targets`) instead of
    drawing them; everything else is sampled. `scripted` (with `enumerate_names`): training
    episodes are that policy's (a `decision_episodes.TargetPolicy`), cut after their route name
    (`decision_episodes.cut_at_decision`); evaluation still samples the router. `anchor_episode`
    (with `scripted`): each group's first episode keeps the whole episode after the name (the
    pool's reply masked), what the protocol anchor holds (training/anchor.py).
    """
    by_question = {t.question: t for t in tasks}

    def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        chosen = []
        for p in prompts:
            q = p if isinstance(p, str) else p[-1]["content"]
            if q not in by_question:
                raise KeyError(f"rollout_func: prompt not found among the recipe's tasks: {q[:80]!r}")
            chosen.append(by_question[q])
        acc = getattr(trainer, "accelerator", None)
        mode = "train" if getattr(getattr(trainer, "model", None), "training", True) else "eval"
        targets = None
        if enumerate_names and mode == "train":  # evaluation samples names as the router would
            offset = (acc.process_index if acc is not None else 0) * len(chosen)
            targets = enumerate_targets(len(chosen), enumerate_names, int(trainer.num_generations), offset)
        if targets is not None and scripted is not None:  # no generation: the script needs no rank to keep in step
            from rl_router.rollout.decision_episodes import cut_at_decision

            group = int(trainer.num_generations)
            episodes = [cut_at_decision(ep, engine.tokenizer, list(enumerate_names or ()), t, whole_episode=anchor_episode and (offset + i) % group == 0)
                        for i, (ep, t) in enumerate(zip(engine.run(chosen, scripted, targets=targets), targets))]
        else:
            episodes = engine.run(chosen, policy_factory(trainer), keep_going=lockstep(acc) if acc is not None else None, targets=targets)
        batch = episodes_to_batch(episodes)
        batch["split"] = [mode] * len(episodes)
        return batch

    return rollout_func


def stop_strings(recipe: Any) -> tuple[str, ...]:
    """Where a router turn ends under the recipe's protocol: after its action tag, or after its
    tool call (the end-of-turn token ends both)."""
    from rl_router.protocol import STOP_STRINGS

    return ("</tool_call>",) if recipe.rollout.protocol == "tools" else STOP_STRINGS


def make_engine(recipe: Any, pool: Any, tokenizer: Any, *, budget: float | None = None, max_turns: int | None = None) -> RolloutEngine:
    """The recipe's environment over `pool` in a rollout engine (optionally at another budget,
    or with at least `max_turns` turns: baselines that need more calls than the router has)."""
    import dataclasses

    from rl_router.envs import make_env

    cfg = recipe.env_config()
    if budget is not None:
        cfg = dataclasses.replace(cfg, budget=budget)
    if max_turns is not None and hasattr(cfg, "max_turns") and cfg.max_turns < max_turns:
        cfg = dataclasses.replace(cfg, max_turns=max_turns)
    name = recipe.env.get("name", "router_r1")

    def env_factory() -> Any:
        env = make_env(name, pool, config=cfg, tokenizer=tokenizer)
        if recipe.rollout.protocol == "tools":  # the same env, acted on through tool calls
            from rl_router.envs.tools import ToolCallEnv

            return ToolCallEnv(env, tokenizer)
        return env

    return RolloutEngine(env_factory, tokenizer, max_completion_tokens=recipe.rollout.max_completion_tokens)
