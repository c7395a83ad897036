"""Report import cycles between sharpkd modules and functions longer than a limit.

Usage: python tools/code_health.py [--max-lines 100]
Exits non-zero when there is an import cycle or a function over the limit, so CI
can run it. Import edges are read from the AST (module-level and function-level
imports alike), which is stricter than what Python executes at import time.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sharpkd"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            # a package's own __init__ is not an edge from its submodules
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def long_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rows = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                rows.append((f"{path.relative_to(SRC)}:{node.lineno} {node.name}", n))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-lines", type=int, default=100)
    args = ap.parse_args(argv)
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    names = {module_name(p): p for p in files}
    graph = {n: imports_of(p, n, set(names)) for n, p in names.items()}
    cycles = find_cycles(graph)
    longest = []
    for p in files:
        longest += long_functions(p, args.max_lines)
    print(f"{len(names)} modules, {sum(len(v) for v in graph.values())} internal import edges")
    for c in cycles:
        print("import cycle among:", ", ".join(c))
    for where, n in sorted(longest, key=lambda r: -r[1]):
        print(f"function over {args.max_lines} lines: {where} ({n} lines)")
    if not cycles and not longest:
        print(f"no import cycle, no function over {args.max_lines} lines")
    return 1 if cycles or longest else 0


if __name__ == "__main__":
    sys.exit(main())
