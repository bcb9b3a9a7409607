"""The import graph of `songstep`, read with grimp (which sees function-level and TYPE_CHECKING
imports as well as module-level ones): no import cycles, and the layer contract declared in
pyproject.toml (`[tool.importlinter]`) holds when grimp checks it (independently of the
`lint-imports` run in test_quality)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself),
    by Tarjan's algorithm over `find_modules_directly_imported_by`, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.find_modules_directly_imported_by(node):
                    found.append(sorted(component))
    return found


def _graph():
    return grimp.build_graph("songstep", include_external_packages=False)


def test_the_cycle_finder_finds_cycles():
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e"), ("p.e", "p.d"),
                 ("p.f", "p.a")]:
        graph.add_import(importer=a, imported=b)
    graph.add_module("p.g")
    assert sorted(cycles(graph)) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]


def test_no_import_cycles():
    graph = _graph()
    assert len(graph.modules) > 40  # the real package, not an empty graph
    found = cycles(graph)
    chains = {
        tuple(c): graph.find_shortest_chain(importer=c[0], imported=c[1]) for c in found
    }
    assert not found, f"import cycles among songstep modules: {chains}"


def test_function_level_imports_are_in_the_graph():
    """The graph counts imports inside functions (a cycle hidden there would be found):
    `songstep.models.lm.load_lm` imports `songstep.models.lm_vllm` only inside `_load_vllm`."""
    graph = _graph()
    assert "songstep.models.lm_vllm" in graph.find_modules_directly_imported_by("songstep.models.lm")


def _layers() -> list[tuple[list[tuple[str, bool]], bool]]:
    """pyproject's layer contract as [([(module, optional)], independent)], top layer first
    (import-linter's syntax: `|` separates independent siblings, `:` siblings that may import
    each other, parentheses an optional module)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    out = []
    for layer in contract["layers"]:
        names = [n.strip() for n in re.split(r"[:|]", layer)]
        out.append(([(n.strip("()"), n.startswith("(")) for n in names], "|" in layer))
    return out


def test_layer_contract_holds():
    graph = _graph()
    layers = []
    for layer, independent in _layers():
        present = [name for name, optional in layer if name in graph.modules]
        missing = [name for name, optional in layer if not optional and name not in graph.modules]
        assert not missing, f"layer modules named in pyproject.toml do not exist: {missing}"
        if present:
            layers.append(grimp.Layer(*present, independent=independent))
    assert len(layers) >= 6
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert not illegal, "a module imports from a layer above it: " + "; ".join(
        f"{d.importer} -> {d.imported}: {[r.line_numbers for r in d.routes]}" for d in illegal
    )


def test_layer_check_finds_an_upward_import():
    """The same check on the real graph plus one import from the models layer up to the pipeline
    reports it."""
    graph = _graph()
    graph.add_import(importer="songstep.models.dit", imported="songstep.pipeline.core")
    layers = [grimp.Layer("songstep.pipeline", independent=False), grimp.Layer("songstep.models", independent=False)]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert [(d.importer, d.imported) for d in illegal] == [("songstep.models", "songstep.pipeline")]
