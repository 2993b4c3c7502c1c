"""Import every module of napari_ctseg and look for import circles; exit 1 on either failure.

    .venv/bin/python scripts/check_imports.py

A circle is counted over every ``import`` of a ``napari_ctseg`` module, function-level ones
included (a circle that only a late import breaks is still a circle). Modules under ``_napari``
are imported too (they need napari and Qt, not a display).
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "napari_ctseg").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":
            out[".".join(parts)] = p
    return out


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    g = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("napari_ctseg"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("napari_ctseg"))
        g[name] = {d for d in deps if d in mods and d != name}
    return g


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    sys.setrecursionlimit(10_000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    sys.path.insert(0, str(SRC))
    mods = modules()
    failed = []
    for name in mods:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every module that does not import
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    found = circles(graph(mods))
    for line in failed:
        print("import failed:", line)
    for c in found:
        print("import circle:", " -> ".join(c))
    print(f"{len(mods)} modules, {len(failed)} failed to import, {len(found)} circle(s)")
    return 1 if failed or found else 0


if __name__ == "__main__":
    sys.exit(main())
