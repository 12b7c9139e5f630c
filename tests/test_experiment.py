"""`hafrm experiment`: a small comparison on the tiny model, its tables, plots and resumption."""

import json
import re
from pathlib import Path

import pytest
import yaml

from hafrm import experiment, experiment_runs
from hafrm.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "experiments").glob("*.yaml"))


def small_spec(tmp_path, tiny_model, pairs_file, design="comparison", runs=None):
    spec = {
        "name": "tiny",
        "output_dir": str(tmp_path / "exp"),
        "design": design,
        "seeds": [0, 1],
        "base": {
            "model": tiny_model,
            "data": str(pairs_file),
            "max_length": 96,
            "batch_size": 8,
            "lr": 5e-3,
            "max_steps": 2,
            "eval_steps": 2,
            "eval_on_start": False,
        },  # fmt: skip
        "runs": runs or {"rm": {"method": "rm"}, "haf": {"method": "haf"}},
        "evaluate": {"mine": f"{pairs_file}:test", "all": str(pairs_file)},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_comparison_writes_tables_and_plots_and_resumes(tmp_path, tiny_model, pairs_file, monkeypatch):
    path = small_spec(tmp_path, tiny_model, pairs_file)
    assert main(["experiment", str(path)]) == 0
    out = tmp_path / "exp"
    results = json.loads((out / "results.json").read_text())
    assert set(results["table"]) == {"rm", "haf"}
    assert set(results["table"]["haf"]) == {"mine", "all", "average"}
    assert len(results["table"]["rm"]["mine"]["per_seed"]) == 2
    markdown = (out / "results.md").read_text()
    assert "| run | mine | all | average |" in markdown and "**" in markdown and "± " in markdown
    assert (out / "accuracy.png").stat().st_size > 0

    # Resume: nothing finished is redone; a lost evaluation is redone alone.
    import hafrm.train

    monkeypatch.setattr(hafrm.train, "train", lambda cfg: pytest.fail(f"retrained {cfg.output_dir}"))
    (out / "haf" / "seed1" / "eval-all.json").unlink()
    evaluated = []
    import hafrm.evaluate

    real_evaluate = hafrm.evaluate.evaluate
    monkeypatch.setattr(hafrm.evaluate, "evaluate", lambda cfg: evaluated.append(cfg.json) or real_evaluate(cfg))
    assert main(["experiment", str(path)]) == 0
    assert evaluated == [str(out / "haf" / "seed1" / "eval-all.json")]


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, tiny_model, pairs_file, monkeypatch):
    path = small_spec(tmp_path, tiny_model, pairs_file, runs={"rm": {"method": "rm"}})
    spec = experiment.load_spec(path)
    directory = experiment_runs.run_dir(spec, "rm", 0)
    (directory / "checkpoint-1").mkdir(parents=True)
    seen = []
    import hafrm.train

    monkeypatch.setattr(hafrm.train, "train", lambda cfg: seen.append(cfg.resume))
    experiment_runs.train_once(spec, "rm", 0)
    assert seen == ["last"]


def test_alpha_sweep_and_head_agreement_plots(tmp_path, tiny_model, pairs_file):
    runs = {"alpha=-0.1": {"method": "haf", "alpha": -0.1}, "alpha=0": {"method": "haf", "alpha": 0.0}}
    path = small_spec(tmp_path, tiny_model, pairs_file, design="alpha-sweep", runs=runs)
    assert main(["experiment", str(path)]) == 0
    assert (tmp_path / "exp" / "alpha-sweep.png").stat().st_size > 0

    agreement = tmp_path / "agreement"
    agreement.mkdir()
    path = small_spec(
        agreement,
        tiny_model,
        pairs_file,
        design="head-agreement",
        runs={"rm": {"method": "rm"}, "dpo": {"method": "dpo"}},
    )
    assert main(["experiment", str(path)]) == 0
    report = json.loads((agreement / "exp" / "rm" / "seed0" / "eval-mine.json").read_text())
    assert len(report["scores"]["reward_head"]) == 2 * report["pairs"]
    assert (agreement / "exp" / "head-agreement.png").stat().st_size > 0


