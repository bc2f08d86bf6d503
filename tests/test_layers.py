"""The package layering holds: read every lbcdn module's imports and check the rules.

Nodes are lbcdn's top-level subpackages and top-level modules (`lbcdn.cache.store` counts as
`cache`, `lbcdn.logs` as `logs`). Every import counts, including those inside functions and
those under `if TYPE_CHECKING:` (a type-only import still couples two packages; the one place
that allows it is named below, with its reason). The direction inside lbcdn/edge is kept by
tests/edge/test_imports.py.

The layers, bottom up: configkit (the config toolkit) -> leaves and components (http,
routing, balancer, health, tls, logs, metrics, cache, upstream, bucket, dns, aiolistener, ...)
-> edge -> config (the root schema and loader, which import the components' config modules)
-> admin, control, daemon, workers, cli.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lbcdn"

# Where nothing above them may be imported: the schema (config) sits above every component, so
# components use the toolkit (configkit) and their own config modules, never lbcdn.config.
TOP: frozenset[str] = frozenset({"config", "admin", "control", "daemon", "workers", "cli",
                                 "__main__"})
BELOW_EDGE: frozenset[str] = frozenset({
    "http", "routing", "balancer", "health", "cache", "upstream", "bucket", "dns", "tls",
    "logs", "metrics", "aiolistener", "memo", "timers", "writebatch", "tasks", "atomicfile",
    "configkit", "demo", "acme", "ratelimit"})
# Import cycles between nodes that cannot be broken yet, as {(importer, imported): reason}.
KNOWN_CYCLES: dict[tuple[str, str], str] = {}


class Import:
    def __init__(self, module: str, target: str, line: int, type_only: bool) -> None:
        self.module = module        # the importing module, dotted
        self.target = target        # the imported lbcdn module (or package), dotted
        self.line = line
        self.type_only = type_only  # under `if TYPE_CHECKING:`

    def __repr__(self) -> str:
        kind = " (TYPE_CHECKING)" if self.type_only else ""
        return f"{self.module}:{self.line} imports {self.target}{kind}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or \
        (PACKAGE.parent / rel / "__init__.py").exists()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every lbcdn import in `source` (the text of `module`), wherever it is in the file."""
    tree = ast.parse(source)
    type_only = _type_checking_lines(tree)
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from lbcdn import writebatch` imports the module lbcdn.writebatch
            subs = [f"{origin}.{a.name}" for a in node.names]
            targets = [s if is_module(s) else origin for s in subs]
        for target in targets:
            if target == "lbcdn" or target.startswith("lbcdn."):
                yield Import(module, target, node.lineno, node.lineno in type_only)


def all_imports() -> list[Import]:
    out: list[Import] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        out += imports_of(path.read_text(encoding="utf-8"), module_name(path),
                          path.name == "__init__.py")
    return out


def node_of(dotted: str) -> str:
    """`lbcdn.cache.store` -> `cache`; `lbcdn.logs` -> `logs`; `lbcdn` -> `lbcdn`."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def node_graph(imports: list[Import]) -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        a, b = node_of(imp.module), node_of(imp.target)
        if a != b and b != "lbcdn":  # lbcdn/__init__.py holds only __version__
            graph.setdefault(a, {}).setdefault(b, []).append(imp)
    return graph


def find_cycle(graph: Mapping[str, Mapping[str, object]],
               skip: frozenset[tuple[str, str]] = frozenset()) -> list[str] | None:
    """One cycle of `graph` (a list of nodes, first == last), ignoring the `skip` edges."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if (node, nxt) in skip:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


IMPORTS = all_imports()
GRAPH = node_graph(IMPORTS)


def _uses(importer: str, imported: str) -> list[Import]:
    return GRAPH.get(importer, {}).get(imported, [])


def test_imports_are_read_from_every_kind_of_import_statement() -> None:
    source = ("from __future__ import annotations\n"
              "import lbcdn.tls\n"
              "from lbcdn import writebatch\n"
              "from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n"
              "    from lbcdn.upstream.pool import Pool\n"
              "def late() -> None:\n"
              "    from lbcdn.cache.store import MemoryStore\n"
              "from . import names\n")
    found = {(i.target, i.type_only) for i in imports_of(source, "lbcdn.configkit.reflect")}
    assert found == {("lbcdn.tls", False), ("lbcdn.writebatch", False),
                     ("lbcdn.upstream.pool", True), ("lbcdn.cache.store", False),
                     ("lbcdn.configkit.names", False)}


def test_the_cycle_finder_finds_a_cycle_and_honours_exceptions() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle(graph, frozenset({("c", "a")})) is None
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_the_config_toolkit_imports_nothing_else_from_lbcdn() -> None:
    bad = [i for i in IMPORTS if node_of(i.module) == "configkit"
           and node_of(i.target) != "configkit"]
    assert bad == []


def test_no_import_cycle_between_packages() -> None:
    stale = [edge for edge in KNOWN_CYCLES if not _uses(*edge)]
    assert stale == [], "known exceptions that no longer exist: remove them"
    cycle = find_cycle(GRAPH, frozenset(KNOWN_CYCLES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or []) + "\n" + "\n".join(
        repr(i) for a, b in zip(cycle or [], (cycle or [])[1:]) for i in _uses(a, b))


@pytest.mark.parametrize("low", sorted(BELOW_EDGE))
def test_components_and_leaves_import_neither_the_edge_nor_what_sits_above(low: str) -> None:
    bad = [i for above in TOP | {"edge"} for i in _uses(low, above)]
    assert bad == []


def test_admin_does_not_import_the_edge() -> None:
    assert _uses("admin", "edge") == []


def test_only_the_process_level_imports_the_daemon_and_the_workers() -> None:
    bad = [i for i in IMPORTS if node_of(i.target) in {"daemon", "workers", "control", "cli"}
           and node_of(i.module) not in {"daemon", "workers", "control", "cli", "__main__"}]
    assert bad == []


def test_admin_route_modules_share_keys_through_a_leaf_not_through_app_or_each_other() -> None:
    shared = {"lbcdn.admin.keys", "lbcdn.admin.state"}
    routes = {m for m in (module_name(p) for p in (PACKAGE / "admin").glob("*.py"))
              if m not in shared | {"lbcdn.admin", "lbcdn.admin.app"}}
    bad = [i for i in IMPORTS if i.module in routes
           and i.target.startswith("lbcdn.admin") and i.target not in shared]
    assert bad == []
    leaf = [i for i in IMPORTS if i.module in shared and i.target.startswith("lbcdn.admin")
            and i.target not in shared]
    assert leaf == []


def test_a_connection_reaches_its_pool_through_a_base_class() -> None:
    # The pool subclasses lbcdn.upstream.connection.ConnectionHome. Exempt: the type-only
    # import of Target, which names the class of `UpstreamConnection.target` for mypy and mypyc
    # (both compile the two modules together) and loads nothing at run time.
    bad = [i for i in IMPORTS if i.module == "lbcdn.upstream.connection"
           and i.target == "lbcdn.upstream.pool" and not i.type_only]
    assert bad == []
    assert [i for i in IMPORTS if i.module == "lbcdn.upstream.connection"
            and i.target == "lbcdn.upstream.pool"], "the exemption above is stale"
