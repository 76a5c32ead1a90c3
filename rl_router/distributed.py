"""The process state every multi-process code path shares (accelerate's `PartialState`).

Why a helper: accelerate decides once, at the first `PartialState(...)` of a process, whether
it runs distributed, and on a machine without GPUs it joins the process group (gloo) only
when that first call says `cpu=True`. A bare `PartialState()` there silently runs every rank
as a lone single process: each rank then evaluates everything, writes every file and trains
on its own. So rl-router creates the state here first, before TRL's configs do.

Launching several CPU processes: `torchrun --nproc_per_node 2 -m rl_router.cli train ...`
(or `accelerate launch --multi_gpu --num_processes 2 -m rl_router.cli ...`, which uses
torchrun underneath). Note `accelerate launch --cpu --num_processes 2` starts ONE process.
"""

from __future__ import annotations

import os
from typing import Any


_LEAVE_REGISTERED = False


def process_state() -> Any:
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=cpu)
    _leave_group_at_exit()
    return state


def _leave_group_at_exit() -> None:
    """Destroy the process group when the process exits normally. Why: left to the interpreter's
    teardown, gloo's background threads can be destroyed while still joinable, and the process
    then aborts ("terminate called without an active exception", SIGABRT) after its work is
    done: a finished distributed command exiting non-zero. Seen once in CI on a 2-rank test."""
    global _LEAVE_REGISTERED
    if _LEAVE_REGISTERED:
        return
    import atexit

    def leave() -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(leave)
    _LEAVE_REGISTERED = True
