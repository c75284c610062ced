"""The import rules of docs/architecture.md, read from the code itself (ast; no new dependency).

- router/ is a stack of packages: each imports only packages below it (and itself), never above or beside, not
  even for type checking; router/__init__.py, which runs before every router module, imports no router package;
- only router.serving imports fastapi, starlette, ray.serve or grpc (cluster.client and cluster.services, the
  floor's own client and server launcher, speak gRPC too); Ray only where an actor is defined or called (RAY_HOMES,
  the edge, the roof); the pure packages (PURE) import neither Ray, Milvus, Elasticsearch, httpx nor torch;
- shards/ imports nothing from router/, and cluster's floor (everything but cluster.cli) nothing from router,
  shards or deploy;
- every spelling counts: `import`, `from`, relative, inside functions, classes and try blocks, and
  `importlib.import_module` / `__import__` / `runpy.run_module` / `pkgutil.resolve_name` of a literal name; below
  the roof (deploy, cluster.cli) no module is imported by a name made at run time, which no rule could read;
- no import circle among prism's modules, counting the package __init__s an import runs (imports under
  `if TYPE_CHECKING:` are for annotations only and are not counted here);
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
LOADERS = ("import_module", "__import__", "run_module", "resolve_name")
DYNAMIC = "<a module named at run time>"  # import_module(f"...{x}"): below the roof every import names its module
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


def _loader(func: ast.AST, loaders: set[str]) -> bool:
    """`importlib.import_module`, `__import__`, `runpy.run_module`, `pkgutil.resolve_name` or a name bound to one."""
    if isinstance(func, ast.Name):
        return func.id in loaders
    return isinstance(func, ast.Attribute) and func.attr in LOADERS


def imports(path: Path, module: str, known: set[str] | frozenset[str] = frozenset()) -> tuple[set[str], set[str]]:
    """(every module this file imports, at any depth, resolved; those imported only for type checking).

    `from package import name` counts as importing the module package.name when that is one of `known`, else the
    package (whose __init__ then holds `name`); of another project's package, both (`from ray import serve` imports
    ray.serve). `importlib.import_module("a.b")`, `__import__("a.b")`, `runpy.run_module("a.b")` and
    `pkgutil.resolve_name("a.b:x")` import a.b; with a name made at run time they import DYNAMIC."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    typing_only: set[str] = set()
    loaders = set(LOADERS)  # names that import a module given as a string (and local names bound to one)

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
                if base.split(".")[0] not in TOP:  # another project's: `from ray import serve` is ray.serve
                    add(sub, into)
                if a.name in LOADERS:  # from importlib import import_module as load
                    loaders.add(a.asname or a.name)
        elif isinstance(node, ast.Call) and _loader(node.func, loaders):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):  # import_module("router.serving.app")
                name = arg.value.partition(":")[0]  # resolve_name("a.b:attr")
                if name.startswith("."):
                    dots = len(name) - len(name.lstrip("."))
                    up = package.split(".")[: len(package.split(".")) - (dots - 1)]
                    name = ".".join(up + ([name.lstrip(".")] if name.lstrip(".") else []))
                add(name, into)
            else:
                add(DYNAMIC, into)
        visit(node, into)

    visit(tree, found)
    return found, typing_only - found


SOURCES = _sources()
GRAPH = {m: imports(p, m, set(SOURCES)) for m, p in SOURCES.items()}
Graph = dict[str, tuple[set[str], set[str]]]


def _layer(pkg: str) -> int:
    for i, row in enumerate(ROUTER_LAYERS):
        if pkg in row:
            return i
    raise AssertionError(f"router.{pkg} is in no layer of ROUTER_LAYERS (docs/architecture.md)")


def _roof(m: str) -> bool:
    return m.split(".")[0] == "deploy" or _cli(m)


def loose_router_modules(known: set[str] | dict) -> list[str]:
    """Modules (and packages) directly under router/ that are in no package of the stack."""
    return sorted(m for m in known if m.startswith("router.") and m.count(".") == 1 and m.split(".")[1] not in
                  set().union(*ROUTER_LAYERS))


