"""Training: boundary runs, boundary-guided SFT warm start, GRPO / RLOO / BoPO on TRL, and the
`train` pipeline that chains them (imported lazily: TRL is heavy)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train": "rl_router.training.pipeline",
    "RouterGRPOTrainer": "rl_router.training.trainer",
    "PolicyTokenSFTTrainer": "rl_router.training.sft",
    "BoPOReward": "rl_router.training.boundary",
    "run_boundaries": "rl_router.training.boundary",
    "synthesize_sft": "rl_router.training.boundary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rl_router.training' has no attribute {name!r}")
