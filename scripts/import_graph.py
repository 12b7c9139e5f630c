"""The import graph of src/hafrm: each module's imports within the package, cycles, and edges that point up.

    python scripts/import_graph.py            # print the graph, the cycles and the upward edges
    python scripts/import_graph.py --strict   # exit status 1 on a cycle, an upward edge or a module in no layer

Imports are read with `ast`, so an import inside a function counts as much as one at the top of the
file (it is marked `*`); text in docstrings does not. Modules sit in the layers of `LAYERS`, lowest
first: a module may import from its own layer or a lower one, and an import of a higher layer is "up".
Cycles are found whatever the layers (two modules of one layer that import each other are still a cycle).
A module that no layer names is listed, so that the list keeps up with the code.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
from pathlib import Path

PACKAGE = "hafrm"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest first; names are module paths below hafrm (fnmatch patterns). Why each layer sits where it does:
LAYERS = [
    # leaves that everything may use: field parsing, settings dataclasses (and the loss names they list), paths,
    # devices, optional extras, the run directory and its record, the numerical guard, pure losses and figures, attention masks
    (
        "base",
        "__init__ fields config default_model devices extras writes rundir runrecord guard losses metrics selection plots masks known_warnings".split(),
    ),
    # reading, normalising, tokenising and collating pairs: imports nothing of hafrm outside data/
    ("data", ["data", "data.*"]),
    # the network and what is computed from it: forward, row layouts, freezing, reference log-probs, load/save
    ("model", "model layout inference prefix_scoring finetune prefix_cache reference checkpoint modelcard".split()),
    # checks of settings and inputs before anything runs (preflight reads a run's checkpoint config)
    ("checks", ["validation", "preflight"]),
    # one batch -> loss, the Trainer subclass, the training entry point
    ("training", ["objective", "trainer", "train"]),
    # scored preference sets and reward models (evaluate reads the run's validation split from train)
    ("scoring", ["scoring", "evaluate", "rewardbench"]),
    # what an experiment's runs are: spec, training configs and directories, the headline figure
    ("experiment runs", ["experiment_runs"]),
    # using the reward model: best-of-N, RLHF, serving, judges; the study figures of an experiment
    ("uses", ["bon", "sampling", "rlhf", "serve", "serve_limits", "judges", "study"]),
    # experiment designs that use trained reward models (bon-builtin, rlhf-builtin)
    ("designs", ["designs"]),
    # an experiment dispatches to its design (comparison tables, bon, rlhf, study)
    ("experiment", ["experiment"]),
    ("cli", ["cli"]),
]


def module_name(path: Path) -> str:
    """src/hafrm/data/load.py -> "data.load"; a package's __init__.py -> the package ("data", "__init__" at the top)."""
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def read_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name below hafrm of `from <level dots><node.module> import ...` in `module`."""
    if node.level == 0:
        return (node.module or "").removeprefix(PACKAGE).lstrip(".")
    package = module.split(".") if is_package else module.split(".")[:-1]
    if module == "__init__":
        package = []
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: set[str]) -> dict[str, list[str]]:
    """{imported module: the functions that import it, [] when the module imports it at import time}."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, list[str]] = {}

    def add(target: str, function: str | None) -> None:
        if target == "":
            target = "__init__"
        if target not in modules or target == module:
            return
        functions = found.setdefault(target, [function] if function else [])
        if not function:
            functions.clear()
        elif functions and function not in functions:
            functions.append(function)

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        add(alias.name.removeprefix(PACKAGE).lstrip("."), function)
            elif isinstance(child, ast.ImportFrom):
                source = _resolve(module, path.name == "__init__.py", child)
                if child.level == 0 and not (child.module or "").startswith(PACKAGE):
                    continue
                for alias in child.names:  # `from . import plots` imports the module hafrm.plots
                    submodule = f"{source}.{alias.name}" if source else alias.name
                    add(submodule if submodule in modules else source, function)
            visit(child, inner)

    visit(tree, None)
    return found


def layer_of(module: str) -> int | None:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    return None


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds at least one cycle."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def shortest_cycle(graph: dict[str, dict], start: str, component: list[str]) -> list[str]:
    """A shortest cycle through `start` inside its component (breadth first)."""
    members = set(component)
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if target in members and target not in parents:
                    parents[target] = node
                    following.append(target)
        frontier = following
    return component


def edge(graph: dict[str, dict], source: str, target: str) -> str:
    functions = graph[source][target]
    return f"{source} -> {target}" + (f" (in {', '.join(functions)})" if functions else "")


def package_graph() -> dict[str, dict[str, list[str]]]:
    """{module: {imported module: the functions that import it ([] at import time)}} for every module of hafrm."""
    modules = read_modules()
    return {module: imports_of(module, path, set(modules)) for module, path in modules.items()}


def upward_edges(graph: dict[str, dict]) -> list[tuple[str, str]]:
    """(importer, imported) where the imported module sits in a higher layer; modules in no layer are skipped."""
    return [
        (source, target)
        for source, targets in graph.items()
        for target in sorted(targets)
        if None not in (layer_of(source), layer_of(target)) and layer_of(target) > layer_of(source)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="exit 1 on a cycle, an upward edge or an unplaced module")
    args = parser.parse_args(argv)
    graph = package_graph()

    print(f"Imports within {PACKAGE} (* = inside a function):")
    for module, targets in graph.items():
        names = [f"{target}*" if targets[target] else target for target in sorted(targets)]
        print(f"  {module}: {', '.join(names) or '-'}")

    found = cycles(graph)
    print(f"\nModules in a cycle: {'; '.join(', '.join(component) for component in found) or 'none'}")
    shown = set()
    for component in found:
        for start in component:  # a shortest cycle through each module, each cycle once
            cycle = shortest_cycle(graph, start, component)
            turn = cycle.index(min(cycle))
            key = tuple(cycle[turn:] + cycle[:turn])
            if key in shown:
                continue
            shown.add(key)
            print("  " + " -> ".join([*key, key[0]]))
            for source, target in zip(key, [*key[1:], key[0]]):
                print(f"      {edge(graph, source, target)}")

    print("\nLayers, lowest first: " + " < ".join(name for name, _ in LAYERS))
    unplaced = [module for module in graph if layer_of(module) is None]
    if unplaced:
        print(f"  in no layer: {', '.join(unplaced)}")
    up = upward_edges(graph)
    print(f"Edges that point up: {len(up) or 'none'}")
    for source, target in up:
        print(f"  {edge(graph, source, target)}: {LAYERS[layer_of(source)][0]} < {LAYERS[layer_of(target)][0]}")
    return 1 if args.strict and (found or up or unplaced) else 0


if __name__ == "__main__":
    sys.exit(main())
