"""scripts/study_records.py: an experiment's records saved without weights, and restored so that
`hafrm experiment` sees finished runs and evaluations as done and plans only what is missing."""

import importlib.util
import json
from pathlib import Path

import pytest

from hafrm.experiment import plan
from hafrm.experiment_runs import ExperimentSpec

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "study_records.py"


def load_script():
    spec = importlib.util.spec_from_file_location("study_records", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_experiment(runs: Path) -> ExperimentSpec:
    spec = ExperimentSpec(
        name="study-x",
        output_dir=str(runs / "study-x"),
        evaluate={"test": "builtin:test@8"},
        runs={"rm": {}, "haf": {}},
    )
    finished = runs / "study-x" / "rm" / "seed0"
    finished.mkdir(parents=True)
    (finished / "hafrm.json").write_text(json.dumps({"method": "rm"}))
    (finished / "eval-test.json").write_text(json.dumps({"reward_head": {"accuracy": 0.75}}))
    (finished / "trainer-log.json").write_text("[]")
    (finished / "model.safetensors").write_bytes(b"weights")
    started = runs / "study-x" / "haf" / "seed0"
    started.mkdir(parents=True)
    (started / "hafrm-run.json").write_text("{}")  # started, not finished: not saved
    (runs / "study-x" / "results.md").write_text("# study-x\n")
    (runs / "study-x" / "accuracy.png").write_bytes(b"png")
    return spec


def test_save_keeps_records_not_weights_and_restore_marks_runs_done(tmp_path):
    script = load_script()
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    spec = fake_experiment(runs)
    script.save("study-x", runs, docs)
    kept = docs / "study-x-runs" / "rm" / "seed0"
    assert sorted(p.name for p in kept.iterdir()) == ["eval-test.json", "hafrm.json", "trainer-log.json"]
    assert not (docs / "study-x-runs" / "haf").exists()
    assert (docs / "study-x.md").read_text() == "# study-x\n"
    assert (docs / "study-x-accuracy.png").read_bytes() == b"png"

    fresh = tmp_path / "fresh"  # a new checkout: no runs at all
    spec.output_dir = str(fresh / "study-x")
    assert plan(spec)[0].startswith("rm seed 0: to train")
    restored = script.restore("study-x", fresh, docs)
    assert restored == [fresh / "study-x" / "rm" / "seed0"]
    assert plan(spec) == [
        f"rm seed 0: done -> {fresh / 'study-x' / 'rm' / 'seed0'}",
        "    eval test: done",
        f"haf seed 0: to train -> {fresh / 'study-x' / 'haf' / 'seed0'}",
        "    eval test: to do",
    ]
    assert script.restore("study-x", fresh, docs) == []  # a finished run here is left as it is


def test_restore_refuses_to_write_over_an_unfinished_run(tmp_path):
    script = load_script()
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    fake_experiment(runs)
    script.save("study-x", runs, docs)
    half = tmp_path / "other" / "study-x" / "rm" / "seed0"
    half.mkdir(parents=True)
    (half / "hafrm-run.json").write_text("{}")
    with pytest.raises(SystemExit, match="holds an unfinished run"):
        script.restore("study-x", tmp_path / "other", docs)
    with pytest.raises(SystemExit, match="nothing of study-y was saved"):
        script.restore("study-y", runs, docs)


def test_a_restored_run_without_weights_is_not_reused_by_a_design_that_loads_it(tmp_path, capsys):
    from hafrm.experiment_runs import reusable_run

    script = load_script()
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    fake_experiment(runs)
    script.save("study-x", runs, docs)
    fresh = tmp_path / "fresh"
    script.restore("study-x", fresh, docs)
    bon = ExperimentSpec(
        name="bon-x", output_dir=str(tmp_path / "bon"), evaluate={}, runs={"rm": {}}, reuse_runs=str(fresh / "study-x")
    )
    assert reusable_run(bon, "rm", 0) is None
    assert "holds a finished run's records but no weights; training rm seed 0 here" in capsys.readouterr().out
    assert plan(bon) == [f"rm seed 0: to train -> {tmp_path / 'bon' / 'rm' / 'seed0'}"]


def test_best_of_n_tabulates_again_from_restored_scores_without_weights(tmp_path, tiny_model, pairs_file, monkeypatch):
    import yaml

    import hafrm.bon
    import hafrm.train
    from hafrm import experiment

    script = load_script()
    base = {"model": tiny_model, "data": str(pairs_file), "max_length": 96, "batch_size": 8, "lr": 5e-3}
    base |= {"max_steps": 2, "eval_steps": 2, "eval_on_start": False, "val_fraction": 0.2}
    study = {"name": "study-t", "output_dir": "runs/experiments/study-t", "seeds": [0], "base": base}
    study |= {"runs": {"rm": {"method": "rm"}}, "evaluate": {"mine": f"{pairs_file}:test"}}
    bon = {**study, "name": "bon-t", "output_dir": "runs/experiments/bon-t", "design": "bon", "evaluate": {}}
    bon |= {"reuse_runs": "runs/experiments/study-t", "bon": {"limit": 3, "n": 2, "max_new_tokens": 4}}
    docs = tmp_path / "docs"
    docs.mkdir()
    for where in ("first", "fresh"):
        (tmp_path / where).mkdir()
        for spec in (study, bon):
            (tmp_path / where / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path / "first")
    experiment.run_experiment("study-t.yaml")
    first = experiment.run_experiment("bon-t.yaml")
    assert (Path("runs/experiments/bon-t") / "rm").exists() is False  # rm came from study-t
    runs = Path("runs/experiments")
    for name in ("study-t", "bon-t"):
        script.save(name, runs, docs)
    assert sorted(p.name for p in (docs / "bon-t-runs" / "bon" / "scores").iterdir()) == ["rm-seed0.json"]

    monkeypatch.chdir(tmp_path / "fresh")  # a new checkout: records, samples and scores; no weights
    for name in ("study-t", "bon-t"):
        script.restore(name, runs, docs)
    assert plan(experiment.load_spec("bon-t.yaml"))[0] == (
        "rm seed 0: reused if trained alike -> runs/experiments/study-t/rm/seed0"
    )
    monkeypatch.setattr(hafrm.train, "train", lambda cfg: pytest.fail(f"retrained {cfg.output_dir}"))
    monkeypatch.setattr(hafrm.bon.Policy, "__init__", lambda *a: pytest.fail("sampled again"))
    monkeypatch.setattr(hafrm.bon, "RewardModel", lambda *a, **k: pytest.fail("loaded a reward model"))
    assert experiment.run_experiment("bon-t.yaml")["table"] == first["table"]

    # scores of other samples cannot be reused without the model: that run trains again
    scores = runs / "bon-t" / "bon" / "scores" / "rm-seed0.json"
    scores.write_text(json.dumps(json.loads(scores.read_text()) | {"source": "elsewhere"}))
    trained = []
    monkeypatch.setattr(hafrm.train, "train", lambda cfg: trained.append(cfg.output_dir) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        experiment.run_experiment("bon-t.yaml")
    assert trained == [str(runs / "bon-t" / "rm" / "seed0")]
