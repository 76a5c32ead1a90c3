"""Recipes: the GSM8K file equals the embedded defaults, the quickstart file is the one the
package ships; every bad field is named."""

from __future__ import annotations

import os
import json
from pathlib import Path

import pytest
import yaml

from rl_router.errors import ConfigError
from rl_router.recipe import Recipe, load_recipe, recipe_from_dict
from rl_router.task_sources import recipe_pool, recipe_tasks

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_is_the_one_the_package_ships():
    from rl_router.cli import QUICKSTART

    assert (ROOT / "recipes/quickstart.yaml").read_bytes() == QUICKSTART.read_bytes()
    r = load_recipe(QUICKSTART)
    assert r.pool["datasets"] == ["mmlu-pro"] and r.algorithm.sft_mix == "format" and r.curve.keep_best and r.output_dir == "outputs/quickstart"


def test_gsm8k_yaml_equals_embedded_defaults():
    assert load_recipe(ROOT / "recipes/gsm8k.yaml").to_dict() == Recipe().to_dict() == load_recipe(None).to_dict()
    raw = yaml.safe_load((ROOT / "recipes/gsm8k.yaml").read_text())
    d = Recipe().to_dict()
    for section in ("trainer", "sft", "algorithm", "env", "rewards"):  # spelled out, not inherited
        assert raw[section] == d[section], section


@pytest.mark.parametrize("name", ["quickstart", "gsm8k", "rloo", "bopo_agentic", "router_r1_qwen2.5-3b", "router_r1_qwen2.5-3b_vllm_server", "dcrouter_smollm2", "mmlu_pro_single_smollm2"])
def test_shipped_recipes_validate(name, tmp_path):
    """Each shipped recipe loads, its trainer / sft sections construct TRL's own configs (the
    1:1 mapping, types included), and its pool builds."""
    r = load_recipe(ROOT / f"recipes/{name}.yaml")
    from trl import GRPOConfig, SFTConfig

    cpu = {"use_cpu": True, "bf16": False}
    g = GRPOConfig(output_dir=str(tmp_path / "g"), **{**r.trainer, **cpu, "use_vllm": False})
    normalised = {"report_to": lambda v: [] if v == "none" else [v] if isinstance(v, str) else v}  # TRL's own normalisation
    assert all(getattr(g, k) == normalised.get(k, lambda v: v)(v) for k, v in r.trainer.items() if k not in cpu and k != "use_vllm")
    s = SFTConfig(output_dir=str(tmp_path / "s"), **{**r.sft, **cpu})
    assert s.max_steps == r.sft["max_steps"] and s.learning_rate == float(r.sft["learning_rate"])
    pool = recipe_pool(r)
    assert len(pool.model_names) >= 2
    if name == "router_r1_qwen2.5-3b":
        assert r.model.name_or_path == "Qwen/Qwen2.5-3B-Instruct" and r.data.source == "hf"
        assert r.rewards[0]["outcome"] == "exact_match" and len(r.pool["models"]) == 6
        assert all("api_key" not in m and m["api_key_env"] == "TOGETHER_API_KEY" for m in r.pool["models"].values())


@pytest.mark.parametrize("cfg", ["cpu", "single_gpu", "ddp", "zero2", "zero3", "multinode", "multinode_hostfile"])
def test_accelerate_configs_load(cfg):
    from accelerate.commands.config.config_args import load_config_from_file

    c = load_config_from_file(str(ROOT / f"recipes/accelerate/{cfg}.yaml"))
    want = {  # what each file is for: its distributed type, process count, machines
        "cpu": ("NO", 1, 1), "single_gpu": ("NO", 1, 1), "ddp": ("MULTI_GPU", 8, 1), "zero2": ("DEEPSPEED", 8, 1),
        "zero3": ("DEEPSPEED", 8, 1), "multinode": ("DEEPSPEED", 16, 2), "multinode_hostfile": ("DEEPSPEED", 16, 2),
    }[cfg]
    assert (c.distributed_type, c.num_processes, c.num_machines) == want
    assert c.use_cpu == (cfg == "cpu")
    if cfg.startswith("zero") or cfg == "multinode":
        assert c.distributed_type == "DEEPSPEED" and c.deepspeed_config["zero_stage"] in (2, 3)
    if cfg == "multinode":
        assert c.num_machines == 2 and c.main_process_ip
    if cfg == "multinode_hostfile":
        hosts = (ROOT / c.deepspeed_config["deepspeed_hostfile"]).read_text().splitlines()
        assert c.deepspeed_config["deepspeed_multinode_launcher"] == "pdsh" and sum(1 for h in hosts if "slots=" in h) == c.num_machines


