"""scripts/seeds.py's RL table: a seed run without wall-time / memory records (made in pieces,
e.g. a warm start then `train --resume`) shows "-" there, not a measured-looking 0.0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("seeds_script", ROOT / "scripts" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
assert spec.loader is not None
spec.loader.exec_module(seeds)


def _row(seed: int, **extra) -> dict:
    fig = {"mean": 0.1, "ci95": [0.05, 0.15]}
    return {"seed": seed, "rl_minus_start": {k: dict(fig) for k in ("above_hull", "reward", "quality", "cost")}, "steps": 20, "kept_step": 20, "rl_episodes": 1280, "rl_distinct_tasks": 160, **extra}


def test_missing_wall_and_memory_show_a_dash_and_recorded_ones_their_value():
    lines = seeds.rl_table([_row(0, wall_s=None, max_rss_mb=None), _row(1, wall_s=3484.0, max_rss_mb=17306.0)], {})
    assert lines[2].endswith("| -, - |"), lines[2]
    assert lines[3].endswith("| 58.1 min, 16.9 GB |"), lines[3]
    assert "0.0 min" not in "\n".join(lines)


def _policy(quality, cost, reward) -> dict:
    import numpy as np

    q, c, r = (np.asarray(x, dtype=float) for x in (quality, cost, reward))
    ci = lambda x: [float(x.mean()) - 0.1, float(x.mean()) + 0.1]  # noqa: E731
    return {"quality": float(q.mean()), "mean_cost": float(c.mean()), "reward": float(r.mean()), "per_task": {"quality": q.tolist(), "cost": c.tolist(), "reward": r.tolist()},
            "ci95": {"quality": ci(q), "mean_cost": ci(c), "reward": ci(r), "above_hull": [-0.1, 0.1]}, "above_hull": 0.0, "routes_per_task": 1.0, "behaviour": None,
            "format_error_rate": 0.0, "call_share": {}}


def test_a_run_evaluated_against_its_warm_start_is_read_from_that_evaluation_not_trained_again(tmp_path, monkeypatch):
    """A seed folder stopped after RL and evaluated with `rl-router eval RUN --against RUN/sft`
    has no metrics.json: the script reads RL minus warm start (paired, per task) from eval.json and
    the RL counts from the last checkpoint, and does not train the seed again."""
    import json
    import sys

    import numpy as np

    rng = np.random.default_rng(0)
    n = 60
    run = tmp_path / "seed0"
    (run / "eval").mkdir(parents=True)
    cheap_q, strong_q = rng.integers(0, 2, n), rng.integers(0, 2, n)
    router_r, warm_r = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    policies = {"always-cheap": _policy(cheap_q, np.full(n, 1e-5), cheap_q), "always-strong": _policy(strong_q, np.full(n, 1e-4), strong_q),
                "router (greedy)": _policy(router_r, np.full(n, 5e-5), router_r), f"other router: {run / 'sft'} (greedy)": _policy(warm_r, np.full(n, 2e-5), warm_r)}
    (run / "eval" / "eval.json").write_text(json.dumps({"policies": policies, "references": {"best": "strong"}}))
    for step, seen in ((5, 360), (9, 648)):
        (run / "rl" / f"checkpoint-{step}").mkdir(parents=True)
        (run / "rl" / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"episodes/seen": seen, "episodes/distinct_tasks": seen // 9}, {"train_runtime": 1.0}]}))

    label = seeds.warm_start_label(run)
    assert label == f"other router: {run / 'sft'} (greedy)"
    m = seeds.metrics_from_eval(run, label)
    d = m["rl_minus_warm_start"]
    assert abs(d["reward"]["mean"] - float((router_r - warm_r).mean())) < 1e-9
    assert d["reward"]["ci95"][0] < d["reward"]["mean"] < d["reward"]["ci95"][1]
    assert (m["global_step"], m["rl_episodes"], m["rl_distinct_tasks"], m["heldout_tasks"]) == (9, 648, 72, n)

    def must_not_train(*_a, **_k):
        raise AssertionError("a run evaluated against its warm start was trained again")

    monkeypatch.setattr(seeds, "train_seed", must_not_train)
    monkeypatch.setattr(sys, "argv", ["seeds.py", "--seeds", "0", "--out", str(tmp_path)])
    seeds.main()
    table = (tmp_path / "seeds.md").read_text()
    assert f"| 0 | {d['above_hull']['value']:+.3f}" in table and "| 9 (9), 648, 72 | -, - |" in table


def test_a_seed_folder_without_a_run_is_trained(tmp_path, monkeypatch):
    """An evaluation against some other router (the run's final weights, another run's warm start) is not a finished seed."""
    import json
    import sys

    (tmp_path / "seed3" / "eval").mkdir(parents=True)
    (tmp_path / "seed3" / "eval" / "eval.json").write_text(json.dumps({"policies": {"router (greedy)": {}, "other router: seed3/final (greedy)": {}, "other router: elsewhere/sft (greedy)": {}}}))
    assert seeds.warm_start_label(tmp_path / "seed3") is None
    class Trained(Exception):
        pass

    def fake_train(_bin, _recipe, _run, _sets, seed):
        raise Trained(seed)

    monkeypatch.setattr(seeds, "train_seed", fake_train)
    monkeypatch.setattr(sys, "argv", ["seeds.py", "--seeds", "3", "--out", str(tmp_path)])
    with pytest.raises(Trained) as e:
        seeds.main()
    assert e.value.args == (3,)


def test_the_rl_counts_are_those_of_the_weights_the_evaluation_scored(tmp_path):
    """`rl-router eval RUN` scores RUN/final, whose kept step may precede the last checkpoint (a
    best-validation step) and whose training.json counts the whole run, past the last checkpoint;
    `rl-router eval RUN/rl/checkpoint-N` scores that checkpoint. The table reads those, not the
    last checkpoint's."""
    import json

    run = tmp_path / "runs" / "mmlu_s0"
    for step, seen in ((5, 360), (9, 648)):
        (run / "rl" / f"checkpoint-{step}").mkdir(parents=True)
        (run / "rl" / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"episodes/seen": seen, "episodes/distinct_tasks": seen // 9}]}))
    (run / "sft_run" / "checkpoint-5").mkdir(parents=True)
    link = tmp_path / "seeds" / "seed0"
    link.parent.mkdir()
    link.symlink_to(run, target_is_directory=True)
    counts = lambda r, target: tuple(seeds.rl_counts(r, target).get(k) for k in ("global_step", "kept_step", "rl_episodes", "rl_distinct_tasks"))  # noqa: E731

    assert counts(run, str(run / "final")) == (9, 9, 648, 72)  # final without its training.json: the last checkpoint
    (run / "final").mkdir()
    (run / "final" / "training.json").write_text(json.dumps({"algorithm": "grpo", "steps": 10, "kept_step": 5, "episodes": 720, "distinct_tasks": 80}))
    assert counts(run, str(run / "final")) == (10, 5, 720, 80)
    assert counts(link, "outputs/seeds/seed0/final") == (10, 5, 720, 80)  # typed relative, the run read through a link
    assert counts(link, str(run / "rl" / "checkpoint-5")) == (5, 5, 360, 40)
    assert counts(run, str(run / "rl" / "checkpoint-7")) == (None, None, None, None)  # not kept: unknown, not another checkpoint's
    assert counts(run, str(run / "sft_run" / "checkpoint-5")) == (None, None, None, None)  # the warm start's checkpoint is not RL's
    assert counts(run, None) == (9, 9, 648, 72)  # an evaluation that does not name its target: the last checkpoint