def layer_violations(graph: Graph, known: set[str] | dict) -> list[str]:
    """Router modules importing a router package above or beside their own, the roof, or (router/__init__.py,
    which runs before every router module) any router package. Imports for type checking count: an annotation
    naming an upper package's type is a dependency on it all the same."""
    bad = []
    for m, (found, typing_only) in graph.items():
        if m != "router" and not m.startswith("router."):
            continue
        for n in {x for x in found | typing_only if x in known}:
            if _roof(n):
                bad.append(f"{m} -> {n}")
            elif m == "router":
                if n.startswith("router."):
                    bad.append(f"{m} -> {n}")
            elif n == "router":
                bad.append(f"{m} -> router")
            elif n.startswith("router.") and n.split(".")[1] != m.split(".")[1]:
                if _layer(n.split(".")[1]) <= _layer(m.split(".")[1]):
                    bad.append(f"{m} -> {n}")
    return sorted(bad)


def edge_violations(graph: Graph) -> list[str]:
    """Modules outside the serving edge, the roof, the proto stubs and EDGE_EXCEPTIONS importing a web or RPC
    framework."""
    bad = []
    for m, (found, typing_only) in graph.items():
        if m.startswith(("router.serving.", "cluster.proto.")) or m in ("router.serving", "cluster.proto") or \
                _roof(m) or m in EDGE_EXCEPTIONS:
            continue
        for n in found | typing_only:
            if any(n == e or n.startswith(e + ".") for e in EDGE_ONLY):
                bad.append(f"{m} -> {n}")
    return sorted(bad)


def floor_violations(graph: Graph, known: set[str] | dict) -> list[str]:
    """shards importing router or the roof; cluster's floor importing router, shards or the roof."""
    bad = []
    for m, (found, typing_only) in graph.items():
        names = {n for n in found | typing_only if n in known}
        top = m.split(".")[0]
        if top == "shards":
            bad += [f"{m} -> {n}" for n in names if n.split(".")[0] == "router" or _roof(n)]
        elif top == "cluster" and not _cli(m):
            bad += [f"{m} -> {n}" for n in names if n.split(".")[0] in ("router", "shards") or _roof(n)]
    return sorted(bad)


RAY_HOMES = ("shards.actor", "router.replication.ray_sequencer")  # where an actor is defined (and the edge, the roof)
PURE = ("ranking", "routing", "schema", "filters")  # docs/architecture.md: no I/O, no cluster framework
IO_LIBS = ("ray", "pymilvus", "elasticsearch", "httpx", "torch")


def _imports_lib(names: set[str], libs: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == lib or n.startswith(lib + ".") for lib in libs))


def ray_violations(graph: Graph) -> list[str]:
    """Ray imported outside the modules that define or call an actor: RAY_HOMES, the serving edge and the roof."""
    return [f"{m} -> {n}" for m, (found, typing_only) in sorted(graph.items())
            if not (m in RAY_HOMES or m == "router.serving" or m.startswith("router.serving.") or _roof(m))
            for n in _imports_lib(found | typing_only, ("ray",))]


def purity_violations(graph: Graph) -> list[str]:
    """A pure router package (PURE) importing Ray, Milvus, Elasticsearch, an HTTP client or torch."""
    return [f"{m} -> {n}" for m, (found, typing_only) in sorted(graph.items())
            if m.startswith("router.") and m.split(".")[1] in PURE for n in _imports_lib(found | typing_only, IO_LIBS)]


def dynamic_violations(graph: Graph) -> list[str]:
    """Below the roof, an import whose module is made at run time, which no rule here can read."""
    return sorted(m for m, (found, _) in graph.items() if DYNAMIC in found and not _roof(m))


def test_every_router_module_is_in_a_package_of_the_stack():
    assert loose_router_modules(SOURCES) == [], "modules directly under router/: put each in a package by its job"


def test_no_python_package_outside_the_four_the_rules_read():
    """A module at the repository's root or a new top-level package would be under none of these rules."""
    skip = (*TOP, "tests", "build", "dist")  # build/ and dist/: what packaging writes, copies of the four
    stray = [p.name for p in ROOT.glob("*.py")] + [
        d.name for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in skip and
        not d.name.endswith(".egg-info") and next(d.rglob("*.py"), None) is not None]
    assert sorted(stray) == [], "put it in router, shards, cluster or deploy (and in docs/architecture.md)"


def test_router_packages_import_only_packages_below_them():
    assert layer_violations(GRAPH, SOURCES) == []


def test_only_the_serving_edge_imports_web_and_rpc_frameworks():
    assert edge_violations(GRAPH) == []


def test_shards_and_the_cluster_floor_import_nothing_above_them():
    assert floor_violations(GRAPH, SOURCES) == []


def test_ray_is_imported_only_where_an_actor_is_defined_or_called():
    assert ray_violations(GRAPH) == []


