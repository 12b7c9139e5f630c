"""`hafrm experiment CONFIG.yaml`: the paper's comparisons, one command each, resumable.

    hafrm experiment configs/experiments/in-domain-hh.yaml            # train, evaluate, write results.md
    hafrm experiment configs/experiments/in-domain-hh.yaml --dry-run  # show the plan only

A config names a shared training budget (`base`, TrainConfig fields), the runs to compare (`runs`:
name -> overrides; default rm, dpo, haf), the `seeds`, and the evaluation sets (`evaluate`: name ->
data spec, read with the test split by default). Each run's checkpoint is chosen on its validation
data (never on an evaluation set), then evaluated on every set. Output under `output_dir`:

    RUN/seedS/            the trained model (hafrm train's output) and eval-SET.json per set
    results.json          every figure, per run, seed and set
    results.md            Table-2 style: rows = runs, columns = sets + average, mean ± std over seeds
    *.png                 accuracy bars; α sweep and head agreement when the design asks for them

A killed experiment resumes where it stopped: finished runs (their hafrm.json is written last) and
finished evaluations (their JSON file) are kept; a started run without its final model resumes
from its newest complete checkpoint.

This module reads and checks the config and dispatches to the design; what the designs share (the spec,
training the runs, the headline figure) is in `experiment_runs`, which bon, rlhf and study import.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import yaml

from .bon import holds_scores
from .config import BonConfig, EvalConfig, RlhfConfig, config_name, config_path, read_yaml
from .experiment_runs import (
    ExperimentSpec,
    baselines,
    headline,
    part_of,
    reusable_run,
    run_dir,
    seeds_of,
    sets_of,
    train_config,
    train_once,
)
from .fields import ConfigError, coerce
from .preflight import TRAINED_BY_THE_RUNS
from .runrecord import has_run_record, has_weights
from .validation import check_fields, validate

DESIGNS = ("comparison", "mixed", "transfer", "alpha-sweep", "head-agreement", "bon", "rlhf")
DOWNSTREAM = ("bon", "rlhf")  # designs that use the trained reward models instead of evaluating pairs
EVAL_SET_BY_RUN = ("model", "data", "json")  # EvalConfig fields the experiment sets per run and set


def apply_settings(values: dict, settings: list[str], path: str | Path) -> dict:
    """`--set KEY=VALUE` on a config read from YAML: KEY is dotted (`evaluate.pandalm`, `runs.haf.lr`), VALUE is
    read as YAML (`1e-5` a number, `[0, 1]` a list). Every mapping on the way must exist; the last key may be new."""
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {setting!r}: expected KEY=VALUE, e.g. evaluate.pandalm=testset-v1.json")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        *parents, leaf = key.split(".")
        target = values
        for depth, name in enumerate(parents):
            if not isinstance(target.get(name), dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"--set {key}: {path} has no mapping `{where}` to set a value in")
            target = target[name]
        target[leaf] = value
    return values


def load_spec(path: str | Path, overrides: dict | None = None, settings: list[str] | None = None) -> ExperimentSpec:
    """Read and check an experiment YAML (a file, or the name of a shipped one); `overrides` replace `base`
    fields (tests point it at a tiny model); `settings` are `--set KEY=VALUE` changes (`apply_settings`).

    Everything a run will need is checked here, before anything trains (`check_spec`): a bad value or a
    missing data file stops a dry run as it stops the real one.
    """
    path = config_path(str(path), "experiments")
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of experiment keys, got {values!r}")
    values = apply_settings(values, settings or [], path)
    fields = dataclasses.fields(ExperimentSpec)
    known = {f.name for f in fields}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")
    spec = ExperimentSpec(**values)
    _check_shape(spec, path)
    spec.base = {**spec.base, **(overrides or {})}
    if spec.design not in DESIGNS:
        raise ConfigError(f"{path}: design must be one of {DESIGNS}, got {spec.design!r}")
    if not spec.evaluate and spec.design not in DOWNSTREAM:
        raise ConfigError(f"{path}: `evaluate` must name at least one evaluation set")
    _check_run_names(spec, path)
    if spec.alpha_curve and not spec.baseline:
        raise ConfigError(f"{path}: `alpha_curve` needs a `baseline` run (its figures come from the per-pair scores)")
    if spec.learning_curve and not spec.baseline:
        raise ConfigError(f"{path}: `learning_curve` needs a `baseline` (its figures come from the per-pair scores)")
    check_spec(spec)
    return spec


def _check_run_names(spec: ExperimentSpec, path: str | Path) -> None:
    """Every run a key names is one of `runs`; per-run seeds are the experiment's; a run and its baseline share one."""
    named = {
        "baseline": [*baselines(spec), *baselines(spec).values()] if spec.baseline else [],
        "alpha_curve": spec.alpha_curve,
        "run_seeds": list(spec.run_seeds),
        "set_runs": [run for runs in spec.set_runs.values() for run in runs],
        "learning_curve": [run for runs in spec.learning_curve.values() for run in runs],
    }
    for key, names in named.items():
        unknown_runs = sorted({name for name in names if name not in spec.runs})
        if unknown_runs:
            raise ConfigError(
                f"{path}: `{key}` names run(s) {unknown_runs} that `runs` does not have: {list(spec.runs)}"
            )
    if spec.design in DOWNSTREAM and (spec.set_runs or spec.learning_curve):
        raise ConfigError(f"{path}: `set_runs` and `learning_curve` are for pairwise designs, not {spec.design}")
    if spec.design == "rlhf" and spec.run_seeds:
        raise ConfigError(f"{path}: `run_seeds` is for the pairwise designs and bon, not rlhf")
    for run, seeds in spec.run_seeds.items():
        if not seeds or any(seed not in spec.seeds for seed in seeds):
            raise ConfigError(
                f"{path}: `run_seeds` gives {run!r} seeds {seeds}; each must be one of `seeds` {spec.seeds}"
            )
    unknown_sets = sorted(set(spec.set_runs) - set(spec.evaluate))
    if unknown_sets:
        raise ConfigError(f"{path}: `set_runs` names set(s) {unknown_sets} that `evaluate` does not have")
    for run, base in baselines(spec).items():
        if not set(seeds_of(spec, run)) & set(seeds_of(spec, base)):
            raise ConfigError(f"{path}: run {run!r} and its baseline {base!r} share no seed: nothing to pair")


