"""Where a recipe's tasks and pool come from: the recorded pool's own tasks, synthetic tasks
for simulated pools, Hugging Face datasets, agent worlds, or a JSONL file; the seeded,
machine-independent train / held-out split; and balanced caps across datasets.

Kept apart from `recipe.py`, which is configuration only: a recipe is data validated once at
load; this module does the loading (files, the Hub, the pool).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl_router.errors import ConfigError, check_keys
from rl_router.recipe import HF_SPEC_KEYS, WORLD_KEYS, WORLD_SOURCES, Recipe
from rl_router.tasks import Task, split_tasks, split_validation, stable_hash


def recipe_pool(recipe: Recipe) -> Any:
    """The pool, with model cards measured on this recipe's train split only (the router
    reads the cards; a statistic of its held-out tasks must not be among them)."""
    from rl_router.pools import build_pool

    pool = build_pool(recipe.pool)
    if hasattr(pool, "fit_cards") and recipe.data.source == "pool":
        d = recipe.data
        tasks = [t for ds in d.datasets for t in pool.tasks(ds)]
        train, _ = heldout_split(recipe, pool, tasks)
        pool.fit_cards(t.task_id for t in train)
    return pool


def heldout_split(recipe: Recipe, pool: Any, tasks: list[Task]) -> tuple[list[Task], list[Task]]:
    """(train, held-out) by `data.heldout_by`: a seeded hash of task ids or topics, or (`files`)
    the tasks of the recorded pool's `pool.files` / `pool.hf_dataset` as the held-out set, so a
    held-out file is evaluated with no code (`--set pool.files=[F]`); a packaged task that the
    file repeats is the file's, so never trained on. With no such files, `files` splits by task."""
    d = recipe.data
    held_ids = getattr(pool, "file_task_ids", set()) if d.heldout_by == "files" else set()
    if held_ids:  # a train task whose question a held-out task shares (another option set) is not trained on either
        held = [t for t in tasks if t.task_id in held_ids]
        groups = {t.group for t in held}
        return [t for t in tasks if t.task_id not in held_ids and t.group not in groups], held
    return split_tasks(tasks, d.heldout_fraction, d.seed, by="task" if d.heldout_by == "files" else d.heldout_by)


def recipe_tasks(recipe: Recipe, pool: Any) -> tuple[list[Task], list[Task]]:
    """(train, held-out) tasks for this recipe (the validation share excluded from train)."""
    train, _val, held = recipe_splits(recipe, pool)
    return train, held


def check_validation_tasks(recipe: Recipe, val: list[Task]) -> list[Task]:
    """The tasks `rl-router calibrate` tunes on (`recipe_splits`' validation share: set aside
    from the train split before training), or a clear error when the recipe sets none."""
    if not val:
        raise ConfigError("data.validation_fraction", f"the recipe sets no validation tasks (validation_fraction={recipe.data.validation_fraction})",
                          "train with data.validation_fraction: 0.1 (a share of the train split kept out of training), or calibrate with --split heldout or train and say so")
    return val


def recipe_splits(recipe: Recipe, pool: Any) -> tuple[list[Task], list[Task], list[Task]]:
    """(train, validation, held-out) tasks for this recipe."""
    d = recipe.data
    if d.source == "pool":
        if not hasattr(pool, "tasks"):
            raise ConfigError("data.source", f"a {recipe.pool.get('type')} pool holds no tasks", "use source: synthetic or a JSONL path")
        tasks = [t for ds in d.datasets for t in pool.tasks(ds)]
        if not tasks:
            raise ConfigError("data.datasets", f"no tasks for {d.datasets} in the pool")
    elif d.source == "synthetic":
        tasks = synthetic_tasks(d.synthetic_n, d.synthetic_topics, d.seed, d.synthetic_template)
    elif d.source == "hf":
        tasks = load_hf_tasks(d.hf)
    elif d.source in WORLD_SOURCES:
        tasks = world_tasks(d.source, d.synthetic_n, d.seed, d.world)
    else:
        tasks = load_task_file(d.source)
    if d.source == "pool":
        train, held = heldout_split(recipe, pool, tasks)
    else:
        train, held = split_tasks(tasks, d.heldout_fraction, d.seed, by="task" if d.heldout_by == "files" else d.heldout_by)
    if not held:  # every evaluation (train's held-out reports, eval, rollout) needs at least one
        raise ConfigError("data.heldout_fraction", f"the split leaves no held-out task ({len(tasks)} task(s) in all, held out by {d.heldout_by}, fraction {d.heldout_fraction:g})",
                          "give more tasks, raise data.heldout_fraction, or hold out a file with data.heldout_by: files")
    train, val = split_validation(train, d.validation_fraction, d.seed)
    if d.source == "pool":
        train, val, held = (interleave_datasets(x, d.seed) for x in (train, val, held))
    return train[: d.max_train] if d.max_train else train, val, held[: d.max_heldout] if d.max_heldout else held


