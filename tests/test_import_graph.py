"""scripts/import_graph.py on src/hafrm: imports point down (no cycle, no import of a higher layer)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def load_script():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_imports_point_down_only():
    script = load_script()
    graph = script.package_graph()
    assert script.cycles(graph) == []
    assert script.upward_edges(graph) == []
    assert [module for module in graph if script.layer_of(module) is None] == []  # LAYERS names every module


def test_imports_inside_functions_count_and_cycles_are_found():
    script = load_script()
    graph = script.package_graph()
    # the designs reach the experiment's runs from inside their functions, and never the module that dispatches
    assert graph["designs"]["experiment_runs"] == ["summarise_bon", "run_bon_experiment", "run_rlhf_experiment"]
    assert graph["experiment"]["designs"] == ["check_spec", "run_experiment"]
    assert {module for module, targets in graph.items() if "experiment" in targets} == {"cli"}
    toy = {"a": {"b": []}, "b": {"c": ["f"]}, "c": {"a": []}, "d": {"a": []}}
    assert script.cycles(toy) == [["a", "b", "c"]]
    assert script.shortest_cycle(toy, "b", ["a", "b", "c"]) == ["b", "c", "a"]
