"""`rl-router quickstart` end to end, as README's first command runs it, with fewer steps.

What is asserted is what the command must produce, not a learning result: RL's own
contribution (after RL minus the warm start, paired, with its interval) in metrics.json and on
screen, the held-out curve from the warm start on, and the router against the baselines that
matter (best single model, agreement cascade, per-category, kNN). The figures themselves come
from `scripts/seeds.py` (README)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = str(Path(sys.executable).with_name("rl-router"))

SMALL = ["data.max_train=600", "sft.max_steps=30", "algorithm.sft_examples=240", "trainer.max_steps=2", "trainer.save_steps=2", "data.max_heldout=48", "data.max_heldout_initial=8",
         "curve.every_steps=1", "curve.heldout_n=24", "curve.validation_n=24", "data.validation_fraction=0.02",
         "trainer.gradient_accumulation_steps=1", "trainer.per_device_train_batch_size=32"]  # 32 episodes (4 questions x 8) per step, not 256


def test_quickstart_reports_rl_against_its_warm_start_and_the_baselines(tmp_path):
    out = tmp_path / "qs"
    cmd = [BIN, "quickstart", "--output-dir", str(out)]
    for kv in SMALL:
        cmd += ["--set", kv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "RL_ROUTER_NO_PROGRESS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["pool"] and len(m["pool"]) == 10 and m["global_step"] == 2
    d = m["rl_minus_warm_start"]
    for k in ("above_hull", "reward", "quality", "cost"):
        lo, hi = d[k]["ci95"]
        assert lo <= hi and d["tasks"] == 48, k
    # the held-out curve: the warm start (step 0) and every RL step, each with its interval
    curve = m["curve"]
    assert [c["step"] for c in curve] == [0, 1, 2]
    assert all(len(c["heldout"]["ci95"]["above_hull"]) == 2 and c["heldout"]["tasks"] == 24 and "validation" in c for c in curve)
    # the router kept is the curve's point of highest validation reward (the first of equals), and
    # the final held-out figures are that router's (its first 24 tasks are the curve's)
    best = max(curve, key=lambda c: (c["validation"]["reward"], -c["step"]))
    assert m["kept_step"] == best["step"]
    first = m["heldout_after"]["per_task"]["quality"][:24]
    assert sum(first) / 24 == pytest.approx(best["heldout"]["quality"])
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RL minus its warm start" in p.stdout
    # the standing: the router against the warm start and the baselines, paired
    ev = json.loads((out / "eval" / "eval.json").read_text())
    vs = ev["policies"]["router (greedy)"]["vs"]
    warm = next(k for k in vs if k.startswith("other router"))
    for name in (warm, "agreement cascade", "per-category", "knn-tfidf", f"always-{ev['references']['best']}"):
        assert len(vs[name]["above_hull"]["ci95"]) == 2, name
        assert "reward" in ev["policies"][name], name
    for label in ("warm start (before RL)", "agreement cascade", "per-category", "knn-tfidf"):
        assert label in p.stdout, label
    # eval's router row is the training run's own held-out report (one path, same numbers)
    assert ev["policies"]["router (greedy)"]["per_task"] == m["heldout_after"]["per_task"]
    assert ev["policies"][warm]["per_task"] == m["heldout_after_sft"]["per_task"]


def test_minutes_stop_rl_at_the_next_step(tmp_path):
    """`train --minutes M` ends RL at the first step past M minutes (the run finishes as usual:
    final/, metrics.json) and checkpoints it there; a non-positive budget is refused before any work."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "RL_ROUTER_NO_PROGRESS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "gsm8k.yaml")
    small = ["algorithm.sft_warmstart=false", "data.max_train=32", "data.max_heldout=8", "data.max_heldout_initial=8", "trainer.max_steps=50", "trainer.save_steps=50",
             "trainer.lr_scheduler_type=cosine", "trainer.warmup_steps=0"]
    cmd = [BIN, "train", recipe, "--output-dir", str(tmp_path / "run"), "--minutes", "0.0001"]
    for kv in small:
        cmd += ["--set", kv]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["global_step"] == 1 and "algorithm.rl_minutes reached at step 1" in p.stdout
    # a decaying schedule stopped by the minutes says where it stood: cosine over 50 steps, 1 done
    assert re.search(r"at learning rate \S+, 100% of trainer.learning_rate: the cosine schedule runs over trainer.max_steps=50 and had not finished", " ".join(p.stdout.split())), p.stdout[-2000:]
    assert (tmp_path / "run" / "rl" / "checkpoint-1").is_dir()  # saved where the minutes stopped it (save_steps is 50): --resume continues from there
    bad = subprocess.run([BIN, "train", recipe, "--output-dir", str(tmp_path / "bad"), "--minutes", "0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--minutes: must be a positive number of minutes" in bad.stdout and not (tmp_path / "bad").exists()


def test_a_resumed_curve_forgets_what_came_after_its_checkpoint():
    """Points measured after the checkpoint a run resumes from belong to the abandoned
    continuation: dropped, and a router kept from them is not used (restore_best skips it)."""
    from types import SimpleNamespace

    from rl_router.training.curve import LearningCurve

    pts = [{"step": s, "validation": {"reward": r}} for s, r in ((0, 0.3), (10, 0.6), (20, 0.7), (30, 0.5))]
    fake = SimpleNamespace(points=list(pts), best={"step": 20, "reward": 0.7}, every=10, t0=0.0, keep_best=True)
    LearningCurve.on_train_begin(fake, None, SimpleNamespace(global_step=10), None)
    assert [p["step"] for p in fake.points] == [0, 10]
    assert fake.best == {"step": 10, "reward": 0.6, "stale": True}
    assert LearningCurve.restore_best(fake, None) is None
