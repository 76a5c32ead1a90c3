"""Evaluation: the one path train, eval and rollout share (`evaluator`), the `eval` report
with its baselines and frontiers (`report`), the kNN baseline and step-level replay."""

from rl_router.evaluation.evaluator import EvalOptions, Evaluator, baseline_policy, router_policy, score_episodes
from rl_router.evaluation.report import evaluate, write_outputs

__all__ = ["EvalOptions", "Evaluator", "baseline_policy", "router_policy", "score_episodes", "evaluate", "write_outputs"]
