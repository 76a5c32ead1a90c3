"""Recorded step-level routing data: label it from an agentic env, replay a router on it offline.

Step-level routing benchmarks (BoPO's static evaluation among them) are sets of routing
decisions: the router-visible prefix of an agent episode at one step, which tier that step
needed, and what each tier would have cost. This module fixes that as a JSONL format, one
decision per line:

    {"task_id": "...", "world": "arithmetic", "step": 1, "attempt": 0,
     "messages": [{"role": "system", ...}, {"role": "user", ...}],   # the episode's opening chat
     "completion": "<think>...</think><route ...>...</route>\n<information>...</information>\n",
     "tiers": {"cheap": {"cost": 2.4e-05, "correct": false}, "expensive": {"cost": 7e-04, "correct": true}},
     "target": "expensive",                                            # cheapest tier that was right
     "source": "label_steps"}

`messages` + `completion` is exactly what a router sees before deciding (the chat template
applied to `messages` with the generation prompt, then `completion`'s tokens), so a replay
asks the router the same question the live env would.

`label_steps` builds such data from any agentic env and pool: at every step it probes every
tier on a copy of the state (nothing committed), labels the cheapest tier that got the step
right, and follows that tier to the next step. `replay` scores a policy on the records
without running the env: tier accuracy, step success (the chosen tier was right there),
cost, under- and over-routing, with always-<tier> and the labels as reference rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from rl_router.aio import gather_sync
from rl_router.prompts import STEP_NOTE
from rl_router.rollout.policies import route_text
from rl_router.protocol import parse_turn
from rl_router.tasks import Task

REQUIRED = ("task_id", "step", "messages", "completion", "tiers", "target")


@dataclass
class StepRecord:
    task_id: str
    step: int
    messages: list[dict[str, str]]
    completion: str
    tiers: dict[str, dict[str, Any]]  # tier -> {"cost": USD, "correct": bool | None}
    target: str
    attempt: int = 0
    world: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def write_steps(path: str | Path, records: Iterable[StepRecord]) -> int:
    """Write the records as JSONL, atomically (a kill never leaves half a file)."""
    from rl_router.owned import atomic_write

    lines = [json.dumps(asdict(r)) + "\n" for r in records]
    atomic_write(path, "".join(lines))
    return len(lines)


def read_steps(path: str | Path) -> list[StepRecord]:
    """Read a step-level JSONL file; a malformed line is a ConfigError naming its line number and
    the field (each line parsed by rl_router.parsing, then rl_router.schemas.StepRow)."""
    from rl_router.parsing import parse_json, read_text
    from rl_router.schemas import StepRow, parse

    fix = f"each line is a JSON object with {list(REQUIRED)} (see rl-router steps-label)"
    out = []
    for i, line in enumerate(read_text(path, "steps", fix=fix).splitlines(), 1):
        if not line.strip():
            continue
        row = parse(StepRow, parse_json(line, f"{path}:{i}", fix=fix), f"{path}:{i}", fix, sep=": ")
        out.append(StepRecord(**row.model_dump()))
    if not out:
        from rl_router.errors import ConfigError

        raise ConfigError("steps", f"{path} holds no step records", fix)
    return out


def label_steps(env_factory: Callable[[], Any], tasks: list[Task], *, source: str = "label_steps") -> list[StepRecord]:
    """Probe every tier at every step of every task, label the cheapest correct tier, follow it.

    Tiers are tried in price order (the env's pool cards); a step no tier gets right is
    labelled with the most expensive tier. Episodes run concurrently (one env each)."""

    async def one(task: Task) -> list[StepRecord]:
        env = env_factory()
        env.reset(task)
        tiers = sorted(env.pool.models, key=lambda c: (c.price_in + c.price_out, c.name))
        recs: list[StepRecord] = []
        completion = ""
        while env.info["done_reason"] is None:
            step, attempt = env.step_key()
            probes = {c.name: await env.probe(c.name) for c in tiers}
            ok = [c.name for c in tiers if probes[c.name]["correct"]]
            target = ok[0] if ok else tiers[-1].name
            recs.append(StepRecord(task.task_id, step, [dict(m) for m in env.messages], completion,
                                   {k: {"cost": v["cost"], "correct": v["correct"]} for k, v in probes.items()}, target, attempt, env.info.get("world", ""), source))
            action = route_text(target, STEP_NOTE)
            obs, *_ = await env.astep(action)
            completion += action + obs
        return recs

    return [r for recs in gather_sync([one(t) for t in tasks]) for r in recs]


def _replay_state(ids: list[int]) -> Any:
    """A recorded decision's context as the episode state policies act on (no task, no env: the
    policy only reads the context ids). A real EpisodeState, so every field a policy reads is
    there (a hand-made stand-in once lacked `biases`, and replay crashed)."""
    from rl_router.rollout.state import EpisodeState

    return EpisodeState(task=None, env=None, prompt_ids=ids)


def _score(chosen: list[str | None], records: list[StepRecord]) -> dict[str, Any]:
    n = max(1, len(records))
    order = {name: i for i, name in enumerate(sorted(records[0].tiers, key=lambda k: records[0].tiers[k]["cost"]))} if records else {}
    valid = [(c, r) for c, r in zip(chosen, records) if c in r.tiers]
    under = sum(1 for c, r in valid if order.get(c, 0) < order.get(r.target, 0) and not r.tiers[c]["correct"])
    over = sum(1 for c, r in valid if order.get(c, 0) > order.get(r.target, 0))
    return {
        "decisions": len(records),
        "tier_accuracy": sum(1 for c, r in valid if c == r.target) / n,
        "step_success": sum(1 for c, r in valid if r.tiers[c]["correct"]) / n,
        "mean_cost": sum(r.tiers[c]["cost"] for c, r in valid) / n,
        "invalid_rate": 1 - len(valid) / n,
        "under_routing_rate": under / n,
        "over_routing_rate": over / n,
        "choice_share": {t: sum(1 for c, _ in valid if c == t) / n for t in order},
    }


def replay(records: list[StepRecord], policy: Any, tokenizer: Any, *, batch_size: int = 32) -> dict[str, Any]:
    """Score `policy` (e.g. an HFPolicy) on recorded decisions, next to always-<tier> and the labels."""
    from rl_router.prompts import encode_chat

    chosen: list[str | None] = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        states = [_replay_state(encode_chat(tokenizer, r.messages) + (tokenizer.encode(r.completion, add_special_tokens=False) if r.completion else [])) for r in chunk]
        for turn in policy.act(states):
            a = parse_turn(turn.text)
            chosen.append(a.model if a.kind == "route" else None)
    out = {"policy": _score(chosen, records), "labels": _score([r.target for r in records], records)}
    for t in (sorted(records[0].tiers) if records else []):
        out[f"always-{t}"] = _score([t] * len(records), records)
    return out


def label_recipe(recipe_path: str, sets: list[str], *, split: str = "heldout", n: int | None = None) -> tuple[list[StepRecord], int]:
    """`rl-router steps-label`: label the recipe's (first n) tasks of one split."""
    from rl_router.envs import make_env
    from rl_router.errors import ConfigError
    from rl_router.models import tokenizer_from_recipe
    from rl_router.recipe import load_recipe
    from rl_router.task_sources import recipe_pool, recipe_tasks

    r = load_recipe(recipe_path, sets)
    if r.env.get("name") != "agentic":
        raise ConfigError("env.name", "step-level labels need the agentic env", "use a recipe with env.name: agentic")
    if split not in ("heldout", "train"):
        raise ConfigError("--split", f"unknown {split!r}", "use heldout or train")
    pool = recipe_pool(r)
    train_t, held = recipe_tasks(r, pool)
    tasks = (held if split == "heldout" else train_t)[: n or None]
    tok, cfg = tokenizer_from_recipe(r), r.env_config()
    return label_steps(lambda: make_env("agentic", pool, config=cfg, tokenizer=tok), tasks), len(tasks)


def replay_target(steps_path: str, target: str) -> tuple[list[StepRecord], dict[str, Any]]:
    """`rl-router steps-replay`: a router (folder or training run) on recorded decisions."""
    from rl_router.errors import ConfigError
    from rl_router.models import load_checkpoint, resolve_checkpoint
    from rl_router.rollout.policies import HFPolicy

    if resolve_checkpoint(target) is None:
        raise ConfigError("target", f"{target!r} is not a model folder or a training output dir")
    try:
        recs = read_steps(steps_path)
    except (OSError, ValueError) as e:  # ConfigError (a ValueError) from the bounded reader keeps its own field
        raise e if isinstance(e, ConfigError) else ConfigError("steps", str(e)) from None
    model, tok = load_checkpoint(target)
    return recs, replay(recs, HFPolicy(model, tok, max_new_tokens=48, temperature=0.0), tok)
