"""The edge's modules import one another in one direction only: listener -> connection (the
protocol adapter) -> exchange -> the cache pieces -> the shared leaf (lbcdn.edge.stream). A new
protocol is then a new adapter above the exchange, and nothing below it knows which protocol
it serves.

Read from the sources (ast), so an import anywhere in a module counts, inside functions too.
Imports under `if TYPE_CHECKING:` are left out: they exist for annotations only and run never.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parents[2] / "lbcdn" / "edge"

# Top to bottom: a module imports only modules of the layers below its own, or of its own
# layer without a cycle.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("listener",),
    ("proxy_gate",),
    ("tls_gate",),
    ("connection", "h2connection"),
    ("exchange",),
    ("cache_flow", "route_actions", "policy"),
    ("passthrough", "miss_job", "slice_flow"),
    ("fill_sender", "origin_fetch"),
    ("cache_hit",),
    ("accounting", "mirror"),
    ("stream", "config"),
)


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Modules of lbcdn.edge imported outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and \
                node.test.id == "TYPE_CHECKING":
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "lbcdn.edge":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("lbcdn.edge."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lbcdn.edge."):
                    found.add(alias.name.split(".")[2])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def edge_imports() -> dict[str, set[str]]:
    return {p.stem: _runtime_imports(ast.parse(p.read_text(), str(p)))
            for p in sorted(EDGE.glob("*.py")) if p.stem != "__init__"}


def violations(imports: dict[str, set[str]],
               layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """What breaks the rule: a module in no layer, an import upwards, or a cycle."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    out = [f"{m} is in no layer of tests/edge/test_imports.py" for m in imports if m not in rank]
    for module, targets in sorted(imports.items()):
        for target in sorted(targets):
            if target in rank and module in rank and rank[target] < rank[module]:
                out.append(f"{module} imports {target}, a layer above it")
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(imports.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                out.append("import cycle: " + " -> ".join(cycle))
            elif target not in state:
                walk(target, path + [target])
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            walk(module, [module])
    return out


def test_edge_imports_flow_one_way() -> None:
    imports = edge_imports()
    assert "exchange" in imports and "stream" in imports
    assert violations(imports) == []


def test_the_leaf_and_the_exchange_know_no_connection() -> None:
    imports = edge_imports()
    assert imports["stream"] == set()
    assert "connection" not in imports["exchange"]


@pytest.mark.parametrize(("imports", "expected"), [
    ({"exchange": {"connection"}, "connection": set()},
     ["exchange imports connection, a layer above it"]),
    ({"miss_job": {"passthrough"}, "passthrough": {"miss_job"}},
     ["import cycle: miss_job -> passthrough -> miss_job"]),
    ({"h2": set()}, ["h2 is in no layer of tests/edge/test_imports.py"]),
])
def test_the_check_finds_what_breaks_the_rule(imports: dict[str, set[str]],
                                              expected: list[str]) -> None:
    assert violations(imports) == expected


def test_type_checking_imports_do_not_count() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nimport lbcdn.edge.stream\n"
                     "if TYPE_CHECKING:\n    from lbcdn.edge.listener import Listener\n"
                     "def f():\n    from lbcdn.edge import exchange\n")
    assert _runtime_imports(tree) == {"stream", "exchange"}
