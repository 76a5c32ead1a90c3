"""Training under two real processes (torchrun, gloo on CPU) vs one process, same global batch.

The BoPO agentic recipe trains end to end under 2 processes: SFT with DDP, RL with groups
gathered across ranks before advantages, ranks kept in step per turn, held-out evaluations
and boundary runs sharded (each pool call once), files written once by rank 0, every rank's
RNG state in every checkpoint. Its learning moves the same way as the 1-process run's (the
session's `bopo_run`): from a mostly-cheap warm start, RL teaches both to escalate hard steps,
so held-out cost and success both rise, and both end above the boundaries' mixture.
(Per-step curves are printed; with 16 sampled episodes a step they are too noisy to compare
point by point.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import BOPO_SETS, free_port

from rl_router.frontier import above, point, random_mixture


ROOT = Path(__file__).resolve().parents[1]


def _two_processes(out: Path) -> tuple[dict, str]:
    # the same global batches as one process: SFT 8 sequences per step, RL 16 episodes (4 groups of 4) per step
    # and the RL loss in pieces of at most 1200 tokens (as many on both ranks), which must train as the whole micro-batches do
    per_dev = ["sft.per_device_train_batch_size=4", "trainer.per_device_train_batch_size=8", "algorithm.microbatch_tokens=1200"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    port = free_port()
    launch = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "rl_router.cli"]
    sets = [a for s in BOPO_SETS + per_dev for a in ("--set", s)]
    p = subprocess.run([*launch, "train", "recipes/bopo_agentic.yaml", "--output-dir", str(out), *sets], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), p.stdout


def test_two_processes_train_like_one(tmp_path, bopo_run):
    _, one = bopo_run
    two, stdout = _two_processes(tmp_path / "two")
    assert stdout.count("held-out reward") == 1 and stdout.count("running boundary policies") == 1  # rank 0 speaks
    assert two["global_step"] == one["global_step"] == 16 and two["algorithm"] == "bopo"
    logged = [h for h in two["log_history"] if "reward" in h]
    assert [h["step"] for h in logged] == list(range(1, 17)) and all("advantage/bopo_mean_abs" in h for h in logged)
    pieces = [h["loss/pieces"] for h in logged if "loss/pieces" in h]
    print(f"\nloss pieces per micro-batch, per step: {pieces}")
    assert pieces and max(pieces) > 1  # the budget did split micro-batches
    assert two["rl_episodes"] == one["rl_episodes"] == 16 * 16  # both ranks' episodes counted
    # 16 episodes a step over 2 ranks: TRL counts tokens of both ranks' episodes
    assert (tmp_path / "two" / "final" / "model.safetensors").exists() and not list((tmp_path / "two").rglob("*.tmp"))
    for ck in ("checkpoint-8", "checkpoint-16"):
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (tmp_path / "two" / "rl" / ck).iterdir()}
    # sharded evaluation of scripted baselines gives exactly the 1-process numbers
    strip = lambda d: {k: {f: v for f, v in s.items() if f != "pool_latency_s"} for k, s in d.items()}  # noqa: E731
    assert strip(two["heldout_baselines"]) == strip(one["heldout_baselines"])
    assert two["boundary_classes"] == one["boundary_classes"]
    shapes = {}
    for name, m in (("1 process", one), ("2 processes", two)):
        b = m["heldout_baselines"]
        line = random_mixture(point(b["always-cheap"]), point(b["always-expensive"]))
        a, w = m["heldout_after"], m["heldout_after_sft"]
        shapes[name] = (w, a, above(point(a), line))
        print(f"\n{name}: sampled $/1k per step {[round(1000 * h['episode/cost'], 2) for h in m['log_history'] if 'reward' in h]}; "
              f"held-out warm start {w['quality']:.3f} @ ${1000 * w['mean_cost']:.3f} -> RL {a['quality']:.3f} @ ${1000 * a['mean_cost']:.3f} ({shapes[name][2]:+.3f} vs mixture)")
    for name, (w, a, gap) in shapes.items():
        assert a["mean_cost"] > w["mean_cost"] and a["quality"] > w["quality"], name  # learned to escalate, and it paid
        assert a["reward"] > w["reward"], name
        assert gap > 0.0, name  # ends above the boundary mixture


def test_two_processes_take_scripted_names_weights_from_the_loss_like_one(tmp_path, gsm8k_run):
    """Scripted all-names episodes with the weights read from the loss
    (`algorithm.all_names_weights_in_loss`, training/names_in_loss.py) under 2 gloo processes:
    every step defers its advantages to the loss on both ranks (each rank's loss pieces hold whole
    groups, and the check that they do is a collective both ranks make), and two RL steps from
    the GSM8K router move the weights as one process moves them on the same global batches (the
    same 8 groups of the pool's two names a step, 4 per rank)."""
    import torch
    from safetensors.torch import load_file

    warm = gsm8k_run.out / "final"
    sets = [f"model.name_or_path={warm}", "algorithm.sft_warmstart=false", "rollout.decisions=names", "algorithm.advantage=all_names", "algorithm.all_names_weights=mirror",
            "algorithm.all_names_episodes=scripted", "algorithm.prompt_gradient=false", "algorithm.all_names_weights_in_loss=true", "algorithm.trim_padding=true",
            "algorithm.microbatch_tokens=1000", "trainer.num_generations=2", "trainer.max_steps=2", "trainer.save_steps=2", "trainer.learning_rate=1e-3",
            "data.max_heldout=8", "data.max_heldout_initial=8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RL_ROUTER_NO_PROGRESS": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    runs = {}
    for n, per_dev in ((1, 16), (2, 8)):
        out = tmp_path / f"p{n}"
        cmd = [str(Path(sys.executable).with_name("rl-router"))] if n == 1 else [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                                                                                  "--master_port", str(free_port()), "-m", "rl_router.cli"]
        p = subprocess.run([*cmd, "train", "recipes/gsm8k.yaml", "--output-dir", str(out), *(a for s in sets + [f"trainer.per_device_train_batch_size={per_dev}"] for a in ("--set", s))],
                           cwd=ROOT, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        m = json.loads((out / "metrics.json").read_text())
        logged = [h for h in m["log_history"] if "reward" in h]
        assert [h["step"] for h in logged] == [1, 2] and all(h.get("advantage/deferred_to_loss") == 1.0 for h in logged), logged
        runs[n] = load_file(str(out / "final" / "model.safetensors"))
    start = load_file(str(warm / "model.safetensors"))
    moved = sum(float((runs[1][k] - start[k]).float().norm()) ** 2 for k in start) ** 0.5
    apart = sum(float((runs[2][k] - runs[1][k]).float().norm()) ** 2 for k in start) ** 0.5
    print(f"\nweights moved {moved:.4g} by 1 process; 2 processes' end {apart:.4g} from it")
    assert moved > 0 and apart < 0.05 * moved
    assert set(runs[2]) == set(start) and all(torch.isfinite(v).all() for v in runs[2].values())
