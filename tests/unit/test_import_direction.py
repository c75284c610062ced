"""Imports run one way: read from the source (every import statement, function-level ones too), nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, as written (`from a.b import c` gives a.b and a.b.c: c may be a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle found by a depth-first walk, as the path around it."""
    found, state = [], {}

    def walk(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(g[m]):
            if state.get(n) == "open":
                found.append(path[path.index(n):] + [n])
            elif n not in state:
                walk(n, path + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            walk(m, [m])
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_benchmarks_share_helpers_without_a_circle():
    g = graph("deploy")
    assert cycles(g) == []
    benches = {m for m in g if m.startswith("deploy.bench")}
    assert not g["deploy.benchlib"] & benches, "benchlib imports no benchmark"
    assert all("deploy.bench" not in g[m] for m in g), "nothing imports the dispatcher back"


def test_the_floor_of_cluster_imports_nothing_above_it():
    """cluster/ but its entry points (cluster/cli) is the floor: config, errors, ring, services, the client and the
    gRPC stubs it shares with the server. It imports neither router, shards nor deploy."""
    above = ("router", "shards", "deploy")
    for path in (ROOT / "cluster").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "cluster").parts:
            continue
        wrong = sorted(i for i in imports(path) if i.split(".")[0] in above)
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"
