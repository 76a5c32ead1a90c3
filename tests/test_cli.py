"""The console script, run as a user runs it (subprocesses, real files, a real server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from conftest import free_port

BIN = str(Path(sys.executable).with_name("rl-router"))


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], capture_output=True, text=True, **kw)


def test_help_explains_commands():
    out = run("--help").stdout
    for cmd in ("quickstart", "train", "rollout", "pool-server"):
        assert cmd in out
    assert "--set" in run("rollout", "--help").stdout
    train_help = run("train", "--help").stdout
    for opt in ("--set", "--output-dir", "--resume", "accelerate", "report_to"):
        assert opt in train_help, opt


def test_rollout_compares_policies_offline_and_writes_summary(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    p = run("rollout", str(Path(__file__).resolve().parents[1] / "recipes/gsm8k.yaml"), "--n", "6", "--output-dir", str(tmp_path), env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "rollout_summary.json").read_text())
    pols = summary["policies"]
    assert set(pols) == {"router", "always-mixtral-8x7b", "always-gpt-4-1106", "random"} and summary["tasks"] == 6
    assert pols["always-gpt-4-1106"]["mean_cost"] > 10 * pols["always-mixtral-8x7b"]["mean_cost"] > 0
    assert pols["always-gpt-4-1106"]["call_share"] == {"gpt-4-1106": 1.0, "mixtral-8x7b": 0.0}
    assert "always-gpt-4-1106" in p.stdout and "quality" in p.stdout


def test_bad_recipe_exits_2_naming_the_field(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("env:\n  budjet: 0.1\n")
    p = run("rollout", str(f))
    assert p.returncode == 2 and "env.budjet" in p.stdout and "did you mean 'budget'" in p.stdout


def test_pool_server_serves_openai_clients(tmp_path):
    import openai

    port = free_port()
    env = {**os.environ, "RLR_SERVER_TOKEN": "tok-123"}
    proc = subprocess.Popen([BIN, "pool-server", "--port", str(port), "--api-key-env", "RLR_SERVER_TOKEN"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="tok-123", max_retries=0)
        for _ in range(100):
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.2)
        assert {m.id for m in models.data} == {"mixtral-8x7b", "gpt-4-1106"}
        q = "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?"
        r = client.chat.completions.create(model="mixtral-8x7b", messages=[{"role": "user", "content": q}])
        assert r.choices[0].message.content.strip().endswith("#### 18") and r.usage.completion_tokens > 0
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("expected 401")
        except openai.AuthenticationError as e:
            assert e.status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