def test_the_pure_packages_import_no_framework_and_do_no_io():
    assert purity_violations(GRAPH) == []


def test_below_the_roof_every_import_names_its_module():
    assert dynamic_violations(GRAPH) == []


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


def runtime_graph(graph: Graph, known: set[str] | dict) -> dict[str, set[str]]:
    """Module -> prism's modules it runs on import: each one it imports, and that one's packages (importing a.b.c
    runs a/__init__ and a/b/__init__ first) except the importer's own, which are running already."""
    out = {}
    for m, (found, _) in graph.items():
        own = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
        deps = set()
        for n in found:
            parts = n.split(".")
            deps |= {x for x in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if x in known and x not in own}
        out[m] = deps - {m}
    return out


def test_no_import_circle():
    assert _cycles(runtime_graph(GRAPH, SOURCES)) == []


# -- the rules' own tests: each hole once found slips past no more -----------------------------------------------
def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_a_circle_through_a_package_init_is_found():
    """a/__init__ imports b.x, which imports a.y: importing a.y runs a/__init__, which needs b.x, which needs a.y."""
    graph = {"a": ({"b.x"}, set()), "a.y": (set(), set()), "b": (set(), set()), "b.x": ({"a.y"}, set())}
    assert _cycles(runtime_graph(graph, set(graph))) == [["a", "b.x"]]
    # a module's own packages are running when it is imported: no circle
    graph = {"a": ({"a.y"}, set()), "a.y": ({"a.z"}, set()), "a.z": (set(), set())}
    assert _cycles(runtime_graph(graph, set(graph))) == []


def test_imports_are_read_at_every_depth_and_type_checking_is_apart(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n    from router.a import X\n"
                   "def f():\n    from shards.api import Y\n    from router.collection import limits\n")
    found, typing_only = imports(src, "router.x.m", {"router.collection.limits"})
    assert {"os", "shards.api", "router.collection.limits"} <= found and "router.collection" not in found
    assert typing_only == {"router.a"}


def _graph_of(tmp_path: Path, files: dict[str, str]) -> tuple[Graph, set[str]]:
    """The import graph of `files` (module -> source), written under tmp_path as they would be in the repository."""
    known = set(files)
    paths = {}
    for m, text in files.items():
        is_pkg = text.startswith("# package")
        p = tmp_path.joinpath(*m.split("."), "__init__.py") if is_pkg else \
            tmp_path.joinpath(*m.split(".")).with_suffix(".py")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        paths[m] = p
    return {m: imports(p, m, known) for m, p in paths.items()}, known


LOWER = "router.filters.dsl"  # a module at the bottom of the stack
ROUTER_BASE = {"router": "# package\n", "router.serving": "# package\n", "router.serving.app": "",
               "router.filters": "# package\n", "router.ranking": "# package\n", "router.ranking.merge": "",
               "shards": "# package\n", "shards.api": "", "cluster": "# package\n", "cluster.errors": "",
               "deploy": "# package\n", "deploy.bench": ""}


@pytest.mark.parametrize("source", [
    "import router.serving.app",
    "import router.serving.app as x",
    "from router.serving import app",
    "from router.serving.app import build_app",
    "from .. import serving",
    "from ..serving.app import build_app",
    "from router import serving",
    "def f():\n    from router.serving import app",
    "class C:\n    import router.serving.app",
    "try:\n    import router.serving.app\nexcept ImportError:\n    pass",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from router.serving.app import Ingress",
    "import importlib\nimportlib.import_module('router.serving.app')",
    "from importlib import import_module\nimport_module('router.serving.app')",
    "from importlib import import_module as load\nload('router.serving.app')",
    "__import__('router.serving.app')",
    "import runpy\nrunpy.run_module('router.serving.app')",
    "import pkgutil\npkgutil.resolve_name('router.serving.app:build_app')",
    "from runpy import run_module as run\nrun('router.serving.app')",
    "import importlib\nimportlib.import_module('..serving.app', __package__)",
    "import router.ranking.merge",  # beside: ranking and filters are on rows of their own, ranking above
    "import deploy.bench",
])
def test_a_step_up_in_any_spelling_is_found(tmp_path, source):
    graph, known = _graph_of(tmp_path, {**ROUTER_BASE, LOWER: source + "\n"})
    assert [v for v in layer_violations(graph, known) if v.startswith(LOWER)], (source, graph[LOWER])


def test_router_init_runs_before_every_router_module_so_it_imports_no_router_package(tmp_path):
    graph, known = _graph_of(tmp_path, {**ROUTER_BASE, "router": "# package\nfrom router.serving import app\n"})
    assert layer_violations(graph, known) == ["router -> router.serving.app"]


