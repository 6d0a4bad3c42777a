"""The import graph: no module cycle, and the packages layered as docs/design.md draws them
(envs at the bottom, then agents, protocols, analysis, evolution). Read from the source with
`ast`, every import counted wherever it stands (a lazy import inside a function is an
import too); only `if TYPE_CHECKING:` blocks, which never run, are passed over."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "agents", "protocols", "analysis", "evolution")      # lowest first
MAY_IMPORT = {"envs": set(), "agents": {"envs"}, "protocols": {"envs", "agents"},
              "analysis": {"envs", "agents"}, "evolution": {"envs", "agents", "protocols", "analysis"}}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _imports(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(ast.Module(body=node.orelse, type_ignores=[]))
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {t for t in _imports(ast.parse(p.read_text())) if t in mods and t != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_in_a_cycle():
    assert cycles(import_graph()) == []


def test_packages_import_only_the_layers_below():
    wrong = sorted(f"{a} -> {b}" for a, bs in import_graph().items() for b in bs
                   if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in MAY_IMPORT[a.split(".")[0]])
    assert wrong == []


def test_the_check_sees_a_cycle_and_an_upward_import():
    """The checks above are not vacuous: a planted cycle and the old upward imports are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    g = import_graph()
    assert "agents.placement" in g["agents.population"] and "envs.world" in g["protocols.base"]
    tree = ast.parse("def f():\n    from protocols.base import Claim\n")
    assert "protocols.base" in set(_imports(tree))      # a lazy import counts
