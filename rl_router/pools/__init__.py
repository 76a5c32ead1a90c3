"""Pools of LLMs a router can call. `build_pool(section)` builds one from a recipe section."""

from .base import Completion, ModelCard, Pool, approx_tokens, messages_tokens
from .factory import build_pool
from .hf_local import HFLocalPool, LocalModel
from .openai_pool import Endpoint, OpenAIPool, RetryPolicy
from .recorded import RecordedPool
from .server import FaultConfig, PoolServer
from .simulated import SimModel, SimulatedPool

__all__ = [
    "Completion", "ModelCard", "Pool", "approx_tokens", "messages_tokens", "build_pool",
    "HFLocalPool", "LocalModel", "Endpoint", "OpenAIPool", "RetryPolicy", "RecordedPool",
    "FaultConfig", "PoolServer", "SimModel", "SimulatedPool",
]
