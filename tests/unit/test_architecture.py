"""The import rules of docs/architecture.md, read from the code itself (ast; no new dependency).

- router/ is a stack of packages: each imports only packages below it (and itself), never above or beside;
- only router.serving imports fastapi, starlette, ray.serve or grpc (cluster.client and cluster.services, the
  floor's own client and server launcher, speak gRPC too);
- shards/ imports nothing from router/, and cluster's floor (everything but cluster.cli) nothing from router,
  shards or deploy;
- no import circle among prism's modules (imports under `if TYPE_CHECKING:` are for annotations only and are not
  counted);
- no module over 450 lines (generated protobuf stubs aside).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("router", "shards", "cluster", "deploy")

# Top to bottom. A package may import the packages on the rows below its own; packages on one row not each other.
ROUTER_LAYERS = [
    {"serving"},
    {"collection"},
    {"metadata", "encoding"},
    {"replication", "ranking", "routing"},
    {"schema"},
    {"filters"},
]
EDGE_ONLY = ("fastapi", "starlette", "ray.serve", "grpc")
EDGE_EXCEPTIONS = {"cluster.client", "cluster.services"}  # the floor's gRPC client and the server launcher
GENERATED = "_pb2"
MAX_LINES = 450


def _cli(name: str) -> bool:
    return name == "cluster.cli" or name.startswith("cluster.cli.")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for top in TOP:
        for p in sorted((ROOT / top).rglob("*.py")):
            out[_module(p)] = p
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path, module: str, known: set[str] | frozenset[str] = frozenset()) -> tuple[set[str], set[str]]:
    """(every module this file imports, at any depth, resolved; those imported only for type checking).

    `from package import name` counts as importing the module package.name when that is one of `known`, else the
    package (whose __init__ then holds `name`)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    typing_only: set[str] = set()

    def add(name: str, into: set[str]) -> None:
        into.add(name)

    def visit(node: ast.AST, into: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.body:
                    visit_stmt(sub, typing_only)
                for sub in child.orelse:
                    visit_stmt(sub, into)
                continue
            visit_stmt(child, into)

    def visit_stmt(node: ast.AST, into: set[str]) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, into)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # `from router.collection import limits` imports the module router.collection.limits
                sub = f"{base}.{a.name}"
                add(sub if sub in known else base, into)
        visit(node, into)

    visit(tree, found)
    return found, typing_only - found


SOURCES = _sources()
GRAPH = {m: imports(p, m, set(SOURCES)) for m, p in SOURCES.items()}


def _ours(names: set[str]) -> set[str]:
    return {n for n in names if n in SOURCES}


def _layer(pkg: str) -> int:
    for i, row in enumerate(ROUTER_LAYERS):
        if pkg in row:
            return i
    raise AssertionError(f"router.{pkg} is in no layer of ROUTER_LAYERS (docs/architecture.md)")


def test_every_router_module_is_in_a_package_of_the_stack():
    loose = [m for m in SOURCES if m.startswith("router.") and m.count(".") == 1 and m.split(".")[1] not in
             set().union(*ROUTER_LAYERS)]
    assert loose == [], f"modules directly under router/ (put each in a package by its job): {loose}"


def test_router_packages_import_only_packages_below_them():
    bad = []
    for m, (found, _) in GRAPH.items():
        if not m.startswith("router."):
            continue
        mine = _layer(m.split(".")[1])
        for n in _ours(found):
            if n.startswith("router.") and n.count(".") >= 1 and n.split(".")[1] != m.split(".")[1]:
                if _layer(n.split(".")[1]) <= mine:
                    bad.append(f"{m} -> {n}")
            elif n == "router":
                bad.append(f"{m} -> router")
            elif n.split(".")[0] == "deploy" or _cli(n):
                bad.append(f"{m} -> {n}")
    assert bad == []


def test_only_the_serving_edge_imports_web_and_rpc_frameworks():
    bad = []
    for m, (found, typing_only) in GRAPH.items():
        if m.startswith(("router.serving", "deploy", "cluster.proto")) or _cli(m) or m in EDGE_EXCEPTIONS:
            continue
        for n in found | typing_only:
            if any(n == e or n.startswith(e + ".") for e in EDGE_ONLY):
                bad.append(f"{m} -> {n}")
    assert bad == []


def test_shards_and_the_cluster_floor_import_nothing_above_them():
    bad = []
    for m, (found, typing_only) in GRAPH.items():
        names = _ours(found | typing_only)
        if m.startswith("shards"):
            bad += [f"{m} -> {n}" for n in names if n.split(".")[0] in ("router", "deploy") or
                    _cli(n)]
        elif m.startswith("cluster") and not _cli(m):
            bad += [f"{m} -> {n}" for n in names if n.split(".")[0] in ("router", "shards", "deploy") or
                    _cli(n)]
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def _runtime_graph() -> dict[str, set[str]]:
    graph = {}
    for m, (found, _) in GRAPH.items():
        deps = set()
        for n in _ours(found):
            if n == m:
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            deps.add(n)
        graph[m] = deps
    return graph


def test_no_import_circle():
    assert _cycles(_runtime_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_at_every_depth_and_type_checking_is_apart(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n    from router.a import X\n"
                   "def f():\n    from shards.api import Y\n    from router.collection import limits\n")
    found, typing_only = imports(src, "router.x.m", {"router.collection.limits"})
    assert {"os", "shards.api", "router.collection.limits"} <= found and "router.collection" not in found
    assert typing_only == {"router.a"}


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if GENERATED not in m))
def test_no_module_over_450_lines(module):
    lines = len(SOURCES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{SOURCES[module].relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"