def test_hf_data_source_loads_with_datasets(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps({"q": f"who wrote book {i}?", "answers": [f"author {i}", f"a{i}"]}) for i in range(20)))
    r = recipe_from_dict({"data": {"source": "hf", "hf": [{"path": "json", "data_files": str(f), "split": "train", "question": "q", "answer": "answers", "dataset": "mine"}], "heldout_fraction": 0.25}})
    train, held = recipe_tasks(r, None)
    assert len(train) + len(held) == 20 and held
    t = (train + held)[0]
    assert t.dataset == "mine" and isinstance(t.gold, list) and t.gold[0].startswith("author")
    bad = recipe_from_dict({"data": {"source": "hf", "hf": [{"path": "json", "data_files": str(f), "question": "question"}]}})
    with pytest.raises(ConfigError) as e:
        recipe_tasks(bad, None)
    assert e.value.field == "data.hf[0].question"


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
        ({"algorithm": {"name": "ppo"}}, "algorithm.name"),
        ({"algorithm": {"sft_mix": "all"}}, "algorithm.sft_mix"),
        ({"algorithm": {"strong_only_share": 0.95}}, "algorithm.strong_only_share"),
        ({"algorithm": {"bopo_lamda": 0.5}}, "algorithm.bopo_lamda"),
        ({"trainer": {"num_generations": 3}}, "trainer.num_generations"),
        ({"trainer": {"num_generations": 1, "per_device_train_batch_size": 1}}, "trainer.num_generations"),
        ({"trainer": {"output_dir": "x"}}, "trainer.output_dir"),
        ({"sft": {"max_step": 3}}, "sft.max_step"),
        ({"sft": {"learning_rate": "fast"}}, "sft.learning_rate"),
        ({"algorithm": {"microbatch_tokens": 2048}, "trainer": {"entropy_coef": 0.01}}, "trainer.entropy_coef"),
        ({"algorithm": {"microbatch_tokens": 2048}, "trainer": {"use_adaptive_entropy": True}}, "trainer.use_adaptive_entropy"),
        ({"algorithm": {"microbatch_tokens": 2048}, "trainer": {"top_entropy_quantile": 0.2}}, "trainer.top_entropy_quantile"),
    ],
)
def test_bad_fields_are_named(raw, field):
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(raw)
    assert e.value.field == field


def test_loss_pieces_accept_trl_entropy_settings_at_their_off_values():
    r = recipe_from_dict({"algorithm": {"microbatch_tokens": 2048}, "trainer": {"entropy_coef": 0, "use_adaptive_entropy": False, "top_entropy_quantile": 1.0}})
    assert r.algorithm.microbatch_tokens == 2048


def test_typo_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        recipe_from_dict({"trainer": {"learning_rat": 1e-5}})


def test_tasks_are_split_deterministically(recorded_pool):
    r = Recipe()
    tr1, he1 = recipe_tasks(r, recorded_pool)
    tr2, he2 = recipe_tasks(r, recorded_pool)
    assert [t.task_id for t in he1] == [t.task_id for t in he2] and len(he1) == 187 and len(tr1) == 813  # all of GSM8K, split 0.2
    assert not {t.task_id for t in tr1} & {t.task_id for t in he1}
    syn = recipe_from_dict({"data": {"source": "synthetic", "synthetic_n": 50, "max_heldout": None, "max_train": None}})
    a, b = recipe_tasks(syn, None)
    assert len(a) + len(b) == 50 and {t.topic for t in a} == {"easy", "hard"}


def test_capped_task_lists_are_balanced_and_topic_diverse():
    """`max_train` / `max_heldout` cut from the front: the interleave makes that cut a balanced
    draw over datasets and, within MMLU (whose records are sorted by subject), over subjects."""
    from rl_router.pools.recorded import RecordedPool

    pool = RecordedPool.packaged(["gsm8k", "mmlu"])
    r = recipe_from_dict({"pool": {"datasets": ["gsm8k", "mmlu"]}, "data": {"datasets": ["gsm8k", "mmlu"], "max_train": 40, "max_heldout": 20}})
    train, held = recipe_tasks(r, pool)
    assert [t.dataset for t in train] == ["gsm8k", "mmlu"] * 20 and [t.dataset for t in held] == ["gsm8k", "mmlu"] * 10
    assert len({t.topic for t in train if t.dataset == "mmlu"}) >= 12  # 20 MMLU tasks from many subjects, not one
    again, _ = recipe_tasks(r, pool)
    assert [t.task_id for t in again] == [t.task_id for t in train]
    other, _ = recipe_tasks(recipe_from_dict({**r.to_dict(), "data": {**r.to_dict()["data"], "seed": 1}}), pool)
    assert [t.task_id for t in other] != [t.task_id for t in train]  # the seed moves the draw
    full, full_held = recipe_tasks(recipe_from_dict({**r.to_dict(), "data": {**r.to_dict()["data"], "max_train": None, "max_heldout": None}}), pool)
    assert not {t.task_id for t in full} & {t.task_id for t in full_held}
    assert {t.task_id for t in train} <= {t.task_id for t in full}  # the cap only orders and cuts the split

