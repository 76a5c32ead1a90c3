"""A training run's output folder as a record of finished stages and the settings each was made with.

Why: a stage's files (held-out evals, boundary outcomes, the warm start, RL checkpoints) may
be reused only when they were made with the settings the run now has. `OUT/stages.json`
records, per finished stage, the recipe fields it depends on; a run into a folder that
already holds stages must say `--resume`, and `--resume` with a changed field that a stage
depends on stops with the fields that differ, instead of mixing a 16-task eval with a
187-task one or loading weights trained with another learning rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rl_router.errors import ConfigError

#: the recipe fields (dotted paths into Recipe.to_dict()) each stage's output depends on
_TASKS = ["pool", "env", "data", "model.name_or_path", "rollout.max_completion_tokens"]
_BOUNDARIES = [*_TASKS, "algorithm.cheap_model", "algorithm.strong_model", "algorithm.sft_style", "algorithm.sft_mix", "algorithm.cascade_models"]
_WARM_START = [*_BOUNDARIES, "model", "algorithm.sft_warmstart", "algorithm.sft_examples", "algorithm.neither_rate", "algorithm.strong_only_share", "sft"]
STAGE_FIELDS: dict[str, list[str]] = {
    "baselines": [*_TASKS, "rewards"],
    "eval_before": [*_TASKS, "rewards", "model", "rollout"],
    "boundaries": _BOUNDARIES,
    "warm_start": _WARM_START,
    "eval_after_sft": [*_WARM_START, "rewards", "rollout"],
    "rl": ["*"],
}
#: trainer fields a resumed RL stage may change (how long to train, how to log and save)
RESUMABLE = {"trainer.max_steps", "trainer.save_steps", "trainer.logging_steps", "trainer.report_to", "trainer.save_total_limit", "algorithm.rl_minutes", "output_dir"}
#: each stage's output, relative to OUT
ARTIFACTS = {
    "baselines": "eval_baselines.json", "eval_before": "eval_before.json", "boundaries": "boundaries.json",
    "warm_start": "sft/config.json", "eval_after_sft": "eval_after_sft.json", "rl": "rl",
}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _select(flat: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    if fields == ["*"]:
        return {k: v for k, v in flat.items() if k not in RESUMABLE}
    return {k: v for k, v in flat.items() if any(k == f or k.startswith(f + ".") for f in fields)}


class RunFolder:
    def __init__(self, out: Path, recipe_dict: dict[str, Any], *, resume: bool, main: bool = True):
        self.out, self.resume, self.main = out, resume, main
        from rl_router.redact import redact_obj

        self.flat = _flatten(json.loads(json.dumps(redact_obj(recipe_dict), default=str)))  # JSON types, as stored; never a credential
        self.path = out / "stages.json"
        self.done: dict[str, dict[str, Any]] = self._load() if self.path.exists() else {}

    def _load(self) -> dict[str, dict[str, Any]]:
        from rl_router.parsing import read_json

        fix = f"{self.path} is damaged: start a new --output-dir (the stages cannot be trusted without it)"
        done = read_json(self.path, "--resume", fix=fix)
        if not isinstance(done, dict) or not all(isinstance(v, dict) for v in done.values()):
            raise ConfigError("--resume", f"{self.path} is not a record of stages", fix)
        return done

    def has(self, stage: str) -> bool:
        p = self.out / ARTIFACTS[stage]
        return p.is_dir() and any(p.glob("checkpoint-*")) if stage == "rl" else p.exists()

    def check(self) -> None:
        """Before anything runs: stages already in the folder are reusable, or stop now."""
        present = [s for s in STAGE_FIELDS if self.has(s)]
        if not present:
            return
        if not self.resume:
            raise ConfigError(
                "--output-dir", f"{self.out} already holds stages of an earlier run ({', '.join(present)})",
                "pass --resume to continue that run with the same settings, or choose a new --output-dir (nothing was changed)")
        for stage in present:
            rec = self.done.get(stage)
            if rec is None:
                raise ConfigError("--resume", f"{self.out / ARTIFACTS[stage]} has no record of the settings it was made with ({self.path} lacks '{stage}')", "start a new --output-dir")
            now = _select(self.flat, STAGE_FIELDS[stage])
            diff = sorted(k for k in set(rec) | set(now) if rec.get(k) != now.get(k))
            if diff:
                shown = "; ".join(f"{k}: {rec.get(k)!r} then, {now.get(k)!r} now" for k in diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
                raise ConfigError("--resume", f"the {stage} stage in {self.out} was made with other settings ({shown})", "resume with the settings it was made with, or start a new --output-dir")

    def reuse(self, stage: str) -> bool:
        """True when this stage's output is there and (checked) reusable."""
        return self.resume and self.has(stage) and stage in self.done

    def fields_of(self, stage: str) -> dict[str, Any]:
        return _select(self.flat, STAGE_FIELDS[stage])

    def started(self, stage: str) -> None:
        """Record a long stage's settings when it starts (its own checkpoints may then resume)."""
        self._record(f"{stage}_started")

    def finished(self, stage: str) -> None:
        self._record(stage)

    def _record(self, key: str) -> None:
        self.done[key] = _select(self.flat, STAGE_FIELDS[key.removesuffix("_started")])
        if self.main:
            from rl_router.owned import atomic_write

            atomic_write(self.path, json.dumps(self.done, indent=1, default=str))
