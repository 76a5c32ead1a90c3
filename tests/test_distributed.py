"""Two processes on one CPU (accelerate launch, gloo): the same recipe trains end to end with
groups gathered across ranks before RLOO advantages, ranks kept in step per turn, files
written once by rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_cpu_run(tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    sets = ["sft.max_steps=40", "algorithm.sft_examples=32", "trainer.max_steps=3", "trainer.save_steps=100", "data.max_train=32", "data.max_heldout=4", "rollout.max_new_tokens=32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "rl_router.cli", "train", "recipes/rloo.yaml", "--output-dir", str(tmp_path), *[a for s in sets for a in ("--set", s)]]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["global_step"] == 3 and m["algorithm"] == "rloo"
    logged = [h for h in m["log_history"] if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2, 3] and all("advantage/rloo_mean_abs" in h for h in logged)
    assert p.stdout.count("held-out reward") == 1  # the summary is printed by rank 0 only
    assert (tmp_path / "final" / "model.safetensors").exists() and not list(tmp_path.rglob("*.tmp"))