def test_setting_one_pool_field_keeps_the_default_pool_type():
    r = load_recipe(None, ["pool.datasets=[mmlu]"])
    assert r.pool == {"type": "recorded", "datasets": ["mmlu"]}


def test_pool_dependent_checks_fail_before_any_model_loads(tmp_path):
    import subprocess
    import sys

    from rl_router.recipe import validate_against_pool

    r = recipe_from_dict({"env": {"budget": 1e-9}})
    pool = recipe_pool(r)
    train, _ = recipe_tasks(r, pool)
    with pytest.raises(ConfigError) as e:
        validate_against_pool(r, pool, train)
    assert e.value.field == "env.budget" and "raise env.budget above" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_against_pool(recipe_from_dict({"algorithm": {"strong_model": "gpt-5"}}), pool, train)
    assert e.value.field == "algorithm.strong_model" and "gpt-4-1106" in str(e.value)
    assert validate_against_pool(Recipe(), pool, train) == ("mixtral-8x7b", "gpt-4-1106")
    # through the CLI: a model that could never load, and the budget error comes first
    bin_ = str(Path(sys.executable).with_name("rl-router"))
    p = subprocess.run([bin_, "train", str(ROOT / "recipes/gsm8k.yaml"), "--output-dir", str(tmp_path), "--set", "env.budget=1e-9", "--set", "model.name_or_path=/no/such/model"], capture_output=True, text=True)
    assert p.returncode == 2 and "env.budget" in p.stdout and "Traceback" not in p.stderr


def test_num_generations_is_checked_against_the_global_batch(monkeypatch):
    """TRL's rule: num_generations divides per_device_train_batch_size x processes x
    steps_per_generation (groups may span processes)."""
    sets = ["trainer.per_device_train_batch_size=2", "trainer.num_generations=4"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="num_generations"):
        load_recipe(None, sets)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load_recipe(None, sets).trainer["num_generations"] == 4


def test_topic_split_holds_whole_subjects_out_and_validation_is_kept_out_of_training():
    """data.heldout_by: topic: no held-out MMLU subject has a train task; validation tasks
    (data.validation_fraction) are neither trained on nor held out; the default split is
    unchanged by the new fields (the quickstart's 813 / 187)."""
    from rl_router.task_sources import recipe_pool, recipe_splits, recipe_tasks

    r = recipe_from_dict({"pool": {"datasets": ["mmlu"]}, "data": {"datasets": ["mmlu"], "heldout_by": "topic", "validation_fraction": 0.1}})
    pool = recipe_pool(r)
    train, val, held = recipe_splits(r, pool)
    assert {t.topic for t in held} and not {t.topic for t in held} & {t.topic for t in train + val}
    ids = [{t.task_id for t in x} for x in (train, val, held)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert [t.task_id for t in recipe_tasks(r, pool)[0]] == [t.task_id for t in train]
    again = recipe_splits(r, recipe_pool(r))
    assert [[t.task_id for t in x] for x in again] == [[t.task_id for t in x] for x in (train, val, held)]
    d = recipe_from_dict({})
    tr, va, he = recipe_splits(d, recipe_pool(d))
    assert (len(tr), len(va), len(he)) == (813, 0, 187)


def test_validating_trl_configs_leaves_no_process_state_behind(monkeypatch):
    """TRL's configs are built to validate a recipe; that must not fix accelerate's shared state
    to one CPU process (a GPU or torchrun run would then train on the CPU, or not find its group)."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # as in a fresh process (other tests built trainers here)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, with no MASTER_ADDR in reach
    assert load_recipe(None, ["trainer.per_device_train_batch_size=2", "trainer.num_generations=4"]).trainer["num_generations"] == 4
    assert not PartialState._shared_state
    assert os.environ["WORLD_SIZE"] == "2"


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates_whole(path):
    """Each recipe in recipes/ passes every check a run makes before any work (TRL's own included),
    and writes beside its own name unless it says otherwise."""
    r = load_recipe(path)
    assert r.output_dir.startswith("outputs/")