def test_bad_configs_are_refused(tmp_path, tiny_model, pairs_file):
    path = small_spec(tmp_path, tiny_model, pairs_file, runs={"rm": {"method": "rm", "alhpa": 1}})
    with pytest.raises(ValueError, match="unknown training field"):
        experiment.load_spec(path)
    path.write_text(yaml.safe_dump({"name": "x", "output_dir": "y", "evaluate": {"a": "b"}, "desgin": "comparison"}))
    with pytest.raises(ValueError, match="unknown key"):
        experiment.load_spec(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_experiment_configs_dry_run(path, capsys):
    # Named sources only: a shipped design must run where a user has the hub, not this project's ../shared
    assert "shared/" not in path.read_text()
    assert main(["experiment", str(path), "--dry-run"]) == 0
    assert "seed" in capsys.readouterr().out


def downstream_spec(tmp_path, tiny_model, pairs_file, design: str, **keys) -> Path:
    path = small_spec(tmp_path, tiny_model, pairs_file, design=design)
    spec = yaml.safe_load(path.read_text())
    spec.update(evaluate={}, **keys)
    spec["base"]["val_fraction"] = 0.2
    path = tmp_path / f"{design}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_bon_design_summarises_every_method_over_seeds_and_resumes(tmp_path, tiny_model, pairs_file, monkeypatch):
    bon = {"limit": 3, "n": 2, "max_new_tokens": 4, "batch_size": 3}
    path = downstream_spec(tmp_path, tiny_model, pairs_file, "bon", bon=bon)
    summary = experiment.run_experiment(path)
    out = tmp_path / "exp"
    assert set(summary["table"]) == {"rm", "haf"} and summary["prompts"] == 3 and summary["n"] == 2
    report = json.loads((out / "bon" / "report.json").read_text())
    for method in ("rm", "haf"):  # the summary is the mean over seeds of each seed's own report
        per_seed = [report["recall"][f"{method}/seed{seed}"]["top1"]["recall"] for seed in (0, 1)]
        assert summary["table"][method]["top1"]["per_seed"] == per_seed
        assert summary["table"][method]["top1"]["mean"] == pytest.approx(sum(per_seed) / 2)
    pooled = summary["head_to_head"]["rm vs haf"]
    assert pooled["prompts"] == 6 and pooled["wins"] + pooled["ties"] + pooled["losses"] == 6
    assert "| rm vs haf |" in (out / "results.md").read_text() and (out / "bon-curve.png").is_file()

    import hafrm.bon
    import hafrm.train

    monkeypatch.setattr(hafrm.train, "train", lambda cfg: pytest.fail(f"retrained {cfg.output_dir}"))
    monkeypatch.setattr(hafrm.bon.Policy, "__init__", lambda *a: pytest.fail("sampled again"))
    assert experiment.run_experiment(path)["table"] == summary["table"]
    # a method with fewer seeds (`run_seeds`): its own seeds in its row, head to head over the seeds both have
    spec = yaml.safe_load(path.read_text()) | {"run_seeds": {"haf": [1]}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    fewer = experiment.run_experiment(path)
    assert fewer["table"]["rm"] == summary["table"]["rm"]
    assert fewer["table"]["haf"]["top1"]["per_seed"] == [report["recall"]["haf/seed1"]["top1"]["recall"]]
    assert (
        fewer["head_to_head"]["rm vs haf"]["prompts"] == 3
        and fewer["head_to_head"]["haf vs random (first sample)"]["prompts"] == 3
    )
    assert "of the reward models; haf: seed [1]." in (out / "results.md").read_text()


def test_rlhf_design_reuses_reward_models_and_compares_policies(tmp_path, tiny_model, pairs_file, monkeypatch):
    bon = downstream_spec(tmp_path, tiny_model, pairs_file, "bon", bon={"limit": 2, "n": 2, "max_new_tokens": 4})
    spec = yaml.safe_load(bon.read_text())
    spec["seeds"] = [0]
    bon.write_text(yaml.safe_dump(spec, sort_keys=False))
    experiment.run_experiment(bon)
    import hafrm.train

    monkeypatch.setattr(hafrm.train, "train", lambda cfg: pytest.fail(f"retrained {cfg.output_dir}"))
    rlhf = {"max_steps": 1, "eval_steps": 1, "eval_limit": 2, "limit": 4, "max_new_tokens": 4, "lr": 5e-3}
    spec.update(design="rlhf", rlhf=rlhf, reuse_runs=spec["output_dir"], output_dir=str(tmp_path / "rlhf"))
    del spec["bon"]
    path = tmp_path / "rlhf.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary = experiment.run_experiment(path)
    assert set(summary["curves"]) == {"rm/seed0", "haf/seed0"}
    assert [p["step"] for p in summary["curves"]["haf/seed0"]] == [0, 1]
    match = summary["head_to_head"]["rm vs haf, seed 0"]
    assert [p["step"] for p in match] == [0, 1] and match[0] == {**match[0], "wins": 0, "losses": 0, "ties": 2}
    markdown = (tmp_path / "rlhf" / "results.md").read_text()
    assert "| rm/seed0 |" in markdown and (tmp_path / "rlhf" / "win-rate.png").is_file()


def dry_run_error(path: Path, capsys) -> str:
    """The one stderr line of a dry run that must fail (a usage error: status 2)."""
    assert main(["experiment", str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "seed" not in captured.out and "Traceback" not in captured.err  # refused before the plan is printed
    return captured.err.rstrip("\n")


def test_dry_run_catches_a_bad_run_value_and_missing_data(tmp_path, tiny_model, pairs_file, capsys):
    path = small_spec(tmp_path, tiny_model, pairs_file, runs={"rm": {"method": "rm"}, "hf": {"method": "hf"}})
    assert dry_run_error(path, capsys) == (
        "hafrm experiment: error: experiment 'tiny', run 'hf': --method: 'hf' is not one of rm, dpo, haf"
    )
    missing = tmp_path / "missing.jsonl"
    spec = yaml.safe_load(small_spec(tmp_path, tiny_model, pairs_file).read_text())
    spec["base"]["data"] = f"builtin,{missing}:train"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert (
        dry_run_error(path, capsys)
        == f"hafrm experiment: error: experiment 'tiny', run 'rm': --data {missing}: no such file"
    )
    spec["base"]["data"] = str(pairs_file)
    spec["runs"]["haf"] = {"method": "haf", "batch_size": 0}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert dry_run_error(path, capsys).endswith("experiment 'tiny', run 'haf': --batch-size must be at least 1, got 0")
    spec["runs"]["haf"] = {"method": "haf"}
    spec["evaluate"]["gone"] = f"{missing}:test"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert dry_run_error(path, capsys).endswith(
        f"experiment 'tiny', evaluation set 'gone': --data {missing}: no such file"
    )
    spec["evaluate"].pop("gone")
    spec["base"]["model"] = str(tmp_path / "no-model")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert dry_run_error(path, capsys).endswith(f"run 'rm': --model {tmp_path / 'no-model'}: no such directory")


def test_dry_run_checks_the_downstream_blocks_and_eval_options(tmp_path, tiny_model, pairs_file, capsys):
    path = downstream_spec(tmp_path, tiny_model, pairs_file, "bon", bon={"n": 0})
    assert dry_run_error(path, capsys).endswith("experiment 'tiny', bon: --n must be at least 1, got 0")
    path = downstream_spec(tmp_path, tiny_model, pairs_file, "rlhf", rlhf={"temperature": "hot"})
    assert dry_run_error(path, capsys).endswith("experiment 'tiny', rlhf: --temperature: expected a number, got 'hot'")
    path = downstream_spec(tmp_path, tiny_model, pairs_file, "rlhf", rlhf={"prompts": str(tmp_path / "p.jsonl")})
    assert dry_run_error(path, capsys).endswith(
        f"rlhf: --prompts {tmp_path / 'p.jsonl'}: no such file (or use builtin:SPLIT)"
    )
    spec = yaml.safe_load(small_spec(tmp_path, tiny_model, pairs_file).read_text())
    spec["eval_options"] = {"batch_size": 0}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert dry_run_error(path, capsys).endswith("evaluation set 'mine': --batch-size must be at least 1, got 0")
    spec["eval_options"] = {"json": "x.json"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert "eval_options: unknown or per-run field(s) ['json']" in dry_run_error(path, capsys)


def test_spec_shape_errors_are_one_line(tmp_path, tiny_model, pairs_file, capsys):
    spec = yaml.safe_load(small_spec(tmp_path, tiny_model, pairs_file).read_text())
    path = tmp_path / "shape.yaml"
    for change, message in [
        ({"runs": {"rm": "rm"}}, "run 'rm' must be a mapping of training fields, got 'rm'"),
        ({"seeds": 0}, "`seeds` must be a non-empty list of integers, got 0"),
        ({"runs": {}}, "`runs` names no run"),
        ({"evaluate": None}, "`evaluate` must be a mapping, got None"),
    ]:
        path.write_text(yaml.safe_dump({**spec, **change}, sort_keys=False))
        assert dry_run_error(path, capsys) == f"hafrm experiment: error: {path}: {message}"
    path.write_text(yaml.safe_dump({"name": "x", "output_dir": "y"}))
    assert dry_run_error(path, capsys) == f"hafrm experiment: error: {path}: missing key(s) ['evaluate']"


def test_run_values_are_read_as_flags_read_text(tmp_path, tiny_model, pairs_file):
    path = small_spec(tmp_path, tiny_model, pairs_file, runs={"rm": {"method": "rm", "lr": "1e-4"}})
    spec = experiment.load_spec(path)
    assert experiment_runs.train_config(spec, "rm", 0).lr == 1e-4  # YAML reads 1e-4 as text


def test_a_baseline_adds_intervals_paired_differences_calibration_kinds_and_the_alpha_curve(
    tmp_path, tiny_model, pairs_file
):
    from hafrm.metrics import calibration_bins, paired_difference

    runs = {"rm": {"method": "rm"}, "dpo": {"method": "dpo"}, "haf": {"method": "haf"}, "haf-a1": {"alpha": 1.0}}
    path = small_spec(tmp_path, tiny_model, pairs_file, runs=runs)
    spec = yaml.safe_load(path.read_text())
    spec |= {
        "baseline": "rm",
        "alpha_curve": ["haf-a1", "rm", "haf"],
        "evaluate": {"mine": f"{pairs_file}:test", "kinds": "builtin:test@12"},
    }
    spec["eval_options"] = {"combine": False, "perplexity": False}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["experiment", str(path)]) == 0
    out = tmp_path / "exp"
    figures = json.loads((out / "study.json").read_text())

    def report(run, seed, name):
        return json.loads((out / run / f"seed{seed}" / f"eval-{name}.json").read_text())

    def outcomes(run, name):
        head = "implicit_reward" if run == "dpo" else "reward_head"
        rows = []
        for seed in (0, 1):
            scores = report(run, seed, name)["scores"][head]
            n = len(scores) // 2
            rows.append([c > r for c, r in zip(scores[:n], scores[n:])])
        return rows

    for run in runs:
        for name in ("mine", "kinds"):
            head = "implicit_reward" if run == "dpo" else "reward_head"
            pooled = figures["accuracy"][run][name]
            assert pooled["per_seed"] == [report(run, seed, name)[head]["accuracy"] for seed in (0, 1)]
            assert pooled["accuracy"] == pytest.approx(sum(pooled["per_seed"]) / 2)
            scores = report(run, 0, name)["scores"][head]
            ece = [calibration_bins(s[: len(s) // 2], s[len(s) // 2 :])["ece"] for s in
                   (report(run, seed, name)["scores"][head] for seed in (0, 1))]  # fmt: skip
            assert figures["calibration"][run][name]["mean"] == pytest.approx(sum(ece) / 2)
            assert len(scores) == 2 * pooled["pairs"]
            if run != "rm":
                expected = paired_difference(outcomes(run, name), outcomes("rm", name))
                assert figures["paired"][run][name] == expected | {"baseline": "rm", "seeds": [0, 1]}
    assert "rm" not in figures["paired"]
    kinds = figures["kinds"]["kinds"]["haf"]  # the built-in set's constraint kinds, 12 pairs between them
    assert sum(pairs for _, pairs in kinds.values()) == 12 and "mine" not in figures["kinds"]
    assert [(p["run"], p["alpha"]) for p in figures["alpha_curve"]] == [("rm", 0.0), ("haf", 0.2), ("haf-a1", 1.0)]
    markdown = (out / "results.md").read_text()
    for heading in ("## Accuracy with 95% intervals", "## Paired differences against rm", "## Calibration",
                    "## Per constraint kind on kinds", "## α curve"):  # fmt: skip
        assert heading in markdown
    assert (out / "paired-differences.png").stat().st_size > 0 and (out / "alpha-curve.png").stat().st_size > 0


def test_a_baseline_or_alpha_curve_naming_no_run_is_refused(tmp_path, tiny_model, pairs_file):
    path = small_spec(tmp_path, tiny_model, pairs_file)
    spec = yaml.safe_load(path.read_text())
    for extra, message in (({"baseline": "bt"}, "`baseline` names run(s) ['bt']"),
                           ({"baseline": "rm", "alpha_curve": ["haf", "a2"]}, "`alpha_curve` names run(s) ['a2']"),
                           ({"alpha_curve": ["haf"]}, "`alpha_curve` needs a `baseline` run")):  # fmt: skip
        path.write_text(yaml.safe_dump(spec | extra, sort_keys=False))
        with pytest.raises(ValueError, match=re.escape(message)):
            experiment.load_spec(path)


def test_a_comparison_evaluates_runs_reused_from_another_experiment_without_training_them(
    tmp_path, tiny_model, pairs_file, monkeypatch
):
    first = small_spec(tmp_path, tiny_model, pairs_file, runs={"rm": {"method": "rm"}})
    assert main(["experiment", str(first)]) == 0
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = small_spec(second_dir, tiny_model, pairs_file, runs={"rm": {"method": "rm"}, "a1": {"alpha": 1.0}})
    spec = yaml.safe_load(second.read_text()) | {"reuse_runs": str(tmp_path / "exp")}
    second.write_text(yaml.safe_dump(spec, sort_keys=False))
    import hafrm.train

    trained, real_train = [], hafrm.train.train
    monkeypatch.setattr(
        hafrm.train, "train", lambda cfg: trained.append(Path(cfg.output_dir).parent.name) or real_train(cfg)
    )
    assert main(["experiment", str(second)]) == 0
    assert trained == ["a1", "a1"]  # rm's two seeds come from the first experiment
    for seed in (0, 1):
        here = json.loads((second_dir / "exp" / "rm" / f"seed{seed}" / "eval-mine.json").read_text())
        there = json.loads((tmp_path / "exp" / "rm" / f"seed{seed}" / "eval-mine.json").read_text())
        assert here["model"] == str(tmp_path / "exp" / "rm" / f"seed{seed}")
        assert here["reward_head"] == there["reward_head"]


def test_runs_and_seeds_select_a_part_tabulated_apart(tmp_path, tiny_model, pairs_file, capsys):
    path = small_spec(tmp_path, tiny_model, pairs_file)
    assert main(["experiment", str(path), "--seeds", "1", "--runs", "rm"]) == 0
    out = tmp_path / "exp"
    assert sorted(p.name for p in out.iterdir()) == ["part-runs-rm-seeds-1", "rm"]
    assert [p.name for p in (out / "rm").iterdir()] == ["seed1"]
    part = json.loads((out / "part-runs-rm-seeds-1" / "results.json").read_text())
    assert list(part["table"]) == ["rm"] and len(part["table"]["rm"]["mine"]["per_seed"]) == 1
    assert f"`hafrm experiment {path} --runs rm --seeds 1`" in (out / "part-runs-rm-seeds-1" / "results.md").read_text()
    assert main(["experiment", str(path), "--seeds", "0,5"]) == 2
    assert "has no run or seed [5]" in capsys.readouterr().err


def test_per_run_baselines_seeds_and_sets_and_the_learning_curve(tmp_path, tiny_model, pairs_file, monkeypatch):
    from hafrm.metrics import paired_difference

    small = tmp_path / "small.jsonl"
    small.write_text("".join(pairs_file.read_text().splitlines(keepends=True)[:24]))
    runs = {"rm-s": {"method": "rm", "data": str(small)}, "haf-s": {"method": "haf", "data": str(small)},
            "rm-l": {"method": "rm"}, "haf-l": {"method": "haf"}}  # fmt: skip
    path = small_spec(tmp_path, tiny_model, pairs_file, runs=runs)
    spec = yaml.safe_load(path.read_text()) | {
        "baseline": {"haf-s": "rm-s", "haf-l": "rm-l"},
        "run_seeds": {"haf-l": [1]},
        "set_runs": {"all": ["rm-l", "haf-l"]},
        "learning_curve": {"rm": ["rm-l", "rm-s"], "haf": ["haf-s", "haf-l"]},
        "eval_options": {"combine": False, "perplexity": False},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    import hafrm.train

    trained, real_train = [], hafrm.train.train
    monkeypatch.setattr(
        hafrm.train,
        "train",
        lambda cfg: trained.append((Path(cfg.output_dir).parent.name, cfg.seed)) or real_train(cfg),
    )
    assert main(["experiment", str(path)]) == 0
    # seed by seed; haf-l trains seed 1 only
    assert trained == [("rm-s", 0), ("haf-s", 0), ("rm-l", 0), ("rm-s", 1), ("haf-s", 1), ("rm-l", 1), ("haf-l", 1)]
    out = tmp_path / "exp"
    assert not (out / "haf-l" / "seed0").exists()
    assert sorted(p.name for p in (out / "rm-s" / "seed0").glob("eval-*.json")) == ["eval-mine.json"]
    assert sorted(p.name for p in (out / "rm-l" / "seed0").glob("eval-*.json")) == ["eval-all.json", "eval-mine.json"]

    def outcomes(run, name, seeds):
        rows = []
        for seed in seeds:
            scores = json.loads((out / run / f"seed{seed}" / f"eval-{name}.json").read_text())["scores"]["reward_head"]
            rows.append([c > r for c, r in zip(scores[: len(scores) // 2], scores[len(scores) // 2 :])])
        return rows

    figures = json.loads((out / "study.json").read_text())
    assert sorted(figures["paired"]) == ["haf-l", "haf-s"]
    assert sorted(figures["paired"]["haf-s"]) == ["mine"] and sorted(figures["paired"]["haf-l"]) == ["all", "mine"]
    for run, base, seeds in (("haf-s", "rm-s", [0, 1]), ("haf-l", "rm-l", [1])):
        for name, paired in figures["paired"][run].items():
            expected = paired_difference(outcomes(run, name, seeds), outcomes(base, name, seeds))
            assert paired == json.loads(json.dumps(expected | {"baseline": base, "seeds": seeds}))
    records = {run: json.loads((out / run / "seed1" / "hafrm.json").read_text()) for run in runs}
    assert [records[run]["train_pairs"] for run in runs] == [22, 22, 43, 43]  # 24 and 48 pairs, 10% held out
    curve = figures["learning_curve"]
    assert [(p["run"], p["train_pairs"]) for p in curve["rm"]] == [("rm-s", 22), ("rm-l", 43)]
    assert [(p["run"], p["train_pairs"]) for p in curve["haf"]] == [("haf-s", 22), ("haf-l", 43)]
    assert curve["haf"][1]["all"] == figures["accuracy"]["haf-l"]["all"] and "all" not in curve["haf"][0]
    table = json.loads((out / "results.json").read_text())["table"]
    assert sorted(table["rm-s"]) == ["average", "mine"] and len(table["haf-l"]["mine"]["per_seed"]) == 1
    assert table["rm-l"]["average"]["mean"] == pytest.approx(
        sum((table["rm-l"]["mine"]["mean"], table["rm-l"]["all"]["mean"])) / 2
    )
    markdown = (out / "results.md").read_text()
    assert "| haf-l − rm-l | " in markdown and "## Learning curve" in markdown
    assert re.search(r"\| rm-s \| [^|]+ \| — \| [^|]+ \|", markdown)  # not evaluated on `all`
    assert (out / "learning-curve-mine.png").stat().st_size > 0 and (out / "learning-curve-all.png").is_file()


def test_per_run_keys_that_name_no_run_seed_or_set_are_refused(tmp_path, tiny_model, pairs_file):
    path = small_spec(tmp_path, tiny_model, pairs_file)
    spec = yaml.safe_load(path.read_text())
    for extra, message in (
        ({"run_seeds": {"haf": [3]}}, "`run_seeds` gives 'haf' seeds [3]; each must be one of `seeds` [0, 1]"),
        ({"run_seeds": {"bt": [0]}}, "`run_seeds` names run(s) ['bt']"),
        ({"set_runs": {"other": ["rm"]}}, "`set_runs` names set(s) ['other'] that `evaluate` does not have"),
        ({"set_runs": {"all": []}}, "`set_runs` gives 'all' []; expected a non-empty list of runs"),
        ({"baseline": {"haf": "rm"}, "run_seeds": {"haf": [0], "rm": [1]}},
         "run 'haf' and its baseline 'rm' share no seed: nothing to pair"),
        ({"baseline": {"haf": "bt"}}, "`baseline` names run(s) ['bt']"),
        ({"learning_curve": {"rm": ["rm"]}}, "`learning_curve` needs a `baseline`"),
    ):  # fmt: skip
        path.write_text(yaml.safe_dump(spec | extra, sort_keys=False))
        with pytest.raises(ValueError, match=re.escape(message)):
            experiment.load_spec(path)
