"""The package's layout keeps its promises (ARCHITECTURE.md): no import cycle
inside shmlog/, imports flow one way between the role subpackages, no Python
file over 800 lines and no C file over 1000, and no role wired in through an
`except ImportError` plugin hook."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "shmlog"

# which subpackage may import which (shared top-level modules: anyone)
SHARED = {"errors", "config", "protocol", "osutil"}
ALLOWED = {
    "core": {"core"},
    "client": {"client", "core"},
    "broker": {"broker", "core"},
    "kafka": {"kafka", "client", "core"},
    "bridge": {"bridge", "client", "core"},
    "cli": {"cli", "client", "broker", "core", "kafka", "bridge"},
}
# the optional extra's client library is the one ImportError that may be
# caught: reported to the user with the extra to install, never silent wiring
OPTIONAL_DEPENDENCY_FILES = {"shmlog/bridge/kafka_client.py"}
MAX_PY_LINES = 800
MAX_C_LINES = 1000


def _modname(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(pkg: Path) -> Dict[str, Set[str]]:
    """{module: modules of the package it imports} from every import statement
    in the file, top level or not (a lazy import still ties the two)."""
    files = {_modname(p): p for p in pkg.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rsplit(".", 1)[0]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                deps.add(base)
                deps |= {f"{base}.{a.name}" for a in node.names}
        graph[mod] = {d for d in deps if d in files and d != mod and not mod.startswith(d + ".")
                      and d != "shmlog"}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    # the check below is only as good as this function: it must see a cycle
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    found = cycles(import_graph(PKG))
    assert not found, f"import cycles inside shmlog/: {found}"


def _role(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_flow_one_way_between_roles():
    bad = []
    for mod, deps in import_graph(PKG).items():
        role = _role(mod)
        if role not in ALLOWED:
            continue  # the top-level modules: __init__ (the public API), shared modules
        for d in deps:
            target = _role(d)
            if target in SHARED or target == "":
                continue
            if target not in ALLOWED[role]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports against the flow cli -> client/kafka/bridge -> core, broker -> core:\n" + \
        "\n".join(sorted(bad))


def test_shared_modules_import_no_role():
    for name in SHARED:
        deps = import_graph(PKG).get(f"shmlog.{name}", set())
        roles = {_role(d) for d in deps} - SHARED - {""}
        assert not roles, f"shmlog.{name} is shared by every role and must not import {roles}"


@pytest.mark.parametrize("suffixes,limit", [
    ((".py",), MAX_PY_LINES),
    # TEMPORARY, removed when the csplit branch lands: csrc/log.c is being split by concern
    pytest.param((".c", ".h"), MAX_C_LINES, marks=pytest.mark.xfail(reason="log.c split in progress", strict=False)),
])
def test_no_file_over_the_size_limit(suffixes, limit):
    tops = [PKG] if suffixes == (".py",) else [ROOT / "csrc"]
    long_files = []
    for top in tops:
        for path in top.rglob("*"):
            if path.suffix in suffixes and path.name != "_core.c":
                n = path.read_text().count("\n")
                if n > limit:
                    long_files.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long_files, f"files over {limit} lines (split them by concern): {long_files}"


def test_no_role_is_wired_through_an_import_error():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                if names & {"ImportError", "ModuleNotFoundError"} and rel not in OPTIONAL_DEPENDENCY_FILES:
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"roles must be imported explicitly, not tried: {offenders}"
