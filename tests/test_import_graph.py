"""The project's modules import each other without a circle, lazy imports inside functions included.

A circle is how a room ends up importing upward (ARCHITECTURE.md); two crept in beside a real need
(store.records ↔ store.tables, cli ↔ prefect_server) and one stood as a shim (cli ↔ flows).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("store", "pipelines", "features", "models")


def project_modules() -> dict[str, Path]:
    files = [*REPO.glob("*.py"), *(f for room in ROOMS for f in (REPO / room).rglob("*.py"))]
    return {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f for f in files}


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module → the project modules it imports anywhere in its file (top level or inside a function)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def test_no_module_imports_itself_back():
    mods = project_modules()
    assert {"cli", "flows", "store.tables", "features.base", "models.evaluation.report"} <= set(mods)
    assert cycles(import_graph(mods)) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
