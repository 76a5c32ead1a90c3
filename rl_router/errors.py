"""Errors that name the bad field and the fix."""

from __future__ import annotations

import difflib
from typing import Any


class ConfigError(ValueError):
    """A recipe / YAML section is wrong. The message names the field path and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field = field
        msg = f"{field}: {problem}"
        if fix:
            msg += f" -> {fix}"
        super().__init__(msg)


def check_keys(d: dict[str, Any], allowed: set[str] | list[str], path: str) -> None:
    """Reject unknown keys, suggesting the closest allowed one (typos are the usual cause)."""
    if not isinstance(d, dict):
        raise ConfigError(path, f"expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), list(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {sorted(allowed)}"
            raise ConfigError(f"{path}.{k}", "unknown key", hint)


def typed(d: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str, default: Any = ..., *, minimum: float | None = None) -> Any:
    """Fetch `d[key]` checking its type (ints are accepted where floats are)."""
    if key not in d or d[key] is None:
        if default is ...:
            raise ConfigError(f"{path}.{key}", "is required")
        return default
    v = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"{path}.{key}", f"expected {names}, got {type(v).__name__} {v!r}")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{path}.{key}", f"must be >= {minimum}, got {v}")
    return v
