"""Tasks are what the router sees; splits keep one question's variants on one side."""

from __future__ import annotations

from collections import defaultdict

from rl_router.pools import build_pool
from rl_router.recipe import load_recipe
from rl_router.task_sources import recipe_splits


def _rows():
    import gzip
    import json

    from rl_router.pools.recorded_datasets import DATASETS

    return [json.loads(line) for line in gzip.open(DATASETS["mmlu-pro"].path, "rt")]


def _text(row):
    return " ".join(row["question"].split()).lower()


def test_mmlu_pro_questions_sharing_text_are_distinct_tasks_on_one_side_of_every_split():
    """MMLU-Pro reuses a question's text with other options as another question: both are
    tasks (keyed by question and options), and train / validation / held-out never split them."""
    r = load_recipe("recipes/mmlu_pro.yaml", ["data.validation_fraction=0.1", "data.max_heldout=null"])
    pool = build_pool(r.pool)
    tasks = pool.tasks("mmlu-pro")
    text_of = {f"mmlu-pro:{row['question_id']}": _text(row) for row in _rows()}
    by_text = defaultdict(list)
    for t in tasks:
        by_text[text_of[t.task_id]].append(t)
    shared = [ts for ts in by_text.values() if len({t.question for t in ts}) > 1]
    assert len(shared) > 100  # questions whose text comes back with other options
    assert all(len({t.task_id for t in ts}) == len(ts) and len({t.group for t in ts}) == 1 for ts in shared)
    train, val, held = recipe_splits(r, pool)
    side = {}
    for name, part in (("train", train), ("validation", val), ("held-out", held)):
        for t in part:
            side[t.task_id] = name
    assert len(side) == len(train) + len(val) + len(held) == len(tasks)
    for ts in shared:
        assert len({side[t.task_id] for t in ts}) == 1
    # the split really mixes: each side holds some of these groups
    assert {side[ts[0].task_id] for ts in shared} == {"train", "validation", "held-out"}


def test_a_held_out_file_keeps_its_question_variants_out_of_training(tmp_path):
    import json

    rows = _rows()
    text_of = {f"mmlu-pro:{row['question_id']}": _text(row) for row in rows}
    by_text = defaultdict(list)
    for row in rows:
        by_text[_text(row)].append(row)
    pair = next(v for v in by_text.values() if len({tuple(x["options"]) for x in v}) > 1)
    f = tmp_path / "held.jsonl"
    f.write_text(json.dumps(pair[0]) + "\n")
    r = load_recipe("recipes/mmlu_pro.yaml", [f"pool.files=[{f}]", "data.max_heldout=null"])
    pool = build_pool(r.pool)
    train, _val, held = recipe_splits(r, pool)
    assert len(held) == 1
    text = _text(pair[0])
    assert [row for row in pair[1:] if f"mmlu-pro:{row['question_id']}" in text_of]  # the variants are in the shipped set ...
    assert not [t for t in train if text_of.get(t.task_id) == text]  # ... and none of them is trained on
