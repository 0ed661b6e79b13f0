"""The training package imports in one direction: no module of megatron_dllm/train/ or
megatron_dllm/objectives/ imports, even inside a function, a module that imports it back (the loop
and evaluation imported each other until the objective redesign)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("megatron_dllm/train", "megatron_dllm/objectives")


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, known: set) -> set:
    """Modules of ``known`` that ``path`` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out - {_module(path)}


def import_graph() -> dict:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))]
    known = {_module(p) for p in files}
    return {_module(p): _imports(p, known) for p in files}


def cycles(graph: dict) -> list:
    """Every import cycle, as a list of module names (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_loop_and_evaluation_do_not_import_each_other():
    graph = import_graph()
    assert "megatron_dllm.train.evaluation" in graph["megatron_dllm.train.loop"]  # the one allowed direction
    assert "megatron_dllm.train.loop" not in graph["megatron_dllm.train.evaluation"]
    assert cycles(graph) == []
