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


def process_state() -> Any:
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)
