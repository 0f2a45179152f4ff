"""The package's layers: every import (function-level ones too) goes down or sideways, never up,
and no two modules import each other, however indirectly (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "correcteur"

# Bottom to top. A module may import modules of its own layer or of the layers below it.
LAYERS = [
    ("text", {"errors", "files", "prompt", "textdiff", "edits", "mask", "textfiles"}),
    ("models", {"model", "llama", "lora", "generate", "precision", "scoring"}),
    ("loading", {"fetch", "tokenizer", "weights"}),
    ("data", {"augment", "data"}),
    ("training", {"batches", "checkpoint", "distributed", "train"}),
    ("correction", {"candidates", "guard", "choose", "correct"}),
    ("evaluation", {"baselines", "metrics", "judge", "respond", "guard_tuning", "choose_tuning", "evaluate"}),
    ("use", {"app", "export", "pipeline", "serve", "documents", "cli", "__main__", "__init__"}),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
NO_TORCH = LAYERS[0][1]


def imports_of(path: Path) -> set[str]:
    """Every module of the package `path` imports, wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "correcteur":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("correcteur."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("correcteur.")}
    return found


def third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


GRAPH = {path.stem: imports_of(path) for path in sorted(PACKAGE.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return trail[trail.index(child):] + [child]
            if child not in state and (cycle := visit(child, [*trail, child])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_every_module_has_a_layer():
    assert set(GRAPH) == set(LAYER_OF), "add new modules to LAYERS here and in docs/architecture.md"


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down(module):
    upward = {name for name in GRAPH[module] if LAYER_OF[name] > LAYER_OF[module]}
    assert not upward, f"{module} ({LAYERS[LAYER_OF[module]][0]}) imports from a higher layer: {upward}"


def test_text_layer_needs_no_torch():
    for module in NO_TORCH:
        assert "torch" not in third_party_imports(PACKAGE / f"{module}.py"), module


def test_models_import_no_loader():
    for module in LAYERS[1][1]:
        assert not GRAPH[module] & LAYERS[2][1], module


def test_the_cycle_finder_finds_cycles():
    """The check above could pass by never looking: a graph with a cycle must fail it."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert imports_of(PACKAGE / "correct.py") >= {"guard", "checkpoint"}
