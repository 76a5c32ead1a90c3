"""Secrets: a key planted in the environment authenticates every pool call of a real training
run (OpenAI-compatible pool -> our server on 127.0.0.1 requiring that bearer token) and
appears in none of its outputs: logs, recipe copy, checkpoints, tensorboard events, metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rl_router.pools import RecordedPool
from rl_router.pools.server import PoolServer

BIN = str(Path(sys.executable).with_name("rl-router"))
SECRET = "sk-live-PLANTED-4f1d9c0e7b2a58e3"


def test_training_through_an_authenticated_pool_leaks_no_key(tmp_path):
    recorded = RecordedPool.packaged(["gsm8k"])
    tasks = recorded.tasks()[:24]
    data = tmp_path / "tasks.jsonl"
    data.write_text("\n".join(json.dumps(t.to_row() | {"task_id": t.task_id}) for t in tasks))
    with PoolServer(recorded, api_key=SECRET) as srv:
        recipe = {
            "pool": {"type": "openai", "forward_context": True, "timeout_s": 10, "max_retries": 1,
                     "models": {c.name: {"base_url": srv.url, "api_key_env": "PLANTED_POOL_KEY", "price_in": c.price_in, "price_out": c.price_out} for c in recorded.models}},
            "data": {"source": str(data), "heldout_fraction": 0.25},
            "env": {"budget": 0.05},  # a live pool's reserved bound for GPT-4 (prompt bytes + 512 output tokens) is above $0.01
            "rollout": {"max_new_tokens": 24},
            "algorithm": {"sft_examples": 16},
            "sft": {"max_steps": 5, "logging_steps": 1},
            "trainer": {"max_steps": 2, "save_steps": 1, "report_to": "tensorboard"},
        }
        rp = tmp_path / "r.yaml"
        rp.write_text(yaml.safe_dump(recipe))
        out = tmp_path / "out"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PLANTED_POOL_KEY": SECRET, "COLUMNS": "200", "RL_ROUTER_NO_PROGRESS": "1"}
        p = subprocess.run([BIN, "train", str(rp), "--output-dir", str(out)], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert srv.stats.ok > 20  # the key was used: every call authenticated
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) > 20 and any("tfevents" in f.name for f in files) and any(f.name == "optimizer.pt" for f in files)
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in p.stdout + p.stderr
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["pool"]["models"]["gpt-4-1106"]["api_key_env"] == "PLANTED_POOL_KEY"
