"""Checkpoints under two processes (gloo on CPU): every rank's RNG state lands in every kept
checkpoint, and a run resumes from one.

The race this guards: each rank writes `rng_state_{rank}.pth` into the staging folder, and
rank 0 then renames the folder into place. If rank 0 renames before the other ranks finish
writing, their RNG files land in a recreated, orphaned staging folder. The test makes the
slow rank deterministic: rank 1 writes its RNG state only once rank 0 has reached the
checkpoint's barrier (a file rank 0 touches there), the latest moment a correct
implementation allows.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.multiprocessing as mp
from conftest import free_port


def _worker(rank: int, port: int, out_dir: str, max_steps: int, resume: bool, result: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TRL_EXPERIMENTAL_SILENCE="1")
    from datasets import Dataset
    from trl import GRPOConfig

    from rl_router.tiny import build_tiny_router, load_tiny_tokenizer
    from rl_router.training.trainer import RouterGRPOTrainer

    tok = load_tiny_tokenizer()
    signal = Path(out_dir) / "rank0_at_checkpoint_barrier"

    def rollout(prompts, trainer):
        out = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
        for p in prompts:
            ids = tok('<think>a</think><route model="m">q</route>')["input_ids"]
            out["prompt_ids"].append(tok(p)["input_ids"])
            out["completion_ids"].append(ids)
            out["logprobs"].append([-1.0] * len(ids))
            out["env_mask"].append([1] * len(ids))
        return out

    model, _ = build_tiny_router(seed=0, hidden_size=32, num_layers=1)
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=2, num_generations=2, max_steps=max_steps, learning_rate=1e-3, beta=0.0,
        bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="steps", save_steps=1, max_completion_length=32,
        gradient_checkpointing=False, seed=0,
    )
    ds = Dataset.from_list([{"prompt": f"question {i}"} for i in range(8)])
    trainer = RouterGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [float(i % 2) for i in range(len(completions))]], args=args, train_dataset=ds, processing_class=tok, rollout_func=rollout)
    if rank == 0:
        inner = trainer.accelerator.wait_for_everyone

        def wait_for_everyone():
            if sys._getframe(1).f_code.co_name == "_save_checkpoint":
                signal.write_text(str(trainer.state.global_step))
            inner()

        trainer.accelerator.wait_for_everyone = wait_for_everyone
    else:
        save = trainer._save_rng_state

        def slow_save(output_dir):
            while not (signal.exists() and signal.read_text() == str(trainer.state.global_step)):
                time.sleep(0.01)  # waits for a fact (rank 0 at the barrier), asserts nothing on time
            save(output_dir)

        trainer._save_rng_state = slow_save
    ck = None
    if resume:
        ck = str(sorted(Path(out_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1])
    trainer.train(resume_from_checkpoint=ck)
    result[rank] = trainer.state.global_step


def _run(out: Path, max_steps: int, resume: bool) -> dict:
    port = free_port()
    result = mp.Manager().dict()
    mp.spawn(_worker, args=(port, str(out), max_steps, resume, result), nprocs=2, join=True)
    return dict(result)


def test_every_rank_rng_state_is_in_every_checkpoint_and_resume_works(tmp_path):
    assert _run(tmp_path, 2, False) == {0: 2, 1: 2}
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert kept == ["checkpoint-1", "checkpoint-2"]
    for name in kept:
        files = {p.name for p in (tmp_path / name).iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "optimizer.pt"} <= files, (name, files)
    assert not (tmp_path / ".staging").exists()  # nothing orphaned
    assert _run(tmp_path, 3, True) == {0: 3, 1: 3}
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (tmp_path / "checkpoint-3").iterdir()}
