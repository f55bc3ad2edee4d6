"""Dependencies run one way: no import cycle between presso's packages.

Every module's imports are read from its source (top-level, in-function and type-only ones:
a lazy import is a dependency all the same). Nodes are the subpackages (``presso.search``,
``presso.spaces``, ``presso.cost_models``, ``presso.profilers``, ``presso.kernels``,
``presso.dashboards``, ``presso.export``, ``presso.compress``) and each module of the core
(``presso.run``, ``presso.evaluator``, ...): a cycle among them is a layer that reaches up.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Package name -> its folder (pyproject's package-dir).
FOLDERS = {
    "presso": ROOT / "presso",
    "presso.spaces": ROOT / "spaces",
    "presso.search": ROOT / "search",
    "presso.cost_models": ROOT / "cost_models",
    "presso.profilers": ROOT / "profilers",
    "presso.kernels": ROOT / "kernels",
    "presso.dashboards": ROOT / "dashboards",
}
PACKAGES = (
    "presso.export",
    "presso.compress",
    "presso.runtimes",
    "presso.spaces",
    "presso.search",
    "presso.cost_models",
    "presso.profilers",
    "presso.kernels",
    "presso.dashboards",
)
#: Edges (from node, to node) that may close a cycle, each with the reason it cannot be cut.
#: Every other cycle found so far could be cut, and a new one should be too.
ALLOWED: dict[tuple[str, str], str] = {
    ("presso.spaces", "presso.plan"): (
        "a space decodes a config into a Plan (SearchSpace.plan), whose entries the kinds of "
        "presso.spaces define: each reads the other only when used (a lazy and a type-only "
        "import), never at import time"
    ),
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module: dotted name -> (file, is a package's __init__)."""
    out = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            init = parts[-1] == "__init__"
            out[".".join([package, *(parts[:-1] if init else parts)])] = (path, init)
    return out


def node(module: str) -> str | None:
    """The node ``module`` belongs to: its subpackage, or itself for a core module."""
    for package in PACKAGES:
        if module == package or module.startswith(package + "."):
            return package
    parts = module.split(".")
    if parts[0] != "presso" or len(parts) == 1:
        return None  # not presso, or presso/__init__ (the version: no layer)
    return ".".join(parts[:2])


def imports(path: Path, module: str, init: bool) -> list[tuple[str, int]]:
    """Every presso module ``module`` (file ``path``) imports, with its line."""
    here = module if init else module.rsplit(".", 1)[0]
    out = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = here.split(".")[: len(here.split(".")) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            out.append((target, n.lineno))
            out += [(f"{target}.{a.name}", n.lineno) for a in n.names]
    return [(t, line) for t, line in out if t.startswith("presso")]


def graph() -> dict[str, dict[str, list[str]]]:
    """node -> node it imports -> where (``module:line``)."""
    modules = _modules()
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, (path, init) in modules.items():
        for target, line in imports(path, module, init):
            # ``from presso.x import name``: name is a module only if such a module exists.
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                target = target.rsplit(".", 1)[0]
            a, b = node(module), node(target)
            if a and b and a != b and (a, b) not in ALLOWED:
                edges[a][b].append(f"{module}:{line}")
    return edges


def cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_packages() -> None:
    edges = graph()
    report = []
    for component in cycles(edges):
        report.append(" <-> ".join(component))
        for a in component:
            for b, where in edges[a].items():
                if b in component:
                    report.append(f"    {a} -> {b}: {', '.join(where[:3])}")
    assert not report, "import cycles between packages:\n" + "\n".join(report)


def test_the_check_sees_lazy_and_type_only_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from presso.search import Strategy\n"
        "def f():\n    from ..spaces import Config\n    import presso.run\n"
    )
    path = tmp_path / "m.py"
    path.write_text(source)
    found = {t for t, _ in imports(path, "presso.kernels.m", init=False)}
    assert {"presso.search", "presso.spaces", "presso.run"} <= found


def test_a_cycle_is_found() -> None:
    edges = {"presso.a": {"presso.search": ["x"]}, "presso.search": {"presso.a": ["y"]}}
    assert cycles(edges) == [["presso.a", "presso.search"]]  # type: ignore[arg-type]
    assert node("presso.search._runner") == "presso.search"
    assert node("presso.export._hf") == "presso.export"
    assert node("presso.evaluator") == "presso.evaluator"