def test_a_module_or_package_outside_the_stack_is_found(tmp_path):
    assert loose_router_modules({"router", "router.helpers", "router.newjob", "router.newjob.x",
                                 "router.filters.dsl"}) == ["router.helpers", "router.newjob"]
    graph, known = _graph_of(tmp_path, {**ROUTER_BASE, "router.newjob": "# package\n",
                                        LOWER: "from router.newjob import thing\n"})
    with pytest.raises(AssertionError, match="router.newjob is in no layer"):
        layer_violations(graph, known)


@pytest.mark.parametrize("source", ["from router import serving", "import router.serving.app", "from router import x",
                                    "import importlib\nimportlib.import_module('router.serving.app')",
                                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import router"])
def test_shards_importing_router_in_any_spelling_is_found(tmp_path, source):
    graph, known = _graph_of(tmp_path, {**ROUTER_BASE, "shards.actor": source + "\n"})
    assert [v for v in floor_violations(graph, known) if v.startswith("shards.actor")], source


@pytest.mark.parametrize("source", ["from ray import serve", "import ray.serve", "from ray.serve.handle import X",
                                    "import fastapi", "from starlette.requests import Request", "from grpc import aio",
                                    "import importlib\nimportlib.import_module('fastapi')"])
def test_a_framework_below_the_edge_in_any_spelling_is_found(tmp_path, source):
    graph, known = _graph_of(tmp_path, {**ROUTER_BASE, "router.ranking.merge": source + "\n"})
    assert [v for v in edge_violations(graph) if v.startswith("router.ranking.merge")], source
    graph, known = _graph_of(tmp_path, {**ROUTER_BASE, "router.serving.app": source + "\n"})
    assert edge_violations(graph) == []


def test_a_module_named_at_run_time_is_refused_below_the_roof(tmp_path):
    source = "import importlib\ndef load(x):\n    return importlib.import_module(f'router.{x}')\n"
    graph, _ = _graph_of(tmp_path, {**ROUTER_BASE, LOWER: source, "deploy.bench": source})
    assert dynamic_violations(graph) == [LOWER]


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if GENERATED not in m))
def test_no_module_over_450_lines(module):
    lines = len(SOURCES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{SOURCES[module].relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("source", ["import ray", "from ray import get", "from ray.util import x",
                                    "import importlib\nimportlib.import_module('ray')"])
def test_ray_outside_its_homes_is_found(tmp_path, source):
    graph, _ = _graph_of(tmp_path, {**ROUTER_BASE, "router.ranking.merge": source + "\n",
                                    "router.replication.ray_sequencer": source + "\n", "shards.actor": source + "\n"})
    found = graph["router.ranking.merge"][0]
    assert ray_violations(graph) == [f"router.ranking.merge -> {n}" for n in sorted(found) if n.split(".")[0] == "ray"]
    assert ray_violations(graph)
    assert purity_violations(graph) == ray_violations(graph)


def test_milvus_elasticsearch_or_http_in_a_pure_package_is_found(tmp_path):
    graph, _ = _graph_of(tmp_path, {**ROUTER_BASE, LOWER: "from pymilvus import MilvusClient\nimport httpx\n",
                                    "router.ranking.merge": "from elasticsearch import AsyncElasticsearch\n"})
    assert purity_violations(graph) == ["router.filters.dsl -> httpx", "router.filters.dsl -> pymilvus",
                                        "router.filters.dsl -> pymilvus.MilvusClient",
                                        "router.ranking.merge -> elasticsearch",
                                        "router.ranking.merge -> elasticsearch.AsyncElasticsearch"]


def test_the_benchmarks_share_helpers_without_importing_each_other_back():
    """deploy/benchlib.py is the benchmarks' shared helper module: it imports no benchmark, and nothing imports the
    dispatcher (deploy/bench.py) back (they once made a circle of seven)."""
    deploy = {m: {n for n in GRAPH[m][0] | GRAPH[m][1] if n in SOURCES and n.startswith("deploy")}
              for m in SOURCES if m.startswith("deploy")}
    benches = {m for m in deploy if m.startswith("deploy.bench")}
    assert "deploy.benchlib" in deploy and len(benches) > 10
    assert not deploy["deploy.benchlib"] & benches, "benchlib imports no benchmark"
    assert [m for m in deploy if "deploy.bench" in deploy[m]] == [], "nothing imports the dispatcher back"
