"""The evaluation is a one-way pipeline: scan -> blocks -> plots -> report, no import cycle.

The graph is read statically (ast) from the source, with every import counted, also those
inside functions; only ``if TYPE_CHECKING:`` imports are left out (they never run).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import calosim

ROOT = Path(calosim.__file__).parent


def _module(path: Path) -> str:
    parts = ("calosim",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                for n in ast.walk(node)}
        pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = ".".join((pkg[: len(pkg) - node.level + 1] if node.level else []) + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_evaluate_plots_report_import_one_way() -> None:
    g = _import_graph()
    assert "calosim.metrics.plots" in g["calosim.metrics.evaluate"]  # the graph was read (lazy imports too)
    for m in ("calosim.metrics.scan", "calosim.metrics.blocks", "calosim.metrics.plots", "calosim.metrics.report",
              "calosim.metrics.options"):
        assert "calosim.metrics.evaluate" not in _reaches(g, m), m
    assert not _reaches(g, "calosim.metrics.report") & {"calosim.metrics.plots", "calosim.metrics.blocks"}


def test_no_import_cycle_in_calosim() -> None:
    g = _import_graph()
    cycles = sorted(m for m in g if m in _reaches(g, m))
    assert not cycles, f"modules on an import cycle: {cycles}"
