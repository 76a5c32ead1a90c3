"""Every JSON and YAML document rl-router reads goes through here: one depth and size limit,
duplicate keys refused, YAML 1.2 numbers, and one error (a `ConfigError` naming the file or
field) for whatever is wrong with it.

Why: each reader used to call `json.loads` / `yaml.safe_load` itself, so input nested 100k
deep raised `RecursionError` (a traceback, or a 500 from a server), a duplicate recipe key was
silently the last one, and `1e-1` was a number in one file and text in another (PyYAML reads
YAML 1.1, where a float needs a dot). Parsed documents are also checked for depth here, once,
so the code that walks them later (deepcopy, pydantic, json.dumps) never recurses too far.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from rl_router.errors import ConfigError

#: the deepest nesting of lists / mappings accepted in any document (recipes use 4-5 levels)
MAX_DEPTH = 64
#: the largest document accepted: a whole JSON / YAML file, or one line of a JSONL file
MAX_BYTES = 64 << 20
#: the most values a YAML document may expand to (aliases can make a small file huge)
MAX_YAML_NODES = 1_000_000


def check_depth(obj: Any, where: str, *, max_nodes: int | None = None, fix: str = "", name: str = "") -> Any:
    """`obj` itself, after checking (iteratively) that it nests at most MAX_DEPTH deep and,
    when `max_nodes` is given, holds at most that many values."""
    it = f"{name} " if name else ""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if max_nodes is not None and seen > max_nodes:
            raise ConfigError(where, f"{it}expands to more than {max_nodes} values (YAML aliases?)", fix or "write the values out, without anchors and aliases")
        if isinstance(node, dict):
            if depth >= MAX_DEPTH:
                raise ConfigError(where, f"{it}is nested more than {MAX_DEPTH} levels deep", fix or "flatten it")
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            if depth >= MAX_DEPTH:
                raise ConfigError(where, f"{it}is nested more than {MAX_DEPTH} levels deep", fix or "flatten it")
            stack.extend((v, depth + 1) for v in node)
    return obj


def _size_ok(data: str | bytes, where: str, fix: str, name: str = "") -> None:
    if len(data) > MAX_BYTES:
        raise ConfigError(where, f"{name + ' ' if name else ''}is {len(data)} bytes, over the {MAX_BYTES >> 20} MiB limit for one document", fix or "split it into smaller files")


class _Duplicate(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise _Duplicate(k)
        d[k] = v
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: str | bytes, where: str, *, name: str = "", fix: str = "", unique_keys: bool = False, allow_nan: bool = True) -> Any:
    """One JSON document; errors read `WHERE: NAME is not valid JSON (...) -> FIX` (`where`:
    the field or file:line, `name`: the file, when not in `where`). `unique_keys`: a key twice
    in one object is an error (configs and request bodies; large data files skip the check for
    speed). `allow_nan`: NaN / Infinity accepted."""
    it = f"{name} " if name else ""
    _size_ok(data, where, fix, name)
    kw: dict[str, Any] = {}
    if unique_keys:
        kw["object_pairs_hook"] = _unique_pairs
    if not allow_nan:
        kw["parse_constant"] = _no_constant
    try:
        obj = json.loads(data, **kw)
    except _Duplicate as e:
        raise ConfigError(where, f"{it}has the key {e.args[0]!r} twice in one object", fix or "keep one of them") from None
    except RecursionError:
        raise ConfigError(where, f"{it}is nested more than {MAX_DEPTH} levels deep", fix or "flatten it") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError, a bad constant, undecodable bytes
        raise ConfigError(where, f"{it}is not valid JSON ({' '.join(str(e).split())[:200]})", fix) from None
    return check_depth(obj, where, fix=fix, name=name)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's floats (`1e-5` without a dot is a number) and duplicate keys
    refused."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _v in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"found the key {key_node.value!r} twice in one mapping (keep one of them)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _yaml_problem(e: Exception) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        m = e.problem_mark
        return f"{' '.join(str(e.problem).split())} (line {m.line + 1}, column {m.column + 1})"
    return " ".join(str(e).split())[:300]


def parse_yaml(text: str | bytes, where: str, *, name: str = "", fix: str = "") -> Any:
    """One YAML document (YAML 1.2 numbers, duplicate keys refused, depth and size bounded);
    errors as `parse_json`'s."""
    it = f"{name} " if name else ""
    _size_ok(text, where, fix, name)
    try:
        obj = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise ConfigError(where, f"{it}is nested more than {MAX_DEPTH} levels deep", fix or "flatten it") from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(where, f"{it}is not valid YAML: {_yaml_problem(e)}", fix) from None
    return check_depth(obj, where, max_nodes=MAX_YAML_NODES, fix=fix, name=name)


def read_bytes(path: str | Path, where: str | None = None, *, fix: str = "") -> bytes:
    """A file's bytes, with one error for a missing file, a folder, an unreadable or oversized
    one: `WHERE: PATH does not exist -> FIX` (`where` defaults to the path)."""
    p = Path(path)
    where = where or str(p)
    try:
        if p.is_dir():
            raise ConfigError(where, f"{p} is a folder, not a file", fix)
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(where, f"{p} is {size} bytes, over the {MAX_BYTES >> 20} MiB limit for one document", fix or "split it into smaller files")
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(where, f"{p} does not exist", fix) from None
    except OSError as e:
        raise ConfigError(where, f"{p} cannot be read ({e.strerror or type(e).__name__})", fix) from None


def read_text(path: str | Path, where: str | None = None, *, fix: str = "") -> str:
    """A UTF-8 text file (see `read_bytes`); binary content is an error naming the file."""
    data = read_bytes(path, where, fix=fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(where or str(path), f"{path} is not UTF-8 text (byte {e.start})", fix) from None


def read_json(path: str | Path, where: str | None = None, *, fix: str = "", **kw: Any) -> Any:
    """A JSON file: `where` names the field or option it came from (errors then name the file
    too); without it the file is the subject."""
    return parse_json(read_text(path, where, fix=fix), where or str(path), name=str(path) if where else "", fix=fix, **kw)


def read_yaml(path: str | Path, where: str | None = None, *, fix: str = "") -> Any:
    """A YAML file; errors as `read_json`'s."""
    return parse_yaml(read_text(path, where, fix=fix), where or str(path), name=str(path) if where else "", fix=fix)


def finite(v: Any) -> bool:
    """A real number (not a bool), finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def find_nonfinite(obj: Any, path: str) -> tuple[str, float] | None:
    """(dotted path, value) of the first NaN or infinity in `obj`, or None: no setting of ours
    means anything at NaN (a NaN budget once meant no budget), so a document holding one is
    refused wherever the number sits, a field we type or a mapping passed on (lora, data.world)."""
    stack: list[tuple[Any, str]] = [(obj, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where, node
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
    return None
