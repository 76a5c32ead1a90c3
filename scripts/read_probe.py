"""Can the router read? The agreement cascade's escalation decision, made by a warm-started router.

The agreement cascade calls two cheap models and escalates to the strong one exactly when their
answers differ. A router warm-started on it (`sft_mix: agreement`) must read the two replies'
letters to copy that decision. This probe teacher-forces the cascade's first two calls on
validation tasks (never trained on), lets the router write its third turn greedily, and counts
how often it makes the cascade's decision: escalate when the answers disagree, adopt when they
agree (rates for both cases and balanced). `--sizes` sweeps the tiny router's shape; each size is
warm-started once (`rl-router train` stages up to the warm start, RL skipped).

    python scripts/read_probe.py [--sizes 2x64,4x128] [--rows 2400] [--steps 300] [--n 400] [--out outputs/read_probe]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


class Handoff:
    """Scripted turns first (`k` of them), then the router's."""

    def __init__(self, scripted: Any, router: Any, k: int):
        self.scripted, self.router, self.k = scripted, router, k

    def act(self, states: list[Any]) -> list[Any]:
        early = [s for s in states if len(s.policy_turns) < self.k]
        late = [s for s in states if len(s.policy_turns) >= self.k]
        got = dict(zip(map(id, early), self.scripted.act(early)))
        got.update(zip(map(id, late), self.router.act(late) if late else []))
        return [got[id(s)] for s in states]


def probe(run: Any, cascade: tuple[str, str, str], tasks: list[Any]) -> dict[str, Any]:
    from rl_router.evaluation.baselines import same_answer
    from rl_router.evaluation.baselines import AgreementCascadePolicy
    from rl_router.evaluation.evaluator import router_policy
    from rl_router.rollout.engine import make_engine

    engine = make_engine(run.recipe, run.pool, run.tok, max_turns=4)
    policy = Handoff(AgreementCascadePolicy(run.tok, *cascade), router_policy(run.model, run.tok, run.recipe, pool=run.pool), 2)
    eps = engine.run_batched(tasks, policy, batch_size=run.recipe.rollout.batch_size)
    cells = {"agree": [0, 0], "disagree": [0, 0]}  # [cascade's decision made, cases]
    for t, ep in zip(tasks, eps):
        trace = [c for c in ep.get("trace") or [] if not c.get("error")]
        if len(trace) < 2:
            continue
        fa, fb = trace[0].get("final"), trace[1].get("final")
        agree = bool(fa) and bool(fb) and same_answer(fa, fb, t.answer_type)
        third = ep["policy_turns"][2] if len(ep["policy_turns"]) > 2 else ""
        escalated = "<route" in third
        key = "agree" if agree else "disagree"
        cells[key][1] += 1
        cells[key][0] += int(escalated != agree)
    rate = {k: (v[0] / v[1] if v[1] else None) for k, v in cells.items()}
    both = [r for r in rate.values() if r is not None]
    return {"cases": {k: v[1] for k, v in cells.items()}, "made_cascade_decision": rate, "balanced": sum(both) / len(both) if both else None,
            "overall": sum(v[0] for v in cells.values()) / max(1, sum(v[1] for v in cells.values()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/mmlu_pro.yaml")
    ap.add_argument("--sizes", default="2x64", help="LAYERSxHIDDEN, comma-separated")
    ap.add_argument("--rows", type=int, default=2400, help="warm-start trajectories")
    ap.add_argument("--steps", type=int, default=300, help="SFT steps")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--n", type=int, default=400, help="validation tasks probed")
    ap.add_argument("--out", default="outputs/read_probe")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    os.environ.setdefault("RL_ROUTER_NO_PROGRESS", "1")
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import cascade_models, setup, stage_baselines, stage_boundaries, stage_warm_start

    rows = []
    for size in a.sizes.split(","):
        layers, hidden = (int(x) for x in size.split("x"))
        sets = [f"model.num_layers={layers}", f"model.hidden_size={hidden}", "algorithm.sft_mix=agreement", f"algorithm.sft_examples={a.rows}", f"sft.max_steps={a.steps}",
                f"sft.learning_rate={a.lr}", "data.validation_fraction=0.05", *a.sets]
        r = load_recipe(a.recipe, sets)
        out = Path(a.out) / f"{size}_r{a.rows}_s{a.steps}_lr{a.lr:g}"
        t0 = time.perf_counter()
        run = setup(r, str(out), resume=out.exists(), log=lambda m: None)
        stage_baselines(run)
        stage_boundaries(run)
        stage_warm_start(run)
        secs = time.perf_counter() - t0
        res = probe(run, tuple(run.metrics.get("cascade") or cascade_models(run)), run.validation[: a.n])
        row = {"size": size, "rows": a.rows, "steps": a.steps, "lr": a.lr, "params": sum(p.numel() for p in run.model.parameters()), "warm_start_s": round(secs), **res}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "probe.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
