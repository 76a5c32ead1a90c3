"""Recipes: the quickstart file equals the embedded defaults; every bad field is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_router.errors import ConfigError
from rl_router.recipe import Recipe, load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_equals_embedded_defaults():
    assert load_recipe(ROOT / "recipes/quickstart.yaml").to_dict() == Recipe().to_dict() == load_recipe(None).to_dict()


def test_overrides_are_parsed_as_yaml():
    r = load_recipe(None, ["env.budget=0.02", "data.datasets=[gsm8k, mmlu]", "trainer.learning_rate=1e-5"])
    assert r.env_config().budget == 0.02 and r.data.datasets == ["gsm8k", "mmlu"] and r.trainer["learning_rate"] == 1e-5


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"modle": {}}, "recipe.modle"),
        ({"model": {"hiden_size": 3}}, "model.hiden_size"),
        ({"model": {"hidden_size": "big"}}, "model.hidden_size"),
        ({"env": {"max_turn": 3}}, "env.max_turn"),
        ({"env": {"max_turns": 0}}, "env.max_turns"),
        ({"trainer": {"learning_rat": 1e-5}}, "trainer.learning_rat"),
        ({"rewards": [{"name": "nope"}]}, "rewards[0].name"),
        ({"rollout": {"temperature": "hot"}}, "rollout.temperature"),
        ({"data": {"heldout_fraction": "x"}}, "data.heldout_fraction"),
    ],
)
def test_bad_fields_are_named(raw, field):
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw)
    assert e.value.field == field


def test_typo_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        recipe_from_dict({"trainer": {"learning_rat": 1e-5}})


def test_tasks_are_split_deterministically(recorded_pool):
    r = Recipe()
    tr1, he1 = r.tasks(recorded_pool)
    tr2, he2 = r.tasks(recorded_pool)
    assert [t.task_id for t in he1] == [t.task_id for t in he2] and len(he1) == 64 and len(tr1) == 256
    assert not {t.task_id for t in tr1} & {t.task_id for t in he1}
    syn = recipe_from_dict({"data": {"source": "synthetic", "synthetic_n": 50, "max_heldout": None, "max_train": None}})
    a, b = syn.tasks(None)
    assert len(a) + len(b) == 50 and {t.topic for t in a} == {"easy", "hard"}
