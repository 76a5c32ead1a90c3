from __future__ import annotations

import os

# OpenMP threads that spin while waiting make torch 2-3x slower when another CPU-heavy job
# shares the machine (measured: 8.6 s vs 4.3 s for the same SFT steps beside a 2-process
# load); passive waiting keeps the suite's time steady on a loaded CI box (about 15% slower
# on an idle one). Set before torch loads, so every test and subprocess inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (README runs `pytest -n 2`) each worker, and every subprocess it starts,
# computes on one thread: two workers on two cores instead of four threads fighting for them.
# Results do not depend on it (numerics are pinned to be thread-count invariant, see
# rl_router/__init__.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

# Under `pytest -n 2` (README's command) the tests that read one session fixture must run on
# one worker, or each worker builds the fixture (minutes) again. xdist's own `xdist_group`
# marks did not group anything with pytest 9.2 / xdist 3.8 (--dist loadgroup, checked on a
# small example), so the grouping is a scheduler: every test is its own unit of work except
# these, which go to one worker together.
SHARED_FIXTURE_GROUPS = {
    "tests/test_export.py::": "gsm8k_run",
    "tests/test_serve.py::": "gsm8k_run",
    "tests/test_cost_knob.py::test_calibrate_eval": "gsm8k_run",
    "tests/test_train.py::test_gsm8k_": "gsm8k_run",
    "tests/test_name_decisions.py::test_training_samples": "gsm8k_run",
    "tests/test_agentic_train.py::": "bopo_run",
    "tests/test_distributed.py::": "bopo_run",
    "tests/test_pretrained.py::": "smol_cache",  # a module fixture: SmolLM2 unpacked once, not once per worker
}

# Longest first: a unit of work that starts last decides when the suite ends, so the units
# measured as long (seconds on an idle 2-core machine, `pytest --durations=0`) are handed out
# before everything else, longest first (greedy longest-processing-time scheduling); the many
# short tests then fill in. Unlisted units keep pytest's order after them.
LONG_UNITS = {
    "gsm8k_run": 140,
    "smol_cache": 170,
    "bopo_run": 110,
    "tests/test_quickstart.py::test_quickstart_reports_rl_against_its_warm_start_and_the_baselines": 80,
    "tests/test_train.py::test_killed_run_resumes_to_exactly_the_uninterrupted_run": 55,
    "tests/test_bopo.py::test_on_the_same_reward_grpo_drops_the_strong_model_and_bopo_keeps_it": 47,
    "tests/test_tools_protocol.py::test_plain_trl_grpo_trainer_trains_with_our_environment": 32,
    "tests/test_cost_knob.py::test_calibrate_reaches_a_target_on_a_pool_whose_names_share_a_prefix": 31,
    "tests/test_recorded_formats.py::test_eval_baselines_on_a_held_out_file_equal_a_plain_computation": 19,
    "tests/test_checkpoint_ranks.py::test_every_rank_rng_state_is_in_every_checkpoint_and_resume_works": 16,
    "tests/test_valid_inputs.py::test_steps_replay_reads_what_steps_label_wrote": 15,
    "tests/test_secrets.py::test_training_through_an_authenticated_pool_leaks_no_key": 10,
    "tests/test_ranks.py::test_two_processes_evaluate_like_one_and_call_the_pool_once": 10,
    "tests/test_quickstart.py::test_minutes_stop_rl_at_the_next_step": 9,
}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return next((group for prefix, group in SHARED_FIXTURE_GROUPS.items() if nodeid.startswith(prefix)), nodeid)

        def _assign_work_unit(self, node) -> None:
            longest = max(self.workqueue, key=lambda scope: LONG_UNITS.get(scope, 0))  # the first in order on ties
            self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return SharedFixtureScheduling(config, log)


from rl_router.pools import RecordedPool, SimModel, SimulatedPool
from rl_router.tiny import build_tiny_router, load_tiny_tokenizer


