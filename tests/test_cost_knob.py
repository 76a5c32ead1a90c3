"""The cost knob: a route bias on the tokens that choose a costlier model, `rl-router calibrate`
(bisection to a target strong-call share or cost), eval's router curve with APGR intervals,
and serve / export carrying the calibrated setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rl_router.evaluation.calibration import bisect_bias, read_route_bias
from rl_router.frontier import apgr
from rl_router.rollout.route_bias import RouteBiasProcessor, committing_tokens, cost_weights, decision_state
from rl_router.stats import curve_apgr_values, resample_index

BIN = str(Path(sys.executable).with_name("rl-router"))
MODELS = ("gpt-4-1106", "mixtral-8x7b")


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "RL_ROUTER_NO_PROGRESS": "1"}
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "text, state",
    [
        ('<think>hm</think><route model="', ("", "")),
        ("<think>hm</think><route mod", ('el="', "")),
        ('<route model="gpt', ("", "gpt")),
        ('<route model="gpt-4-1106', None),  # the name is complete: nothing left to choose
        ('<route model="gpt-4-1106">Solve', None),
        ('<route model="llama', None),  # not a pool name
        ("<think>Route to", (" ", "")),
        ('{"name": "route", "arguments": {"model": "', ("", "")),
        ("<think>no header here</think>", None),
        ('<route model="mixtral-8x7b">q</route><information>x</information><think>Route to', (" ", "")),  # the last header counts
    ],
)
def test_decision_state(text, state):
    assert decision_state(text, MODELS) == state


def test_committing_tokens_choose_one_model_each(tokenizer):
    commits = committing_tokens(tokenizer, MODELS, "", "")
    assert set(commits) == set(MODELS)
    for m, ids in commits.items():
        for i in ids:
            s = tokenizer.decode([i])
            assert m.startswith(s) or s.startswith(m + '"'), (m, s)
    # a header still to finish: only tokens that finish it and start a name commit
    rest = committing_tokens(tokenizer, MODELS, '"', "")
    assert all(tokenizer.decode([i]).startswith('"') and len(tokenizer.decode([i])) > 1 for ids in rest.values() for i in ids)


def test_cost_weights_order_models_by_price(recorded_pool):
    w = cost_weights(recorded_pool)
    assert w == {"mixtral-8x7b": 0.0, "gpt-4-1106": 1.0}


def test_bias_flips_the_greedy_choice_of_a_random_router(tokenizer):
    """An untrained router at a route header: a large positive bias makes its next token commit
    to the costliest model, a large negative one to the cheapest (inside a name only pool
    names are allowed while the knob is on); bias 0 leaves the logits as they are."""
    import torch

    from rl_router.tiny import build_tiny_router

    model, _ = build_tiny_router(seed=3, hidden_size=32, num_layers=1)
    model.eval()
    ids = torch.tensor([tokenizer.encode('<think>pick</think><route model="', add_special_tokens=False)])
    weights = {"mixtral-8x7b": 0.0, "gpt-4-1106": 1.0}
    commits = committing_tokens(tokenizer, MODELS, "", "")
    strong_ids, cheap_ids = set(commits["gpt-4-1106"]), set(commits["mixtral-8x7b"])
    with torch.no_grad():
        base = model(ids).logits[:, -1, :]
    for bias, want in ((100.0, strong_ids), (-100.0, cheap_ids)):
        proc = RouteBiasProcessor(tokenizer, weights, bias, start=0)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, logits_processor=[proc], pad_token_id=tokenizer.pad_token_id)
        assert out[0, ids.shape[1]].item() in want
        name = tokenizer.decode(out[0, ids.shape[1]:])
        assert name.startswith("gpt-4-1106" if bias > 0 else "mixtral-8x7b"), name  # the whole name, spelled as the pool's
        assert proc.decisions == 1
    zero = RouteBiasProcessor(tokenizer, weights, 0.0, start=0)
    assert torch.equal(zero(ids, base.clone()), base)
    # +5 lands only on the strong model's committing tokens; the cheap model's keep their
    # logits; tokens that start no pool name are ruled out
    moved = RouteBiasProcessor(tokenizer, weights, 5.0, start=0)(ids, base.clone())
    assert torch.allclose(moved[0, sorted(strong_ids)], base[0, sorted(strong_ids)] + 5.0)
    assert torch.equal(moved[0, sorted(cheap_ids)], base[0, sorted(cheap_ids)])
    assert torch.isinf(moved[0, tokenizer.encode("Solve", add_special_tokens=False)[0]])
    # prompt text before `start` is never a decision: the header is in the prompt, not the turn
    assert torch.equal(RouteBiasProcessor(tokenizer, weights, 5.0, start=ids.shape[1])(ids, base.clone()), base)


def test_bisect_finds_the_closest_setting_and_says_when_unreachable():
    step = lambda b: float(np.clip(np.floor(b) / 10 + 0.5, 0, 1))  # noqa: E731  (monotone, stepped)
    bias, tried, note = bisect_bias(step, 0.3, lo=-8, hi=8, iters=8)
    assert note is None and abs(step(bias) - 0.3) == min(abs(v - 0.3) for _, v in tried) and abs(step(bias) - 0.3) < 1e-9
    bias, _tried, note = bisect_bias(lambda b: 0.2, 0.9, lo=-8, hi=8)
    assert bias in (-8, 8) and "at or above" in note
    # a decision that flips between two tried biases: the bracket is named, not hidden by a tie
    bias, _tried, note = bisect_bias(lambda b: float(b > 5.0), 0.5, lo=-32, hi=32, iters=3)
    assert "lies between bias 0 (0) and 8 (1)" in note


def test_curve_apgr_is_the_closed_curve_area_and_the_line_is_one_half():
    """APGR closes every curve with the always-cheapest and always-best points and averages
    over the costs between them: the random line is exactly 0.5, and a curve that stops short
    of an end is no longer held flat there (the old [0, c_max] area credited it)."""
    rng = np.random.default_rng(0)
    n = 200
    cheap = {"quality": rng.integers(0, 2, n).astype(float), "cost": np.full(n, 0.001)}
    strong = {"quality": np.maximum(cheap["quality"], rng.integers(0, 2, n)), "cost": np.full(n, 0.01)}
    mid = {"quality": np.where(rng.random(n) < 0.5, strong["quality"], cheap["quality"]), "cost": np.where(rng.random(n) < 0.5, 0.01, 0.001)}
    idx = resample_index(n, 300)
    pts = [cheap, mid, strong]
    v = curve_apgr_values(pts, cheap, strong, idx)
    curve = [(float(np.mean(p["cost"])), float(np.mean(p["quality"]))) for p in pts]
    assert v[0] == pytest.approx(apgr(curve, curve[0], curve[2]), abs=1e-9)
    line = curve_apgr_values([cheap, strong], cheap, strong, idx)
    assert line[0] == pytest.approx(0.5, abs=1e-9) and np.nanmax(np.abs(line - 0.5)) < 1e-9
    assert np.isfinite(v).all() and v.std() > 0
    # closing: the mid point alone is a curve that reaches neither end; closed, its area is
    # that of the polyline cheap -> mid -> best
    alone = curve_apgr_values([mid], cheap, strong, idx)
    assert alone[0] == pytest.approx(v[0], abs=1e-9)


def test_calibrate_eval_curve_export_and_serve_carry_the_bias(tmp_path, quickstart_run):
    run_dir = tmp_path / "run"
    shutil.copytree(quickstart_run.out / "final", run_dir / "final")
    shutil.copy(quickstart_run.out / "recipe.json", run_dir / "recipe.json")

    # the quickstart has no validation split: the error names the field and the fix
    p = run("calibrate", str(run_dir), "--target-strong-share", "0.5")
    assert p.returncode == 2 and "data.validation_fraction" in p.stdout + p.stderr

    p = run("calibrate", str(run_dir), "--target-strong-share", "0.5", "--split", "train", "--n", "48", "--iters", "4")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rec = read_route_bias(run_dir / "final")
    tried = {t["route_bias"]: t for t in rec["tried"]}
    assert len(tried) == 6 and rec["tasks"] == 48
    assert tried[-32.0]["strong_share"] < 0.5 <= tried[32.0]["strong_share"]  # the knob spans the target
    assert tried[-32.0]["mean_cost"] < tried[32.0]["mean_cost"]
    best = min(abs(t["strong_share"] - 0.5) for t in rec["tried"])
    assert abs(rec["achieved"]["strong_share"] - 0.5) == best

    out = tmp_path / "ev"
    p = run("eval", str(run_dir), "--no-sampled", "--n", "48", "--curve-biases", "-32,32", "--output-dir", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["route_bias"] == rec["route_bias"]
    biases = [k["route_bias"] for k in ev["knob_sweep"]]
    assert biases == sorted({-32.0, 32.0, rec["route_bias"]})
    lo, hi = ev["knob_sweep"][0], ev["knob_sweep"][-1]
    assert lo["strong_share"] < hi["strong_share"] and lo["mean_cost"] < hi["mean_cost"]
    sc = ev["scores"]["router knob sweep"]
    assert sc["apgr_ci95"][0] <= sc["apgr"] + 1e-6 and set(sc["apgr_minus"]) == {"knn-tfidf sweep", "per-category sweep", "single-model hull"}
    assert "APGR router knob sweep minus knn-tfidf sweep" in p.stdout
    # the knob at the calibrated bias on these tasks is what the router rows report
    at_cal = next(k for k in ev["knob_sweep"] if k["route_bias"] == rec["route_bias"])
    assert at_cal["mean_cost"] == pytest.approx(ev["policies"]["router (greedy)"]["mean_cost"])

    exp = tmp_path / "export"
    p = run("export", str(run_dir), "--repo-id", "acme/knob", "--out", str(exp), "--eval-json", str(out / "eval.json"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert read_route_bias(exp)["route_bias"] == rec["route_bias"]
    assert json.loads((exp / "router_config.json").read_text())["cost_knob"]["route_bias"] == rec["route_bias"]
    assert f"Calibrated route bias **{rec['route_bias']:+g}**" in (exp / "README.md").read_text()

    from rl_router.serving.router_server import server_from_checkpoint

    srv = server_from_checkpoint(str(exp), port=0)
    assert srv.route_bias == rec["route_bias"] and srv.route_weights == {"mixtral-8x7b": 0.0, "gpt-4-1106": 1.0}
    assert server_from_checkpoint(str(exp), port=0, route_bias=0.0).route_bias == 0.0
