"""Pools of LLMs a router can call. `build_pool(section)` builds one from a recipe section."""

from rl_router.pools.base import Completion, ModelCard, Pool, approx_tokens, messages_tokens
from rl_router.pools.factory import build_pool
from rl_router.pools.hf_local import HFLocalPool, LocalModel
from rl_router.pools.openai_pool import Endpoint, OpenAIPool, RetryPolicy
from rl_router.pools.recorded import RecordedPool
from rl_router.pools.server import FaultConfig, PoolServer
from rl_router.pools.simulated import SimModel, SimulatedPool

__all__ = [
    "Completion", "ModelCard", "Pool", "approx_tokens", "messages_tokens", "build_pool",
    "HFLocalPool", "LocalModel", "Endpoint", "OpenAIPool", "RetryPolicy", "RecordedPool",
    "FaultConfig", "PoolServer", "SimModel", "SimulatedPool",
]
