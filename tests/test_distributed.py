"""Two processes on one CPU (accelerate launch, gloo) vs one process, same global batch.

The BoPO agentic recipe trains end to end under 2 processes with groups gathered across ranks
before advantages, ranks kept in step per turn, and files written once by rank 0; and its
learning moves the same way as the 1-process run's: from the same kind of warm start (mostly
cheap), RL teaches both to escalate hard steps, so held-out cost and success both rise over
the warm start's, and both end above the boundaries' mixture. (Per-step curves are printed;
with 16 sampled episodes a step they are too noisy to compare point by point.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rl_router.frontier import above, point, random_mixture

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["trainer.max_steps=8", "trainer.save_steps=100", "sft.max_steps=200", "data.max_heldout=24"]


def _run(out: Path, procs: int) -> dict:
    # same global batches: SFT 8 sequences per step, RL 16 episodes (4 groups of 4) per step
    per_dev = ["sft.per_device_train_batch_size=4", "trainer.per_device_train_batch_size=8"] if procs == 2 else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--cpu", "--num_processes", str(procs), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rl_router.cli"]
    sets = [a for s in COMMON + per_dev for a in ("--set", s)]
    p = subprocess.run([*launch, "train", "recipes/bopo_agentic.yaml", "--output-dir", str(out), *sets], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("held-out reward") == 1  # the summary is printed by rank 0 only
    return json.loads((out / "metrics.json").read_text())


def _curve(m: dict) -> list[float]:
    return [h["episode/cost"] for h in m["log_history"] if "reward" in h]


def test_two_processes_train_like_one(tmp_path):
    two, one = _run(tmp_path / "two", 2), _run(tmp_path / "one", 1)
    assert two["global_step"] == one["global_step"] == 8 and two["algorithm"] == "bopo"
    logged = [h for h in two["log_history"] if "reward" in h]
    assert [h["step"] for h in logged] == list(range(1, 9)) and all("advantage/bopo_mean_abs" in h for h in logged)
    assert (tmp_path / "two" / "final" / "model.safetensors").exists() and not list((tmp_path / "two").rglob("*.tmp"))
    shapes = {}
    for name, m in (("1 process", one), ("2 processes", two)):
        c = _curve(m)
        b = m["heldout_baselines"]
        line = random_mixture(point(b["always-cheap"]), point(b["always-expensive"]))
        a, w = m["heldout_after"], m["heldout_after_sft"]
        shapes[name] = (w, a, above(point(a), line))
        print(f"\n{name}: sampled $/1k per step {[round(1000 * x, 2) for x in c]}, loss {[round(h['loss'], 3) for h in m['log_history'] if 'loss' in h]}; "
              f"held-out warm start {w['quality']:.3f} @ ${1000 * w['mean_cost']:.3f} -> RL {a['quality']:.3f} @ ${1000 * a['mean_cost']:.3f} ({shapes[name][2]:+.3f} vs mixture)")
    for name, (w, a, gap) in shapes.items():
        assert a["mean_cost"] > w["mean_cost"] and a["quality"] > w["quality"] + 0.05, name  # learned to escalate, and it paid
        assert a["reward"] > w["reward"], name
        assert gap > 0.05, name  # ends above the boundary mixture
