"""Rollouts: multi-turn episodes of a policy (LM, vLLM or script) against an environment, in
lock-step batches with concurrent pool calls, in the token layout TRL's `rollout_func` takes."""

from rl_router.rollout.engine import NO_LOGPROB, RolloutEngine, episodes_to_batch, lockstep, make_engine, make_rollout_func, run_sharded
from rl_router.rollout.policies import HFPolicy, ScriptedPolicy, adopt_text, route_text, text_turns
from rl_router.rollout.state import EpisodeState, Policy, Turn

__all__ = [
    "NO_LOGPROB", "RolloutEngine", "episodes_to_batch", "lockstep", "make_engine", "make_rollout_func", "run_sharded",
    "HFPolicy", "ScriptedPolicy", "adopt_text", "route_text", "text_turns", "EpisodeState", "Policy", "Turn",
]
