"""The import graph of rl_router, one node per package or top-level module, and its cycles.

Every `import` / `from ... import` in rl_router is counted, function-level (lazy) imports
included: a lazy import is still a dependency. Prints the edges as an indented tree (each
node: what it imports) and the cycles (strongly connected components of more than one
node); exits 1 if there is a cycle. `tests/test_layout.py` runs it.

    python scripts/import_graph.py [--dot]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rl_router"


def node_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "rl_router" or len(parts) < 2:
        return None
    return parts[1]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        src = node_of(mod) or "rl_router"
        deps = edges.setdefault(src, set())
        for n in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                targets = [n.module]
            for t in targets:
                dst = node_of(t)
                if dst and dst != src:
                    deps.add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layers(edges: dict[str, set[str]]) -> dict[int, list[str]]:
    """Each node's layer: 0 for what imports nothing of rl_router, else one above the highest
    layer it imports (defined when there is no cycle)."""
    level: dict[str, int] = {}

    def lv(v: str, seen: tuple[str, ...] = ()) -> int:
        if v not in level:
            level[v] = 0 if not edges.get(v) else 1 + max(lv(w, seen + (v,)) for w in edges[v] if w not in seen)
        return level[v]

    for v in edges:
        lv(v)
    out: dict[int, list[str]] = {}
    for v, k in level.items():
        out.setdefault(k, []).append(v)
    return {k: sorted(out[k]) for k in sorted(out)}


def main() -> int:
    edges = graph()
    if "--dot" in sys.argv:
        print("digraph rl_router {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
    else:
        for a in sorted(edges, key=lambda n: (len(edges[n]), n)):
            print(f"{a:<18} -> {', '.join(sorted(edges[a])) or '(nothing of rl_router)'}")
    found = cycles(edges)
    print("cycles:", found or "none")
    if not found and "--dot" not in sys.argv:
        print("layers (a module imports only from layers below its own):")
        for k, names in sorted(layers(edges).items(), reverse=True):
            print(f"  {k}: {', '.join(names)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
