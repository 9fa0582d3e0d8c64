"""The imports inside ``tsvision/``, read with ``ast`` (at any depth, inside functions too): no cycle,
``tsvision/serving`` never imports ``tsvision/tools``, and the tools' rooms import one way only
(the order in ``tsvision/tools/__init__.py``: command, export, archive, serve, clients, routing, batch, cli)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "tsvision"
# Lowest first: a module may import its own room and the rooms before it, never one after it.
ROOMS = ["command", "export", "archive", "serve", "clients", "routing", "batch", "cli"]
# The CLI layer: the only modules that may end the process with an exit status.
CLI_LAYER = {"tsvision.__main__", "tsvision.tools.cli", "tsvision.tools.command"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> Dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imported(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in its body (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from PKG import submodule`` imports the submodule; any other name is PKG's own (its __init__)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:  # the deepest known module the name refers to
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    known = modules(root)
    return {name: imported(name, path, set(known)) for name, path in known.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as a list of modules (the first repeated at the end), or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def room(name: str) -> Optional[str]:
    """The tools room of a module (``tsvision.tools`` itself counts with ``command``, the lowest); None outside."""
    parts = name.split(".")
    if parts[:2] != ["tsvision", "tools"]:
        return None
    return parts[2] if len(parts) > 2 else "command"


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    wrong = []
    for name, targets in graph.items():
        if room(name) is None:
            continue
        for target in targets:
            if room(target) is not None and ROOMS.index(room(target)) > ROOMS.index(room(name)):
                wrong.append(f"{name} ({room(name)}) imports {target} ({room(target)})")
    return sorted(wrong)


def test_the_graph_is_read():
    graph = import_graph()
    assert set(ROOMS) - {"command", "cli"} <= {room(name) for name in graph}, "a room is missing"
    assert "tsvision.tools.export.architectures" in graph["tsvision.tools.export.cli"]
    assert "tsvision.serving.settings" in graph["tsvision.tools.archive.cli"]
    every_room = {room(name) for name in graph if room(name)}
    assert every_room <= set(ROOMS), f"a room the order does not name: {every_room - set(ROOMS)}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_serving_never_imports_the_tools():
    wrong = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                   if name.startswith("tsvision.serving") for target in targets if target.startswith("tsvision.tools"))
    assert not wrong, "\n".join(wrong)


def test_rooms_import_one_way():
    wrong = upward_imports(import_graph())
    assert not wrong, "a room imports a room above it (order: " + " < ".join(ROOMS) + "):\n" + "\n".join(wrong)


def test_only_the_cli_layer_exits():
    """Library code raises; only the CLI (``command.entry_point``, ``cli.py``, ``__main__``) turns errors into
    exit codes."""
    wrong = []
    for name, path in modules(PACKAGE).items():
        if name in CLI_LAYER or name.endswith(".__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None and not isinstance(node.exc, ast.Call):
                said = ast.unparse(node.exc)  # raise SystemExit
            elif isinstance(node, ast.Call):
                said = ast.unparse(node.func)  # raise SystemExit(...), sys.exit(...)
            else:
                continue
            if said in ("SystemExit", "sys.exit", "exit", "quit", "os._exit"):
                wrong.append(f"{name}:{node.lineno} {said}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("planted, expected", [
    ({"a.py": "from tsvision import b\n", "b.py": "def f():\n    import tsvision.a\n"}, "cycle"),
    ({"tools/export/x.py": "from tsvision.tools.serve import y\n", "tools/serve/y.py": ""}, "upward"),
    ({"serving/x.py": "def f():\n    from tsvision.tools import command\n", "tools/command.py": ""}, "serving"),
])
def test_the_checks_fail_on_a_planted_mistake(tmp_path, planted, expected):
    root = tmp_path / "tsvision"
    for file, text in {"__init__.py": "", **planted}.items():
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        for folder in [(root / file).parent, *(root / file).parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
        (root / file).write_text(text)
    graph = import_graph(root)
    if expected == "cycle":
        assert find_cycle(graph) == ["tsvision.a", "tsvision.b", "tsvision.a"]
    elif expected == "upward":
        assert upward_imports(graph) == ["tsvision.tools.export.x (export) imports tsvision.tools.serve.y (serve)"]
        assert find_cycle(graph) is None
    else:
        assert "tsvision.tools.command" in graph["tsvision.serving.x"]