def free_port() -> int:
    """A port nothing listens on at the moment (for servers and process groups tests start)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def tokenizer():
    return load_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_router():
    return build_tiny_router(seed=0)


@pytest.fixture(scope="session")
def recorded_pool():
    return RecordedPool.packaged(["gsm8k"])


def make_sim_pool(latency_ms: float = 0.0, seed: int = 0) -> SimulatedPool:
    return SimulatedPool(
        [
            SimModel("small", price_in=0.5, price_out=1.0, latency_ms=latency_ms, skills={"easy": 0.9, "hard": 0.1}),
            SimModel("large", price_in=10.0, price_out=30.0, latency_ms=latency_ms, skills={"easy": 0.95, "hard": 0.9}),
        ],
        seed=seed,
    )


@pytest.fixture
def sim_pool():
    return make_sim_pool()


#: the BoPO agentic run both test_agentic_train (learning) and test_distributed (1 vs 2
#: processes) read: trained once per session
BOPO_SETS = ["trainer.max_steps=16", "trainer.save_steps=8", "sft.max_steps=200"]


@pytest.fixture(scope="session")
def bopo_run(tmp_path_factory):
    import os

    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import train

    os.environ["RL_ROUTER_NO_PROGRESS"] = "1"
    out = tmp_path_factory.mktemp("bopo_one_process")
    return out, train(load_recipe("recipes/bopo_agentic.yaml", BOPO_SETS), output_dir=str(out), log=lambda _: None)


@pytest.fixture(scope="session")
def gsm8k_run(tmp_path_factory):
    """The two-model GSM8K recipe (recipes/gsm8k.yaml, the embedded defaults) with 150 SFT steps
    instead of 300 and 2 GRPO steps instead of 16, then `rl-router eval` on it, once per
    session: the trained router the GSM8K, serve, export, knob and name-decision tests read
    (each copies what it changes)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    bin_ = str(Path(sys.executable).with_name("rl-router"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "RL_ROUTER_NO_PROGRESS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    out = tmp_path_factory.mktemp("gsm8k") / "run"
    train = subprocess.run([bin_, "train", str(Path(__file__).resolve().parents[1] / "recipes" / "gsm8k.yaml"), "--output-dir", str(out), "--set", "trainer.max_steps=2", "--set", "sft.max_steps=150"], capture_output=True, text=True, env=env)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    ev = subprocess.run([bin_, "eval", str(out), "--no-sampled"], capture_output=True, text=True, env=env)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    return SimpleNamespace(out=out, train_stdout=train.stdout, eval_stdout=ev.stdout, metrics=json.loads((out / "metrics.json").read_text()), eval=json.loads((out / "eval" / "eval.json").read_text()))


@pytest.fixture
def gsm8k_trainer(tmp_path, gsm8k_run):
    """A RouterGRPOTrainer on the GSM8K run's trained router, its recorded pool and 8 of its
    train tasks (16 episodes = 4 tasks x 4 samples per batch, T 1.0 unless asked, float32): call it with a
    reward function and the trainer's own keyword arguments (`enumerate_names=True`: each group
    takes the pool's models in turn at its first route decision; `temperature`, the sampler's and the
    loss's); returns (trainer, tasks)."""

    def make(reward, enumerate_names=False, temperature=1.0, scripted=False, **kwargs):
        import json

        from datasets import Dataset
        from trl import GRPOConfig

        from rl_router.models import load_checkpoint
        from rl_router.recipe import recipe_from_dict
        from rl_router.rollout.engine import make_engine, make_rollout_func, stop_strings
        from rl_router.rollout.names import cost_weights
        from rl_router.rollout.policies import HFPolicy
        from rl_router.task_sources import recipe_pool, recipe_tasks
        from rl_router.training.pipeline import target_policy
        from rl_router.training.trainer import RouterGRPOTrainer

        recipe = recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))
        model, tok = load_checkpoint(gsm8k_run.out / "final", recipe)
        pool = recipe_pool(recipe)
        tasks = recipe_tasks(recipe, pool)[0][:8]
        rollout = make_rollout_func(make_engine(recipe, pool, tok), tasks, lambda tr: HFPolicy(tr.accelerator.unwrap_model(tr.model), tok, max_new_tokens=recipe.rollout.max_new_tokens, temperature=temperature,
                                                                                               stop_strings=stop_strings(recipe), names=pool.model_names, route_weights=cost_weights(pool)),
                                    enumerate_names=pool.model_names if enumerate_names else None, scripted=target_policy(recipe, tok) if scripted else None,
                                    anchor_episode=kwargs.get("protocol_anchor", 0) > 0)
        args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, num_generations=4, max_steps=1, learning_rate=1e-3, temperature=temperature, beta=0.0, bf16=False, use_cpu=True,
                          report_to="none", save_strategy="no", max_completion_length=recipe.rollout.max_completion_tokens, gradient_checkpointing=False)
        return RouterGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list([{"prompt": t.question} for t in tasks]),
                                 processing_class=tok, rollout_func=rollout, **kwargs), tasks

    return make
