"""`rl-router pool-server`: a recipe's pool behind our OpenAI-compatible pool server."""

from __future__ import annotations

from rl_router.pools.server import PoolServer


def server_for_recipe(recipe_path: str | None, *, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None) -> PoolServer:
    """`rl-router pool-server`: the recipe's pool behind our OpenAI-compatible server."""
    import os

    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe
    from rl_router.task_sources import recipe_pool

    pool = recipe_pool(load_recipe(recipe_path))
    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        raise ConfigError("--api-key-env", f"the environment variable {api_key_env} is empty", f"export {api_key_env}=<token clients must send>")
    from rl_router.httpd import listen_error

    try:
        return PoolServer(pool, host=host, port=port, api_key=key)
    except (OverflowError, OSError, UnicodeError) as e:
        raise listen_error(host, port, e) from None