def _check_shape(spec: ExperimentSpec, path: str | Path) -> None:
    """Mappings where the YAML needs mappings and a list of integer seeds (else a TypeError far from the cause)."""
    for key in ("base", "runs", "evaluate", "eval_options", "bon", "rlhf", "run_seeds", "set_runs", "learning_curve"):
        if not isinstance(getattr(spec, key), dict):
            raise ConfigError(f"{path}: `{key}` must be a mapping, got {getattr(spec, key)!r}")
    if not isinstance(spec.baseline, str | dict):
        raise ConfigError(
            f"{path}: `baseline` must be a run or a mapping of run -> baseline run, got {spec.baseline!r}"
        )
    for key in ("set_runs", "learning_curve"):
        for name, runs in getattr(spec, key).items():
            if not isinstance(runs, list) or not runs:
                raise ConfigError(f"{path}: `{key}` gives {name!r} {runs!r}; expected a non-empty list of runs")
    if not spec.runs:
        raise ConfigError(f"{path}: `runs` names no run")
    for run_name, run_overrides in spec.runs.items():
        if not isinstance(run_overrides, dict):
            raise ConfigError(f"{path}: run {run_name!r} must be a mapping of training fields, got {run_overrides!r}")
    seeds = spec.seeds if isinstance(spec.seeds, list) else [None]
    if not seeds or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        raise ConfigError(f"{path}: `seeds` must be a non-empty list of integers, got {spec.seeds!r}")