def interleave_datasets(tasks: list[Task], seed: int = 0) -> list[Task]:
    """Round-robin over datasets, each in a seeded hash order.

    Why: `max_train` / `max_heldout` cap the list from the front. In file order the cap would
    take only the first dataset, and MMLU's records are sorted by subject (the first 100 are
    all abstract algebra); the interleave makes any cap a balanced, topic-diverse draw.
    Deterministic across machines, like the split."""
    by_ds: dict[str, list[Task]] = {}
    for t in tasks:
        by_ds.setdefault(t.dataset, []).append(t)
    queues = [sorted(ts, key=lambda t: stable_hash(str(seed), "order", t.task_id)) for ts in by_ds.values()]
    out: list[Task] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def synthetic_tasks(n: int, topics: list[str], seed: int = 0, template: str = "Synthetic {topic} task #{i}") -> list[Task]:
    """Opaque-answer tasks for simulated pools: the pool decides who solves what by topic skill.
    Gold is a 6-digit code; a simulated model that gets the task wrong answers another 6-digit
    code (`pools.simulated.wrong_like`), so a reply's form never shows its verdict. `template`
    is the question text (`{topic}`, `{i}`); one without `{topic}` gives tasks a router cannot
    tell apart before it calls a model (what a task-blind router faces)."""
    return [
        Task(question=template.format(topic=topics[i % len(topics)], i=i), gold=f"{int(stable_hash(str(seed), str(i))[:8], 16) % 10**6:06d}", answer_type="code", dataset="synthetic", topic=topics[i % len(topics)])
        for i in range(n)
    ]




def world_tasks(name: str, n: int, seed: int, options: dict[str, Any]) -> list[Task]:
    """Tasks of an agent world (`envs/worlds`), for the agentic env."""
    from rl_router.envs.worlds import get_world

    check_keys(options, WORLD_KEYS, "data.world")
    return get_world(name).make_tasks(n, seed, **options)




def load_hf_tasks(specs: list[dict[str, Any]]) -> list[Task]:
    """Tasks from `datasets.load_dataset` (Hub ids, or local builders such as `json`).

    Each spec names the question and answer columns, so any QA dataset plugs in, e.g.
    `{path: RUC-NLPIR/FlashRAG_datasets, name: nq, split: train, question: question,
    answer: golden_answers}` (Router-R1's NQ); a list-valued answer column is a set of
    accepted answers (EM / F1 take the best).
    """
    if not specs:
        raise ConfigError("data.hf", "source: hf needs at least one dataset spec", "e.g. [{path: json, data_files: qa.jsonl, split: train, question: q, answer: a}]")
    from datasets import load_dataset

    tasks: list[Task] = []
    for i, spec in enumerate(specs):
        where = f"data.hf[{i}]"
        if not isinstance(spec, dict) or "path" not in spec:
            raise ConfigError(where, "each spec needs a 'path' (Hub id or builder such as json)")
        check_keys(spec, HF_SPEC_KEYS, where)
        kw = {k: spec[k] for k in ("name", "data_files") if spec.get(k) is not None}
        ds = load_dataset(spec["path"], split=spec.get("split", "train"), **kw)
        q, a = spec.get("question", "question"), spec.get("answer", "answer")
        for col in (q, a):
            if col not in ds.column_names:
                raise ConfigError(f"{where}.{'question' if col == q else 'answer'}", f"column {col!r} not in {ds.column_names}")
        label = spec.get("dataset") or spec.get("name") or str(spec["path"]).split("/")[-1]
        n = spec.get("limit")
        for j, row in enumerate(ds):
            if n is not None and j >= n:
                break
            gold = row[a]
            gold = [str(x) for x in gold] if isinstance(gold, (list, tuple)) else str(gold)
            tasks.append(Task(question=str(row[q]), gold=gold, answer_type=spec.get("answer_type", "text"), dataset=label))
    return tasks


def load_task_file(path: str) -> list[Task]:
    """Tasks from a JSONL file (`data.source: FILE`): one object per line, each parsed by
    rl_router.schemas.TaskRow; an error names the file, the line (as numbered in the file,
    blank lines counted) and the field."""
    from rl_router.parsing import parse_json, read_text
    from rl_router.schemas import TaskRow, parse

    fix = "one JSON object per line with question (text) and optionally gold, answer_type, dataset, topic, task_id"
    p = Path(path)
    if not p.exists():
        raise ConfigError("data.source", f"{path} does not exist", "use 'pool', 'synthetic' or a JSONL file with question/gold/answer_type rows")
    tasks = []
    for i, line in enumerate(read_text(p, "data.source", fix=fix).splitlines(), 1):
        if line.strip():
            row = parse(TaskRow, parse_json(line, f"{path}:{i}", fix=fix), f"{path}:{i}", fix, sep=": ")
            tasks.append(Task.from_row(row.model_dump()))
    if not tasks:
        raise ConfigError("data.source", f"{path} holds no tasks", fix)
    return tasks
