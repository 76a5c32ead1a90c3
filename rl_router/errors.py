"""Errors that name the bad field and the fix."""

from __future__ import annotations

import difflib
import math
from typing import Any


# Every character str.splitlines() breaks a line at (YAML reads NEL, \x85, as one too), written
# as its escape: a value quoted into a message cannot split the message's one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """`text` with its line breaks escaped (`a\\nb` for a newline): what a user typed, e.g. a
    YAML value quoted in an error, stays visible and the error stays one line."""
    return text.translate(_LINE_BREAKS)


class RouterError(Exception):
    """An error the user can fix: the CLI prints its one line (what, where, the fix) and exits 2,
    never a traceback. Line breaks inside the message (a quoted value's) are escaped."""

    def __init__(self, *args: Any):
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


class ConfigError(RouterError, ValueError):
    """A recipe / YAML section is wrong. The message names the field path and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field = field
        msg = f"{field}: {problem}"
        if fix:
            msg += f" -> {fix}"
        super().__init__(msg)


class PoolFailure(RouterError, RuntimeError):
    """Too many pool calls failed for the numbers to mean anything (see pool.max_error_rate)."""


class CheckpointError(RouterError, RuntimeError):
    """A checkpoint file is damaged (truncated, not what it claims to be)."""


def check_pool_errors(episodes: list[dict[str, Any]], limit: float, what: str) -> None:
    """Stop when more than `limit` of the episodes hit a failed pool call, naming the most
    common error: a run against a dead or misconfigured pool must not report numbers."""
    if not episodes:
        return
    failed = [e for e in episodes if e.get("pool_errors")]
    rate = len(failed) / len(episodes)
    if rate > limit:
        errs: dict[str, int] = {}
        for e in failed:
            for c in e.get("trace") or []:
                if c.get("error"):
                    errs[str(c["error"])[:160]] = errs.get(str(c["error"])[:160], 0) + 1
        top = max(errs, key=errs.get) if errs else "unknown"
        raise PoolFailure(f"{what}: {rate:.0%} of {len(episodes)} episodes hit failed pool calls (pool.max_error_rate is {limit:g}); most common error: {top} -> check the pool's endpoints, or raise pool.max_error_rate")


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
    if isinstance(v, float) and not math.isfinite(v):  # YAML's .nan / .inf: a NaN timeout would never time out
        raise ConfigError(f"{path}.{key}", f"expected a finite number, got {v!r}")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{path}.{key}", f"must be >= {minimum}, got {v}")
    return v


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def check_value(value: Any, annotation: Any, path: str) -> Any:
    """Check (and lightly coerce) one value against a dataclass field's annotation: int, float
    (ints accepted; numeric strings such as YAML 1.1's "1e-5" converted), bool, str, None,
    list[...], dict[...], Optional / unions and Literal. Returns the value to use."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(annotation):
            try:
                return check_value(value, arm, path)
            except ConfigError as e:
                errors.append(e)
        plain = {type(None): "null", float: "a number", int: "a whole number", str: "text", bool: "true/false", list: "a list", dict: "a mapping"}
        names = " or ".join(plain.get(typing.get_origin(a) or a, _type_name(typing.get_origin(a) or a)) for a in typing.get_args(annotation))
        raise ConfigError(path, f"expected {names}, got {type(value).__name__} {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(path, f"must be one of {list(typing.get_args(annotation))}, got {value!r}")
        return value
    if annotation is type(None):
        if value is not None:
            raise ConfigError(path, f"expected null, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true/false, got {type(value).__name__} {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected a whole number, got {type(value).__name__} {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(path, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf: a NaN budget would silently mean no budget
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected text, got {type(value).__name__} {value!r}")
        return value
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(annotation)
        return [check_value(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        # an enum or a class: accept what the class accepts (TRL's enums take their string values)
        try:
            annotation(value)
        except Exception:  # noqa: BLE001
            raise ConfigError(path, f"expected {_type_name(annotation)}, got {value!r}") from None
    return value


def check_fields(cls: type, values: dict[str, Any], path: str, *, positive: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every key a field of dataclass `cls`, every value of its field's type; fields in
    `positive` must be > 0. Returns the (coerced) values."""
    import dataclasses
    import typing

    if not isinstance(values, dict):
        raise ConfigError(path, f"expected a mapping, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    check_keys(values, {f.name for f in dataclasses.fields(cls)}, path)
    out = {}
    for k, v in values.items():
        out[k] = check_value(v, hints.get(k, Any), f"{path}.{k}")
        if k in positive and out[k] is not None and out[k] <= 0:
            raise ConfigError(f"{path}.{k}", f"must be > 0, got {out[k]}")
    return out