def check_spec(spec: ExperimentSpec) -> None:
    """Every run's TrainConfig, the bon / rlhf block and every evaluation set, validated as their commands would.

    Data paths must exist; named sources, the built-in set and hub ids are not loaded. The YAML values
    are converted as flags would be (`"1e-4"` -> 1e-4) and kept so. A run's trained directory does not
    exist yet, so the evaluation sets' and downstream blocks' reward models are not looked for.
    """
    from .preflight import check_data

    for run_name in spec.runs:
        cfg = train_config(spec, run_name, spec.seeds[0])
        with part_of(spec, f"run {run_name!r}"):
            validate(cfg)
            for seed in spec.seeds[1:]:
                check_fields(dataclasses.replace(cfg, seed=seed))
    if spec.design == "bon":
        from .designs import experiment_bon_config

        with part_of(spec, "bon"):
            spec.bon = coerce(BonConfig, spec.bon)
            validate(experiment_bon_config(spec, {}))
    if spec.design == "rlhf":
        from .designs import experiment_rlhf_config

        with part_of(spec, "rlhf"):
            spec.rlhf = coerce(RlhfConfig, spec.rlhf)
            validate(experiment_rlhf_config(spec, TRAINED_BY_THE_RUNS, Path(spec.output_dir) / "policies"))
    with part_of(spec, "eval_options"):
        spec.eval_options = coerce(EvalConfig, spec.eval_options)
        known = {f.name for f in dataclasses.fields(EvalConfig)} - set(EVAL_SET_BY_RUN)
        unknown = sorted(set(spec.eval_options) - known)
        if unknown:
            raise ConfigError(f"unknown or per-run field(s) {unknown}; valid: {sorted(known)}")
    for set_name, data in spec.evaluate.items():
        with part_of(spec, f"evaluation set {set_name!r}"):
            if not isinstance(data, str):
                raise ConfigError(f"expected a --data value, got {data!r}")
            check_fields(EvalConfig(**{**spec.eval_options, "data": data}))
            check_data("--data", data)


def plan(spec: ExperimentSpec) -> list[str]:
    """One line per training run and evaluation, marked done or to do."""
    lines = []
    for run_name in spec.runs:
        for seed in seeds_of(spec, run_name):
            directory = run_dir(spec, run_name, seed)
            state = "done" if has_run_record(directory) else "to train"
            other = Path(spec.reuse_runs) / run_name / f"seed{seed}"
            # a run without weights (restored records) serves best-of-N where its scores of the samples are kept
            scored = spec.design == "bon" and holds_scores(
                Path(spec.output_dir) / "bon", f"{run_name}/seed{seed}", other
            )
            if spec.reuse_runs and has_run_record(other) and (has_weights(other) or scored):
                directory, state = other, "reused if trained alike"
            lines.append(f"{run_name} seed {seed}: {state} -> {directory}")
            for set_name in sets_of(spec, run_name):
                done = (directory / f"eval-{set_name}.json").is_file()
                lines.append(f"    eval {set_name}: {'done' if done else 'to do'}")
    return lines


def _evaluate_once(spec: ExperimentSpec, run_name: str, seed: int, set_name: str, model: Path | None = None) -> dict:
    """Evaluate the run's model (this experiment's, or `model` reused from another) on one set, once."""
    from .evaluate import evaluate

    path = run_dir(spec, run_name, seed) / f"eval-{set_name}.json"
    if not path.is_file():
        print(f"\n=== {spec.name}: evaluating {run_name}, seed {seed} on {set_name}")
        keep_scores = (
            spec.design == "head-agreement" or bool(spec.baseline) or spec.eval_options.get("save_scores", False)
        )
        options = {**spec.eval_options, "save_scores": keep_scores}
        model = model or run_dir(spec, run_name, seed)
        evaluate(EvalConfig(model=str(model), data=spec.evaluate[set_name], json=str(path), **options))
    return json.loads(path.read_text())


