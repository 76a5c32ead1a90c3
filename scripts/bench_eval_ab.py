"""The held-out eval with this version's shared-prompt attention against an earlier commit's, in one process.

This machine's speed drifts by up to a quarter between runs, so two versions are compared
inside one process, alternately: the evaluator's bf16 path (tasks batched by length, the
system prompt's KV held once: `rollout/shared_kv.py`) over the same held-out MMLU tasks
with SmolLM2-135M-Instruct as fetched, once with `shared_kv.prefix_attention` as in this
tree and once with the one of `--against` (read with `git show`, so this needs the
repository's history), swapped through transformers' attention registry, after one untimed
warm-up eval of each. Prints each run's
seconds, the medians, the per-pair ratios and how many greedy episodes are identical.

    python scripts/bench_eval_ab.py [--n 64] [--batch 32] [--repeats 3] [--against dc8101c]

`--against` must be a commit from before aed9a4d (the earlier module's form of the forward in
progress, a (store, layout tuple) pair, is what this script hands it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time


_KEEP: list = []


def module_at(rev: str, path: str, name: str):
    """The module `path` as it was at commit `rev`."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    d = tempfile.TemporaryDirectory(prefix="bench_eval_ab_")
    _KEEP.append(d)  # removed at exit
    f = os.path.join(d.name, f"{name}.py")
    with open(f, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(name, f)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="held-out tasks")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs (the order alternates)")
    ap.add_argument("--against", default="dc8101c", help="the commit whose rl_router/rollout/shared_kv.py is the other arm")
    ap.add_argument("--recipe", default="recipes/smollm2_135m.yaml")
    a = ap.parse_args()
    os.environ.setdefault("RL_ROUTER_NO_PROGRESS", "1")
    import rl_router  # noqa: F401  (pins the portable CPU numerics before torch loads)
    from transformers import AttentionInterface

    from rl_router.models import router_from_recipe
    from rl_router.recipe import load_recipe
    from rl_router.rollout import shared_kv as new
    from rl_router.rollout.engine import make_engine, run_sharded, stop_strings
    from rl_router.rollout.names import cost_weights
    from rl_router.rollout.policies import HFPolicy
    from rl_router.task_sources import recipe_pool, recipe_tasks

    old = module_at(a.against, "rl_router/rollout/shared_kv.py", "rl_router_shared_kv_before")
    r = load_recipe(a.recipe, [f"data.max_heldout={a.n}"])
    pool = recipe_pool(r)
    _, held = recipe_tasks(r, pool)
    model, tok = router_from_recipe(r)
    model.eval()
    engine = make_engine(r, pool, tok)
    kw = {"max_new_tokens": r.rollout.max_new_tokens, "temperature": 0.0, "stop_strings": stop_strings(r)}
    names = {"route_weights": cost_weights(pool), "names": pool.model_names}
    arm = ["new"]

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        if arm[0] == "new":
            return new.prefix_attention(module, query, key, value, attention_mask, scaling, dropout, **kw)
        fw = new._ACTIVE[-1]
        layout = fw.layout
        old._ACTIVE.append((fw.store, (layout.rows, layout.g, layout.slot, layout.S)))  # the earlier module's form of the same forward
        try:
            return old.prefix_attention(module, query, key, value, attention_mask, scaling, dropout, **kw)
        finally:
            old._ACTIVE.pop()

    new._register()
    AttentionInterface.register(new.SHARED_ATTENTION, attention)

    def run():
        t0 = time.perf_counter()
        eps = run_sharded(engine, held, HFPolicy(model, tok, **kw, **names, autocast="bfloat16", share_system_prompt=True), batch_size=a.batch)
        return time.perf_counter() - t0, [e["completion_ids"] for e in eps]

    times: dict[str, list[float]] = {"new": [], "old": []}
    eps: dict[str, list] = {}
    for which in ("new", "old"):  # warm-up, not timed: a process's first eval ran ~5% slower (allocator, caches)
        arm[0] = which
        run()
    for i in range(a.repeats):
        for which in ("new", "old") if i % 2 == 0 else ("old", "new"):
            arm[0] = which
            t, eps[which] = run()
            times[which].append(t)
            print(f"{which if which == 'new' else a.against}: {t:.2f} s = {a.n / t:.3f} tasks/s", flush=True)
    mn, mo = statistics.median(times["new"]), statistics.median(times["old"])
    print(f"median: this tree {mn:.2f} s ({a.n / mn:.3f} tasks/s), {a.against} {mo:.2f} s ({a.n / mo:.3f} tasks/s); "
          f"per-pair ratios this / {a.against}: {', '.join(f'{x / y:.3f}' for x, y in zip(times['new'], times['old']))}")
    print(f"greedy episodes identical: {sum(x == y for x, y in zip(eps['new'], eps['old']))}/{a.n}")


if __name__ == "__main__":
    main()
