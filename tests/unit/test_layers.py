"""The layer order holds, and no two modules import each other in a circle.

The project's folders install as subpackages of ``prefect_mlops`` (setup.py), so the imports read
``prefect_mlops.<folder>...``; this test reads them the way the design's layer order is written,
by folder: ``cli`` on top, ``mlops`` at the bottom, and a folder may import only its own layer
or the ones below it. Lazy imports inside functions count: they are dependencies all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "prefect_mlops"
# From the top (entry points) down to the core; folders in one group may import each other.
ORDER = [["prefect_mlops", "cli"], ["flows"], ["tasks"], ["serving", "model_registry", "infra"]]
ORDER.append(["mlops"])
LAYER = {folder: depth for depth, group in enumerate(ORDER) for folder in group}


def _modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name without the package prefix."""
    found = {}
    for folder in LAYER:
        for path in (ROOT / folder).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported dotted name without the package prefix, line) of every project import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name == PACKAGE:
                continue  # `from prefect_mlops import mlops` names the folder, not the API
            if name.startswith(f"{PACKAGE}."):
                folder_name = name.removeprefix(f"{PACKAGE}.")
                own = folder_name.split(".")[0] in LAYER
                found.append((folder_name if own else name, node.lineno))
            elif module.split(".")[0] != PACKAGE and name.split(".")[0] in LAYER:
                found.append((name, node.lineno))  # a relative import inside a folder
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {module: set() for module in known}
    backward = []
    for module, path in known.items():
        for name, line in _imports(path, module):
            target = _resolve(name, known)
            if target is None or target == module:
                continue
            graph[module].add(target)
            if LAYER[target.split(".")[0]] < LAYER[module.split(".")[0]]:
                backward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return graph, backward


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_import_runs_against_the_layer_order():
    graph, backward = _graph()
    assert sum(len(targets) for targets in graph.values()) > 500  # the imports were read
    assert backward == []


def test_no_modules_import_each_other_in_a_circle():
    graph, _ = _graph()
    assert _circles(graph) == []


def test_a_backward_import_and_a_circle_are_caught(tmp_path):
    graph = {"mlops.a": {"tasks.b"}, "tasks.b": {"mlops.a"}, "cli.c": {"tasks.b"}}
    assert _circles(graph) == [["mlops.a", "tasks.b"]]
    module = tmp_path / "m.py"
    module.write_text("from prefect_mlops.tasks.a_stage import x\nfrom .errors import y\n")
    assert _imports(module, "mlops.m") == [
        ("tasks.a_stage", 1),
        ("tasks.a_stage.x", 1),
        ("mlops.errors", 2),
        ("mlops.errors.y", 2),
    ]
