"""The RL stage watched on tasks it never trains on: the learning curve and the kept checkpoint.

Every `curve.every_steps` RL steps (and at step 0: the warm start RL begins from) the router is
evaluated greedily, with the decoder the final evaluation uses, on

- the first `curve.heldout_n` held-out tasks: quality, cost, reward and the distance above the
  single-model hull with its 95% interval (paired over those tasks with the single models'
  episodes from the baselines stage): the curve `training_curves.png` draws and metrics.json
  keeps. It is reported, never used to choose anything;
- `curve.validation_n` validation tasks (`data.validation_fraction`: train tasks set aside
  before training): their mean reward under the recipe's own reward picks the checkpoint kept
  as the final router when `curve.keep_best` (so a run may be as long as a user likes, and
  what it ships is its best point by tasks it did not train on).

`algorithm.rl_minutes` (`train --minutes`) stops RL after that many minutes of RL (its curve
included; counted from when RL begins, again from zero in a resumed run), at the next step, on
every rank at once (rank 0 decides); the curve takes one last point there. Points are written to
OUT/curve.json as they come, so a resumed run keeps its curve up to the checkpoint it resumes
from (later points belonged to the abandoned continuation and are dropped, and a router kept from
them is not used); the kept weights are OUT/best/ (rank 0 writes, every rank loads).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rl_router.stats import resample_index


class LearningCurve(TrainerCallback):
    def __init__(self, run: Any, *, every: int, heldout_n: int, validation: list[Any], keep_best: bool, minutes: float | None):
        from rl_router.evaluation.evaluator import EvalOptions, Evaluator

        self.run, self.every, self.keep_best = run, int(every), bool(keep_best)
        self.held = run.held[: max(0, int(heldout_n))]
        self.validation = list(validation)
        self.val_eval = None
        if self.validation:
            self.val_eval = Evaluator(run.recipe, run.pool, run.tok, self.validation, options=EvalOptions(batch_size=run.recipe.rollout.batch_size))
            self.val_eval.set_cost_reference(run.evaluator.cost_reference or [])
        self.minutes = float(minutes) if minutes else None
        self.t0 = time.perf_counter()  # reset when RL begins (on_train_begin)
        self.path = run.out / "curve.json"
        self.best_dir = run.out / "best"
        saved = json.loads(self.path.read_text()) if run.folder.resume and self.path.exists() else {}
        self.points: list[dict[str, Any]] = list(saved.get("points", []))
        self.best: dict[str, Any] | None = saved.get("best")
        self._refs = self._idx = None

    # ---- what one point measures -------------------------------------------------------------
    def _references(self) -> Any:
        """The single models on the curve's held-out tasks (the first n of the baselines')."""
        if self._refs is None and self.held:
            from rl_router.evaluation.comparisons import references

            n = len(self.held)
            single = {}
            for k, v in self.run.metrics["heldout_baselines"].items():
                if k.startswith("always-"):
                    pt = {key: list(vals[:n]) for key, vals in v["per_task"].items()}
                    single[k.removeprefix("always-")] = {"quality": sum(pt["quality"]) / n, "mean_cost": sum(pt["cost"]) / n, "per_task": pt}
            self._refs, self._idx = references(single), resample_index(n)
        return self._refs

    def measure(self, model: Any, step: int) -> dict[str, Any]:
        from rl_router.evaluation.comparisons import score_policy
        from rl_router.evaluation.evaluator import router_policy

        run = self.run
        point: dict[str, Any] = {"step": int(step), "minutes": (time.perf_counter() - self.t0) / 60.0}
        if self.held:
            eps = run.evaluator.episodes("curve (held-out)", router_policy(model, run.tok, run.recipe, pool=run.pool), tasks=self.held)
            s = run.evaluator.summarize(eps, self.held)
            refs = self._references()
            if refs is not None and len(refs.models) > 1:
                score_policy(s, refs, self._idx)
            point["heldout"] = {k: s.get(k) for k in ("quality", "mean_cost", "reward", "above_hull", "routes_per_task", "format_error_rate")}
            point["heldout"]["ci95"] = {k: s["ci95"][k] for k in ("quality", "mean_cost", "reward", "above_hull") if k in s["ci95"]}
            point["heldout"]["tasks"] = len(self.held)
        if self.val_eval is not None:
            eps = self.val_eval.episodes("curve (validation)", router_policy(model, run.tok, run.recipe, pool=run.pool))
            v = self.val_eval.summarize(eps)
            point["validation"] = {"reward": v["reward"], "quality": v["quality"], "mean_cost": v["mean_cost"], "reward_ci95": v["ci95"]["reward"], "tasks": len(self.validation)}
        return point

    # ---- bookkeeping ---------------------------------------------------------------------------
    def _record(self, model: Any, step: int) -> None:
        if any(p["step"] == step for p in self.points):
            return
        point = self.measure(model, step)
        self.points.append(point)
        run = self.run
        if self.keep_best and "validation" in point and (self.best is None or point["validation"]["reward"] > self.best["reward"]):
            self.best = {"step": int(step), "reward": point["validation"]["reward"]}
            if run.main:
                import torch

                self.best_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.best_dir / f".state.tmp-{os.getpid()}"
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
                os.replace(tmp, self.best_dir / "state.pt")
            run.state.wait_for_everyone()
        run.write("curve.json", {"points": self.points, "best": self.best})
        h = point.get("heldout") or {}
        msg = f"curve at step {step}: held-out quality {h.get('quality', float('nan')):.3f}, ${1000 * (h.get('mean_cost') or 0):.3f}/1k, above hull {h.get('above_hull') or 0:+.3f}" if h else f"curve at step {step}"
        if "validation" in point:
            msg += f"; validation reward {point['validation']['reward']:.4f}" + (" (best so far)" if self.best and self.best["step"] == step else "")
        run.log(msg)

    def restore_best(self, model: Any) -> int | None:
        """Load the kept weights into `model` (every rank); the step they come from, or None."""
        if not (self.keep_best and self.best and not self.best.get("stale") and (self.best_dir / "state.pt").exists()):
            return None
        import torch

        model.load_state_dict(torch.load(self.best_dir / "state.pt", map_location="cpu"))
        return int(self.best["step"])

    # ---- TrainerCallback -----------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self.t0 = time.perf_counter()  # the budget counts RL (and its curve), not the stages before it
        # a resumed run goes on from its checkpoint: points (and a kept router) measured after it
        # belong to the abandoned continuation
        self.points = [p for p in self.points if p["step"] <= state.global_step]
        if self.best is not None and self.best["step"] > state.global_step:
            best = max((p for p in self.points if "validation" in p), key=lambda p: (p["validation"]["reward"], -p["step"]), default=None)
            self.best = None if best is None else {"step": best["step"], "reward": best["validation"]["reward"], "stale": True}
        if self.every and state.global_step == 0:
            self._record(model, 0)

    def _out_of_time(self) -> bool:
        """Whether the minutes are spent, decided by rank 0 and the same on every rank (ranks
        deciding on their own clocks could stop at different steps and deadlock)."""
        if self.minutes is None:
            return False
        flag = [time.perf_counter() - self.t0 > 60.0 * self.minutes]
        if self.run.state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(flag, from_process=0)
        return bool(flag[0])

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        out_of_time = self._out_of_time()
        last = state.global_step >= state.max_steps
        if out_of_time:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"  # a checkpoint where RL stopped: `train --resume` with more minutes continues from it
            self.run.log(f"algorithm.rl_minutes reached at step {state.global_step}: stopping RL{_schedule_left(args, kw.get('lr_scheduler'), state)}")
        if self.every and (state.global_step % self.every == 0 or out_of_time or last):
            self._record(model, state.global_step)


def _schedule_left(args: Any, scheduler: Any, state: Any) -> str:
    """Where a decaying learning-rate schedule stood when the minutes stopped RL: a schedule runs
    over trainer.max_steps, not over the minutes, so a time-stopped run may end at a high rate,
    its last weights a noisy iterate rather than the settled one the schedule was chosen for."""
    kind = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if scheduler is None or kind.startswith("constant") or not args.learning_rate or state.global_step >= state.max_steps:
        return ""
    now = float(scheduler.get_last_lr()[0])
    return (f" at learning rate {now:.3g}, {now / args.learning_rate:.0%} of trainer.learning_rate: the {kind} schedule runs over "
            f"trainer.max_steps={state.max_steps} and had not finished; a max_steps that fits the minutes lets it")