def select(spec: ExperimentSpec, runs: list[str] | None = None, seeds: list[int] | None = None) -> ExperimentSpec:
    """The part of an experiment with these runs and seeds (each must be in the config): trained and
    evaluated in the same RUN/seedS directories, tabulated apart, in output_dir/part-SELECTION."""
    unknown = [run for run in runs or [] if run not in spec.runs] + [
        seed for seed in seeds or [] if seed not in spec.seeds
    ]
    if unknown:
        raise ConfigError(
            f"experiment {spec.name!r} has no run or seed {unknown}: runs {list(spec.runs)}, seeds {spec.seeds}"
        )
    kept = [run for run in spec.runs if not runs or run in runs]
    for run, needed in baselines(spec).items():
        if run in kept and needed not in kept:
            raise ConfigError(f"--runs must keep the baseline run {needed!r} (of {run!r})")
    if isinstance(spec.baseline, str) and spec.baseline and spec.baseline not in kept:
        raise ConfigError(f"--runs must keep the baseline run {spec.baseline!r}")
    baseline = (
        {r: b for r, b in spec.baseline.items() if r in kept} if isinstance(spec.baseline, dict) else spec.baseline
    )
    flags = (f" --runs {','.join(runs)}" if runs else "") + (f" --seeds {','.join(map(str, seeds))}" if seeds else "")
    return dataclasses.replace(
        spec,
        runs={run: spec.runs[run] for run in kept},
        seeds=[seed for seed in spec.seeds if not seeds or seed in seeds],
        alpha_curve=[run for run in spec.alpha_curve if run in kept],
        baseline=baseline,
        run_seeds={run: seeds for run, seeds in spec.run_seeds.items() if run in kept},
        set_runs={name: [run for run in runs if run in kept] for name, runs in spec.set_runs.items()},
        learning_curve={label: [run for run in runs if run in kept] for label, runs in spec.learning_curve.items()},
        selection=flags.strip(),
    )


def results_dir(spec: ExperimentSpec) -> Path:
    if not spec.selection:
        return Path(spec.output_dir)
    tag = spec.selection.replace("--", "").replace(" ", "-").replace(",", "_")
    return Path(spec.output_dir) / f"part-{tag}"


def run_experiment(
    path: str | Path,
    dry_run: bool = False,
    overrides: dict | None = None,
    runs: list[str] | None = None,
    seeds: list[int] | None = None,
    settings: list[str] | None = None,
) -> dict:
    spec = load_spec(path, overrides, settings)
    path = config_path(str(path), "experiments")
    if runs or seeds:
        spec = select(spec, runs, seeds)
    print("\n".join(plan(spec)))
    if dry_run:
        return {}
    if spec.design == "bon":
        from .designs import run_bon_experiment

        return run_bon_experiment(spec, Path(path))
    if spec.design == "rlhf":
        from .designs import run_rlhf_experiment

        return run_rlhf_experiment(spec, Path(path))
    results = {run_name: {} for run_name in spec.runs}
    # seed by seed, each run trained then evaluated: an interrupted experiment already holds whole comparisons
    for seed in spec.seeds:
        for run_name in spec.runs:
            if seed not in seeds_of(spec, run_name):
                continue
            reused = reusable_run(spec, run_name, seed)  # evaluated here, its reports kept in this experiment
            if reused is None:
                train_once(spec, run_name, seed)
            for set_name in sets_of(spec, run_name):
                report = _evaluate_once(spec, run_name, seed, set_name, reused)
                results[run_name].setdefault(set_name, {})[seed] = report
    ordered = {run: {s: by_set[s] for s in spec.evaluate if s in by_set} for run, by_set in results.items()}
    return write_results(spec, ordered, Path(path))


