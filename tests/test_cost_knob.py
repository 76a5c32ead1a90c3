"""The cost knob, decided once by name (rollout/names.py): a threshold on the router's log-odds
between model names for any tokenizer and any names, `rl-router calibrate` (two passes to a
target strong-call share or cost), eval's one-pass router curve with APGR intervals, and serve /
export carrying the calibrated setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rl_router.evaluation.calibration import GRID, read_route_bias, search_bias
from rl_router.frontier import apgr
from rl_router.rollout.names import STEMS, allowed_sets, continuation, cost_weights, stem_at_end
from rl_router.stats import curve_apgr_values, resample_index

BIN = str(Path(sys.executable).with_name("rl-router"))
MODELS = ("gpt-4-1106", "mixtral-8x7b")


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "RL_ROUTER_NO_PROGRESS": "1"}
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env)


PREFIXED = ("gpt-4o", "gpt-4o-mini")  # names that share a prefix: the old token-level knob never fired on them
LLAMAS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")


@pytest.mark.parametrize("text, stem", [
    ('<think>hm</think><route model="', '<route model="'),
    ("<think>Route to", None),  # free text: the router's own to write
    ('{"name": "route", "arguments": {"model": "', '"model": "'),
    ("<think>ok</think><answer>@", "<answer>@"),
    ('<route model="gpt', None),
    ("<think>no stem here</think>", None),
])
def test_decision_stems(text, stem):
    hit = stem_at_end(text)
    assert (hit[0] if hit else None) == stem


@pytest.mark.parametrize("names", [MODELS, PREFIXED, LLAMAS])
def test_every_name_is_a_continuation_at_every_stem(tokenizer, names):
    for stem, tmpl, _kind in STEMS:
        conts = [continuation(tokenizer, stem, tmpl.format(name=n)) for n in names]
        assert all(conts), (stem, names)
        assert len({tuple(c) for c in conts}) == len(names)  # distinct sequences, each with its closer


def test_cost_weights_order_models_by_price(recorded_pool):
    w = cost_weights(recorded_pool)
    assert w == {"mixtral-8x7b": 0.0, "gpt-4-1106": 1.0}


def decision_at(model, tok, context: list[int], stem: str, names: tuple[str, ...], weights: dict, bias: float, direct_scores: bool = True):
    """The policy's decision where a turn has just written `stem`, and each name's log-prob
    under the name distribution computed independently (a plain forward over context + stem +
    name, no cache; at each position the log-softmax over the tokens that continue some name).
    `direct_scores=False` skips the independent forwards (a caller that only reads the choice)."""
    import torch

    from rl_router.rollout.decoder import RowTurn, Session
    from rl_router.rollout.policies import HFPolicy
    from rl_router.rollout.state import EpisodeState

    stem_ids = tok.encode(stem, add_special_tokens=False)
    sess = Session(model, tok.pad_token_id)
    sess.sync([0], [context + stem_ids])
    pol = HFPolicy(model, tok, temperature=0.0, route_weights=weights, names=list(names), route_bias=bias)
    turn = RowTurn(text=stem)
    st = EpisodeState(task=None, env=None, prompt_ids=context)
    pol._decide(sess, [0], [turn], [{"state": st, "biases": (bias,)}])
    d = turn.decisions[0]
    tmpl = next(t for s_, t, _k in STEMS if s_ == stem)
    conts = {n: continuation(tok, stem, tmpl.format(name=n)) for n in names}
    within = allowed_sets(conts)
    direct = []
    for n in names if direct_scores else ():
        cont = conts[n]
        ids = torch.tensor([context + stem_ids + cont])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        start = len(context) + len(stem_ids)
        direct.append(float(sum(logits[start + k - 1, t] - torch.logsumexp(logits[start + k - 1, within[n][k]], -1) for k, t in enumerate(cont))))
    return d, direct, turn


@pytest.mark.parametrize("names", [PREFIXED, LLAMAS])
def test_the_knob_is_a_threshold_on_the_routers_log_odds(tokenizer, names):
    """At a decision every name is scored as a teacher-forced continuation (the cached batched
    scores equal a plain forward), and the choice is argmax log p(name) + B w(name): it flips
    exactly where B crosses the log-odds over the price gap, for names that share a prefix and
    for three names; the chosen name's tokens are forced, spelled as the pool's."""
    from rl_router.tiny import build_tiny_router

    model, _ = build_tiny_router(seed=3, hidden_size=32, num_layers=1)
    model.eval()
    context = tokenizer.encode("<|im_start|>assistant\n<think>pick</think>", add_special_tokens=False)
    weights = {n: i / (len(names) - 1) for i, n in enumerate(names)}
    d, direct, turn = decision_at(model, tokenizer, context, '<route model="', names, weights, 0.0)
    assert d["names"] == list(names) and np.allclose(d["scores"], direct, atol=1e-4)
    s = dict(zip(names, d["scores"]))
    assert d["choice"] == max(names, key=lambda n: s[n])
    assert tokenizer.decode(turn.forced) == f'{d["choice"]}">'
    cheap, dear = names[0], names[-1]
    flip = (s[cheap] - s[dear]) / (weights[dear] - weights[cheap])  # B at which dear's score reaches cheap's
    lo, _, _ = decision_at(model, tokenizer, context, '<route model="', (cheap, dear), weights, flip - 0.05)
    hi, _, _ = decision_at(model, tokenizer, context, '<route model="', (cheap, dear), weights, flip + 0.05)
    assert (lo["choice"], hi["choice"]) == (cheap, dear)
    assert decision_at(model, tokenizer, context, '<route model="', names, weights, 100.0)[0]["choice"] == dear
    assert decision_at(model, tokenizer, context, '<route model="', names, weights, -100.0)[0]["choice"] == cheap
    tool = decision_at(model, tokenizer, context, '"model": "', names, weights, 0.0)
    assert np.allclose(tool[0]["scores"], tool[1], atol=1e-4)  # the tool-call stem too


def test_search_finds_the_closest_setting_and_describes_the_one_it_returns():
    step = lambda b: float(np.clip(np.floor(b) / 10 + 0.5, 0, 1))  # noqa: E731  (monotone, stepped)
    calls = []

    def measure(bs):
        calls.append(len(bs))
        return {b: step(b) for b in bs}

    bias, tried, note = search_bias(measure, 0.3, refine=8)
    assert abs(step(bias) - 0.3) < 1e-9 and len(calls) == 2  # two passes: the grid, then the bracket
    bias, _tried, note = search_bias(lambda bs: {b: 0.2 for b in bs}, 0.9)
    assert f"bias {bias:g} is the closest setting" in note and "above what the router does at any bias" in note
    bias, _tried, note = search_bias(lambda bs: {b: float(b > 5.0) for b in bs}, 0.5, refine=0)
    assert "lies between bias 4 (0) and 6 (1)" in note


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


def test_calibrate_eval_curve_export_and_serve_carry_the_bias(tmp_path, gsm8k_run):
    run_dir = tmp_path / "run"
    shutil.copytree(gsm8k_run.out / "final", run_dir / "final")
    shutil.copy(gsm8k_run.out / "recipe.json", run_dir / "recipe.json")

    # the GSM8K recipe has no validation split: the error names the field and the fix
    p = run("calibrate", str(run_dir), "--target-strong-share", "0.5")
    assert p.returncode == 2 and "data.validation_fraction" in p.stdout + p.stderr

    p = run("calibrate", str(run_dir), "--target-strong-share", "0.5", "--split", "train", "--n", "48", "--iters", "4")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rec = read_route_bias(run_dir / "final")
    tried = {t["route_bias"]: t for t in rec["tried"]}
    assert len(GRID) <= len(tried) <= len(GRID) + 4 and rec["tasks"] == 48  # the grid, then 4 inside the bracket
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


def test_calibrate_reaches_a_target_on_a_pool_whose_names_share_a_prefix(tmp_path):
    """The recorded GSM8K pool with its two models renamed gpt-4o-mini (Mixtral's answers and
    prices) and gpt-4o (GPT-4's): a tiny router warm-started on those names is calibrated to a
    strong-call share and lands on it (the token-level knob this replaced never fired here)."""
    pool = json.dumps({"type": "recorded", "datasets": ["gsm8k"], "models": {
        "gpt-4o-mini": {"column": "mistralai/Mixtral-8x7B-Instruct-v0.1", "price_in": 0.6, "price_out": 0.6},
        "gpt-4o": {"column": "gpt-4-1106-preview", "price_in": 10, "price_out": 30}}})
    out = tmp_path / "run"
    p = run("train", str(Path(__file__).resolve().parents[1] / "recipes" / "gsm8k.yaml"), "--output-dir", str(out), "--set", f"pool={pool}", "--set", "trainer.max_steps=1", "--set", "sft.max_steps=50", "--set", "algorithm.sft_examples=400", "--set", "data.max_heldout=24")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    p = run("calibrate", str(out), "--target-strong-share", "0.5", "--split", "train", "--n", "64", "--iters", "6")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rec = read_route_bias(out / "final")
    shares = [t["strong_share"] for t in rec["tried"]]
    assert min(shares) == 0.0 and max(shares) == 1.0  # the knob spans all-cheap to all-strong on these names
    assert abs(rec["achieved"]["strong_share"] - 0.5) <= 0.1, rec
