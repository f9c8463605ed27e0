"""The package's shape, checked: which part may import which, and no import cycles.

Every import counts, wherever it is written: at the top of a module, inside a function
(a lazy import) or under ``if TYPE_CHECKING`` (a type-only import). A lazy import is
still a dependency, and a type-only one still ties two modules together for whoever
changes them, so neither is a way around the rules.

The rules (docs/ARCHITECTURE.md explains them): each part of the package names the parts
it may import. The data plane imports no admin or monitoring module; monitoring services
import no data-plane or admin module; storage imports neither, nor monitoring (only the compiled core below it); the
compiled core imports nothing of fastproxy; config imports nothing of the planes; the
neutral packages (core, httpclient) import only what is below them. Only the gateway
and the command line see everything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fastproxy"

# part -> the parts it may import (itself always included). A part is a subpackage
# or a top-level module of fastproxy, named without the "fastproxy." prefix.
ALLOWED: dict[str, set[str]] = {
    "_speedups": set(),
    "_version": set(),
    "config": set(),
    "core": {"config"},
    # _speedups: the upstream connection's one-call parser of a whole answer.
    "httpclient": {"core", "config", "_speedups"},
    # _speedups: the capture link's compiled buffer and the capture writer's CBOR items.
    # memory: the helper processes (recorder, capture writer) set the allocator at start.
    "storage": {"core", "config", "_speedups", "memory"},
    "logs": {"core", "config"},
    "memory": set(),
    "systemd": set(),
    "reload": {"config"},
    "workers": {
        "_speedups",
        "config",
        "core",
        "dataplane",
        "httpclient",
        "logs",
        "memory",
        "monitor",
    },
    "service_unit": set(),
    # storage: --from-capture reads capture files with the capture reader.
    "mockllm": {"core", "config", "_speedups", "logs", "storage"},
    "monitor": {"storage", "httpclient", "core", "config", "_speedups", "_version", "logs"},
    "dataplane": {"httpclient", "core", "config", "_speedups", "logs"},
    "admin": {"monitor", "storage", "httpclient", "core", "config", "logs"},
    # The wiring and the command line may use every part.
    "gateway": {"*"},
    "cli": {"*"},
    "cli_common": {"*"},
    "cli_health": {"*"},
    "cli_top": {"*"},
    "usage_cli": {"*"},
    "capture_cli": {"*"},
    "__init__": {"*"},
    "__main__": {"*"},
}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> Iterator[tuple[str, int]]:
    """Every fastproxy module ``path`` imports, with the line: top-level, lazy and
    type-only imports alike. ``from pkg import name`` names the submodule when ``name``
    is one, else the package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root.name:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != root.name:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else base), node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(path, root, modules):
            # An import of a package runs its __init__: the edge goes to the package.
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                edges.setdefault(target, line)
    return graph


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def forbidden_edges(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for src, edges in sorted(graph.items()):
        part = part_of(src)
        allowed = ALLOWED.get(part)
        if allowed is None:
            bad.append(f"{src}: part {part!r} has no rule in ALLOWED")
            continue
        if "*" in allowed:
            continue
        for dst, line in sorted(edges.items()):
            target = part_of(dst)
            if target != part and target not in allowed and target != "__init__":
                bad.append(f"{src}:{line} imports {dst} ({part} may not import {target})")
    return bad


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# -- the package --------------------------------------------------------------------------
def test_no_forbidden_imports() -> None:
    assert forbidden_edges(import_graph(ROOT)) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_every_part_has_a_rule() -> None:
    parts = {part_of(m) for m in import_graph(ROOT)}
    assert parts <= set(ALLOWED), sorted(parts - set(ALLOWED))


# -- the checker itself: it must see what it is meant to forbid -----------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fastproxy"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    ("source", "how"),
    [
        ("from ..admin.table import X\n", "top-level"),
        ("def f():\n    from ..admin import table\n", "lazy"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from fastproxy.admin.table import X\n",
            "type-only",
        ),
    ],
)
def test_checker_sees_a_data_plane_import_of_admin(tmp_path: Path, source: str, how: str) -> None:
    root = _tree(tmp_path, {"dataplane/cycle.py": source, "admin/table.py": "X = 1\n"})
    bad = forbidden_edges(import_graph(root))
    assert bad and "dataplane may not import admin" in bad[0], how


def test_checker_sees_a_cycle_through_a_type_only_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "dataplane/a.py": "from . import b\n",
            "dataplane/b.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .a import X\n",
        },
    )
    assert cycles(import_graph(root)) == [["fastproxy.dataplane.a", "fastproxy.dataplane.b"]]


def test_checker_allows_what_the_rules_allow(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "dataplane/cycle.py": "from ..core.seams import X\nfrom ..httpclient import pool\n",
            "core/seams.py": "X = 1\n",
            "httpclient/pool.py": "from ..core import seams\n",
        },
    )
    graph = import_graph(root)
    assert forbidden_edges(graph) == [] and cycles(graph) == []
