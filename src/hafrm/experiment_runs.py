"""An experiment's runs: the spec, each run's TrainConfig and directory, training them all, the headline figure.

    from hafrm.experiment_runs import headline, train_all
    directories = train_all(spec)              # {"rm/seed0": Path, ...}: trained, resumed, kept or reused
    headline(report)["accuracy"]               # the figure a run is compared on

The lower half of `hafrm experiment`: `experiment.py` reads and checks the YAML and dispatches to a design;
the designs (the comparison tables there, `bon`, `rlhf`, `study`) import what they share from here, so
no import points back up at the module that dispatches to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .fields import ConfigError, coerce
from .rundir import FREE_ON_RESUME, RunDirectory
from .runrecord import has_run_record, has_weights, read_run_record

DEFAULT_RUNS = {"rm": {"method": "rm"}, "dpo": {"method": "dpo"}, "haf": {"method": "haf"}}


@dataclass
class ExperimentSpec:
    name: str
    output_dir: str
    evaluate: dict[str, str]
    base: dict = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=lambda: dict(DEFAULT_RUNS))
    seeds: list[int] = field(default_factory=lambda: [0])
    design: str = "comparison"
    eval_options: dict = field(default_factory=dict)
    bon: dict = field(default_factory=dict)  # design bon: BonConfig fields (the samples, judge, N)
    rlhf: dict = field(default_factory=dict)  # design rlhf: RlhfConfig fields (one policy per run and seed)
    reuse_runs: str = ""  # another experiment's output_dir: its RUN/seedS models are used where trained alike
    # a run (or {run: its baseline run}): per-pair scores kept, paired differences against it, intervals,
    # calibration (study.py)
    baseline: str | dict[str, str] = ""
    alpha_curve: list[str] = field(default_factory=list)  # runs whose accuracy is drawn against their α
    run_seeds: dict[str, list[int]] = field(default_factory=dict)  # {run: the seeds it trains}; others: `seeds`
    set_runs: dict[str, list[str]] = field(default_factory=dict)  # {set: the runs evaluated on it}; others: all
    learning_curve: dict[str, list[str]] = field(default_factory=dict)  # {label: runs}: accuracy against pairs
    description: str = ""
    selection: str = ""  # set by `--runs` / `--seeds`: tables and plots go to output_dir/part-SELECTION


@contextlib.contextmanager
def part_of(spec: ExperimentSpec, part: str):
    """Prefix a ConfigError raised inside with the experiment and the part of it (run, block, set) at fault."""
    try:
        yield
    except ConfigError as error:
        raise ConfigError(f"experiment {spec.name!r}, {part}: {error}") from None


def seeds_of(spec: ExperimentSpec, run_name: str) -> list[int]:
    """The seeds `run_name` trains: `run_seeds[run]` where given, else every seed of the experiment."""
    wanted = spec.run_seeds.get(run_name, spec.seeds)
    return [seed for seed in spec.seeds if seed in wanted]


def sets_of(spec: ExperimentSpec, run_name: str) -> list[str]:
    """The evaluation sets `run_name` is evaluated on: every set whose `set_runs` entry names it (or has none)."""
    return [name for name in spec.evaluate if run_name in spec.set_runs.get(name, spec.runs)]


def baselines(spec: ExperimentSpec) -> dict[str, str]:
    """{run: the run it is compared with pair by pair}: `baseline` as a mapping, or one run for all the others."""
    if isinstance(spec.baseline, dict):
        return dict(spec.baseline)
    return {run: spec.baseline for run in spec.runs if spec.baseline and run != spec.baseline}


def run_dir(spec: ExperimentSpec, run_name: str, seed: int) -> Path:
    return Path(spec.output_dir) / run_name / f"seed{seed}"


def train_config(spec: ExperimentSpec, run_name: str, seed: int) -> TrainConfig:
    values = {**spec.base, **spec.runs[run_name], "seed": seed, "output_dir": str(run_dir(spec, run_name, seed))}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"experiment {spec.name!r}, run {run_name!r}: unknown training field(s) {unknown}")
    with part_of(spec, f"run {run_name!r}"):
        return TrainConfig(**coerce(TrainConfig, values))  # YAML values read as the flags would read them


def reusable_run(
    spec: ExperimentSpec, run_name: str, seed: int, needs_weights: Callable[[str, Path], bool] | None = None
) -> Path | None:
    """The same run and seed in `spec.reuse_runs`, when it finished with exactly this run's training settings.

    A run restored without weights (scripts/study_records.py) is reused only where `needs_weights(label,
    directory)` says the design will not load it (best-of-N holding its scores of the samples already).
    """
    if not spec.reuse_runs:
        return None
    other = Path(spec.reuse_runs) / run_name / f"seed{seed}"
    if not has_run_record(other):
        return None
    if not has_weights(other) and (needs_weights is None or needs_weights(f"{run_name}/seed{seed}", other)):
        print(f"note: {other} holds a finished run's records but no weights; training {run_name} seed {seed} here")
        return None
    recorded = read_run_record(other, fill_in=False)
    wanted = dataclasses.asdict(train_config(spec, run_name, seed))
    # hafrm.json records what ran: exact ways of computing (packing, prompt sharing, the frozen-prefix cache)
    # may be off there where a check turned them off, and change no result
    ignored = {"model", "resume", "output_dir", "report_to", "data", "packing"} | FREE_ON_RESUME
    differing = sorted(k for k in wanted if k not in ignored and k in recorded and recorded[k] != wanted[k])
    if recorded.get("base_model") != wanted["model"] or (recorded.get("data") != (wanted["data"] or "builtin")):
        differing.append("model or data")
    if differing:
        print(
            f"note: {other} was trained with other settings ({', '.join(differing)}); training {run_name} seed {seed} here"
        )
        return None
    return other


def train_all(spec: ExperimentSpec, needs_weights: Callable[[str, Path], bool] | None = None) -> dict[str, Path]:
    """Train (or resume, keep, or reuse from `reuse_runs`) every run and seed -> {"run/seedS": directory}.

    Seed by seed: every run of the first seed is trained before any of the second, so an interrupted
    experiment already holds one complete comparison (and another experiment can reuse it).
    """
    directories = {}
    for seed in spec.seeds:
        for run_name in spec.runs:
            if seed not in seeds_of(spec, run_name):
                continue
            reused = reusable_run(spec, run_name, seed, needs_weights)
            if reused is None:
                train_once(spec, run_name, seed)
            directories[f"{run_name}/seed{seed}"] = reused or run_dir(spec, run_name, seed)
    return directories


def train_once(spec: ExperimentSpec, run_name: str, seed: int) -> None:
    """Train one run and seed unless it finished; a started one continues from its newest complete checkpoint."""
    from .train import train  # at call time: it loads torch, and tests stand in for it

    directory = run_dir(spec, run_name, seed)
    if has_run_record(directory):
        return
    cfg = train_config(spec, run_name, seed)
    if RunDirectory(directory).recorded_run() is not None:  # started before: continue it
        cfg.resume = "last"
    print(f"\n=== {spec.name}: training {run_name}, seed {seed}")
    train(cfg)


def headline(report: dict) -> dict:
    """The figures a run is compared on: the method's own reward (the implicit one for dpo)."""
    head = "implicit_reward" if report["method"] == "dpo" else "reward_head"
    return {"accuracy": report[head]["accuracy"], "margin": report[head]["margin"], "head": head}
