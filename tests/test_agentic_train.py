"""Learning claim for issue 5: BoPO on the agentic env, tiny router, small seeded run.

The trained router must sit above the boundary policies' mixture (always-cheap and
always-expensive mixed at the router's own cost) on held-out tasks, and RL must move it
from the warm start."""

from __future__ import annotations


from rl_router.evaluation.report import evaluate
from rl_router.frontier import above, point, random_mixture
from rl_router.recipe import load_recipe



def test_bopo_router_beats_the_boundary_mixture_at_equal_cost(bopo_run):
    run_dir, m = bopo_run
    base = m["heldout_baselines"]
    cheap, strong = base["always-cheap"], base["always-expensive"]
    line = random_mixture(point(cheap), point(strong))
    sft, after = m["heldout_after_sft"], m["heldout_after"]
    gap_after = above(point(after), line)
    gap_sft = above(point(sft), line)
    print(f"\nboundaries: cheap {cheap['quality']:.3f} @ ${1000 * cheap['mean_cost']:.3f}/1k, expensive {strong['quality']:.3f} @ ${1000 * strong['mean_cost']:.3f}/1k; "
          f"SFT {sft['quality']:.3f} @ ${1000 * sft['mean_cost']:.3f} ({gap_sft:+.3f}); BoPO {after['quality']:.3f} @ ${1000 * after['mean_cost']:.3f} ({gap_after:+.3f})")
    assert gap_after > 0.1  # success above the mixture line at the router's own cost
    assert after["quality"] / after["mean_cost"] > strong["quality"] / strong["mean_cost"]  # success per $ beats always-expensive
    assert after["reward"] > sft["reward"] + 0.1  # RL moved it, not only the warm start
    assert after["budget_violation_rate"] <= 0.05 and after["format_error_rate"] <= 0.1
    # eval on the trained run: budget compliance, calls per tier, above the random line
    res = evaluate(load_recipe("recipes/bopo_agentic.yaml"), str(run_dir), sampled=False, knn_lambdas=(0.0, 0.5))
    p = res["policies"]["router (greedy)"]
    assert p["budget_exceeded_rate"] == 0.0 and set(p["calls_per_task"]) == {"cheap", "expensive"}
    assert p["above_random_mixture"] > 0.1