def summarise(spec: ExperimentSpec, results: dict) -> dict:
    """results[run][set][seed] = eval report -> table[run][set] = {mean, std, seeds} of headline accuracy."""
    table = {}
    for run_name, by_set in results.items():
        row = {}
        for set_name, by_seed in by_set.items():
            values = [headline(report)["accuracy"] for report in by_seed.values()]
            margins = [headline(report)["margin"] for report in by_seed.values()]
            row[set_name] = _mean_std(values) | {"margin": _mean_std(margins)["mean"], "per_seed": values}
        # the average over the run's sets, seed by seed, over the seeds every one of its sets has
        common = sorted(set.intersection(*(set(by_seed) for by_seed in by_set.values())))
        per_seed_average = [
            statistics.fmean(headline(by_seed[seed])["accuracy"] for by_seed in by_set.values()) for seed in common
        ]
        row["average"] = _mean_std(per_seed_average) if per_seed_average else {"mean": math.nan, "std": math.nan}
        table[run_name] = row
    return table


def _mean_std(values: list[float]) -> dict:
    """mean and std (0 for one value) of a non-empty list."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def results_markdown(spec: ExperimentSpec, table: dict, config_path: Path) -> str:
    columns = [*spec.evaluate, "average"]
    best = {
        column: max((row[column]["mean"] for row in table.values() if column in row), default=math.nan)
        for column in columns
    }
    per_run = ""
    if spec.run_seeds or spec.set_runs:
        limits = [f"{run}: seeds {seeds}" for run, seeds in spec.run_seeds.items()]
        limits += [f"{name}: only {', '.join(runs)}" for name, runs in spec.set_runs.items()]
        per_run = f" ({'; '.join(limits)}; — where a run was not evaluated on a set)"
    lines = [
        f"# {spec.name}",
        "",
        spec.description.strip(),
        "",
        f"Pairwise accuracy (chosen scored strictly above rejected) of each method's own reward: the reward head "
        f"for rm and haf, β·log π/π_ref for dpo. Mean ± std over seeds {spec.seeds}{per_run}; best mean in bold. "
        f"Checkpoints were chosen on validation data, never on these sets.",
        "",
        "| run | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for run_name, row in table.items():
        cells = []
        for column in columns:
            if column not in row or not math.isfinite(row[column]["mean"]):
                cells.append("—")
                continue
            cell = f"{row[column]['mean']:.3f} ± {row[column]['std']:.3f}"
            cells.append(f"**{cell}**" if row[column]["mean"] == best[column] else cell)
        lines.append(f"| {run_name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Budget and command",
        "",
        f"`hafrm experiment {config_name(config_path, 'experiments')}{' ' + spec.selection if spec.selection else ''}`",
        "",
        "```yaml",
        yaml.safe_dump(
            {
                "base": spec.base,
                "runs": spec.runs,
                "seeds": spec.seeds,
                **{key: getattr(spec, key) for key in ("run_seeds", "set_runs") if getattr(spec, key)},
                "evaluate": spec.evaluate,
                "eval_options": spec.eval_options,
            },
            sort_keys=False,
        ).rstrip(),  # fmt: skip
        "```",
    ]
    return "\n".join(lines) + "\n"


def _cell(reports: list[dict], *keys: str, digits: int = 3) -> str:
    """mean ± std over seeds of reports[...][keys], or — when the figure does not exist for this run."""
    values = []
    for report in reports:
        value = report
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    if not values:
        return "—"
    figures = _mean_std(values)
    return (
        f"{figures['mean']:.{digits}f} ± {figures['std']:.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"
    )


def figures_markdown(spec: ExperimentSpec, results: dict) -> str:
    """Every figure of every run and set (mean ± std over seeds): the heads, λ, baselines, perplexity, ECE."""
    lines = [
        f"## Every figure, mean ± std over seeds {spec.seeds}",
        "",
        "| run | set | reward head | implicit | combined (λ per seed) | length rule | ppl chosen / rejected | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run_name, by_set in results.items():
        for set_name, by_seed in by_set.items():
            reports = list(by_seed.values())
            lambdas = [r["combined_lambda"]["lambda"] for r in reports if "combined_lambda" in r]
            combined = _cell(reports, "combined", "accuracy")
            if lambdas:
                combined += " (" + ", ".join(f"{value:g}" for value in lambdas) + ")"
            perplexity = (
                f"{_cell(reports, 'perplexity', 'chosen', 'mean')} / {_cell(reports, 'perplexity', 'rejected', 'mean')}"
            )
            cells = [
                f"{set_name} ({reports[0]['pairs']} pairs)",
                _cell(reports, "reward_head", "accuracy"),
                _cell(reports, "implicit_reward", "accuracy"),
                combined,
                _cell(reports, "length_rule", "accuracy"),
                perplexity,
                _cell(reports, "reward_head", "ece"),
            ]
            lines.append(f"| {run_name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Combined = reward head + λ·implicit reward, λ fitted per seed on that run's validation pairs. Length",
        'rule = accuracy of "the longer response wins" on the same pairs. Perplexity: per token, under the',
        "run's policy head. ECE: expected calibration error of σ(r_chosen − r_rejected).",
    ]
    return "\n".join(lines) + "\n"


def write_results(spec: ExperimentSpec, results: dict, config_path: Path) -> dict:
    output = results_dir(spec)
    output.mkdir(parents=True, exist_ok=True)
    table = summarise(spec, results)
    (output / "results.json").write_text(json.dumps({"table": table, "reports": results}, indent=2) + "\n")
    markdown = results_markdown(spec, table, config_path) + "\n" + figures_markdown(spec, results)
    if spec.baseline:
        from .study import study_figures, study_markdown, write_study_plots

        figures = study_figures(spec, results)
        (output / "study.json").write_text(json.dumps(figures, indent=2) + "\n")
        markdown += "\n" + study_markdown(spec, figures)
        write_study_plots(spec, figures, output)
    (output / "results.md").write_text(markdown)
    write_plots(spec, table, results)
    print((output / "results.md").read_text())
    print(f"results: {output / 'results.md'} (every figure: results.json; plots: *.png beside them)")
    return table


def write_plots(spec: ExperimentSpec, table: dict, results: dict) -> None:
    from . import plots

    output = results_dir(spec)
    bars = {run: {s: (row[s]["mean"], row[s]["std"]) for s in spec.evaluate if s in row} for run, row in table.items()}
    plots.accuracy_bars(bars, output / "accuracy.png", title=f"{spec.name}: pairwise accuracy (mean ± std over seeds)")
    if spec.design == "alpha-sweep":
        alphas = [float(train_config(spec, run, spec.seeds[0]).alpha) for run in table]
        first_set = next(iter(spec.evaluate))
        accuracy = [(table[run][first_set]["mean"], table[run][first_set]["std"]) for run in table]
        margin = [(table[run][first_set]["margin"], 0.0) for run in table]
        order = sorted(range(len(alphas)), key=alphas.__getitem__)
        plots.alpha_sweep_plot(
            [alphas[i] for i in order], [accuracy[i] for i in order], [margin[i] for i in order],
            output / "alpha-sweep.png", title=f"{spec.name}: accuracy and margin against α on {first_set}",
        )  # fmt: skip
    if spec.design == "head-agreement":
        plots.head_agreement_plot(_agreement_series(spec, results), output / "head-agreement.png")


def _agreement_series(spec: ExperimentSpec, results: dict) -> dict:
    """Reward-head scores of the reward-head runs against implicit rewards of the policy runs, same responses."""
    first_set, seed = next(iter(spec.evaluate)), spec.seeds[0]
    reports = {run: by_set[first_set][seed] for run, by_set in results.items()}
    reward_runs = [run for run, report in reports.items() if "reward_head" in report]
    policy_runs = [run for run, report in reports.items() if "implicit_reward" in report]
    series = {}
    for reward_run in reward_runs:
        for policy_run in policy_runs:
            x = reports[reward_run]["scores"]["reward_head"]
            y = reports[policy_run]["scores"]["implicit_reward"]
            series[f"{reward_run} reward head vs {policy_run} implicit"] = (x, y)
    return series
