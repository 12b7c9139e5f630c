"""The figures that decide a comparison: intervals over test pairs, paired differences, calibration, kinds, α.

An experiment with `baseline: RUN` (or `baseline: {RUN: ITS_BASELINE, ...}`) keeps every pair's scores
(`save_scores`) and adds, from them:

    accuracy [95% interval]   over test pairs, each pair's outcome averaged over the seeds first
    paired differences        each run against its baseline on the same pairs and the seeds both have
                              (metrics.paired_difference)
    calibration               ECE of σ(s_c − s_r) of each run's own score, mean ± std over seeds
    per kind                  accuracy per `subset` (the built-in set's constraint kinds), mean over seeds
    α curve                   `alpha_curve: [RUN, ...]`: accuracy against each run's α (a plain rm run is α = 0)
    learning curve            `learning_curve: {LABEL: [RUN, ...]}`: accuracy against each run's training pairs

A run's own score is its reward head, or β·log π/π_ref for dpo (`experiment_runs.headline`).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from .experiment_runs import baselines, headline, train_config
from .metrics import Z95, calibration_bins, paired_difference
from .runrecord import read_run_record


def own_scores(report: dict) -> tuple[list[float], list[float]]:
    """(chosen, rejected) scores of a run's own head, in data order, from a report kept with `save_scores`."""
    head = headline(report)["head"]
    if "scores" not in report:
        raise ValueError(f"{report.get('model')}: the evaluation kept no per-pair scores (run it with save_scores)")
    values = report["scores"][head]
    n = len(values) // 2
    return values[:n], values[n:]


def correct(report: dict) -> list[bool]:
    """Per pair: the run's own score puts chosen strictly above rejected (as accuracy counts it)."""
    chosen, rejected = own_scores(report)
    return [c > r for c, r in zip(chosen, rejected)]


def seed_outcomes(by_seed: dict) -> np.ndarray:
    """[seeds, pairs] of 0/1 outcomes, seeds in key order."""
    return np.asarray([correct(by_seed[seed]) for seed in sorted(by_seed)], dtype=np.float64)


def pooled_accuracy(by_seed: dict) -> dict:
    """Seed-mean accuracy with a 95% interval over test pairs (outcomes averaged over seeds per pair)."""
    outcomes = seed_outcomes(by_seed).mean(axis=0)  # [N]
    n = outcomes.size
    mean = float(outcomes.mean())
    half = Z95 * float(outcomes.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    per_seed = seed_outcomes(by_seed).mean(axis=1).tolist()
    return {
        "accuracy": mean,
        "ci95": [mean - half, mean + half],
        "seed_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
        "per_seed": per_seed,
        "pairs": n,
    }


def calibration(by_seed: dict) -> dict:
    """ECE of each seed's own score (mean ± std over seeds)."""
    values = [calibration_bins(*own_scores(by_seed[seed]))["ece"] for seed in sorted(by_seed)]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def per_kind(by_seed: dict) -> dict:
    """{kind: (mean accuracy over seeds, pairs)} of the run's own head, where the set's rows carry a subset."""
    reports = [by_seed[seed] for seed in sorted(by_seed)]
    if "per_subset" not in reports[0]:
        return {}
    head = headline(reports[0])["head"]
    return {
        kind: (statistics.fmean(r["per_subset"][kind][head]["accuracy"] for r in reports), group["pairs"])
        for kind, group in reports[0]["per_subset"].items()
    }


def study_figures(spec, results: dict) -> dict:
    """Every study figure of an experiment with a baseline: {accuracy, paired, calibration, kinds, alpha_curve}."""
    figures = {"accuracy": {}, "paired": {}, "calibration": {}, "kinds": {}}
    against = baselines(spec)
    for run, by_set in results.items():
        for set_name, by_seed in by_set.items():
            figures["accuracy"].setdefault(run, {})[set_name] = pooled_accuracy(by_seed)
            figures["calibration"].setdefault(run, {})[set_name] = calibration(by_seed)
            kinds = per_kind(by_seed)
            if kinds:
                figures["kinds"].setdefault(set_name, {})[run] = kinds
            base = against.get(run)
            if base is None or set_name not in results.get(base, {}):
                continue
            baseline = results[base][set_name]
            seeds = sorted(set(by_seed) & set(baseline))
            if not seeds:
                raise ValueError(f"run {run!r} and its baseline {base!r} share no evaluated seed on {set_name}")
            difference = paired_difference(
                seed_outcomes({seed: by_seed[seed] for seed in seeds}),
                seed_outcomes({seed: baseline[seed] for seed in seeds}),
            )
            figures["paired"].setdefault(run, {})[set_name] = difference | {"baseline": base, "seeds": seeds}
    curve = []
    for run in spec.alpha_curve:
        cfg = train_config(spec, run, spec.seeds[0])
        alpha = 0.0 if cfg.method == "rm" else float(cfg.alpha)
        curve.append({"run": run, "alpha": alpha, **{s: figures["accuracy"][run][s] for s in spec.evaluate}})
    figures["alpha_curve"] = sorted(curve, key=lambda point: point["alpha"])
    figures["learning_curve"] = {
        label: sorted(
            (
                {"run": run, "train_pairs": train_pairs(results[run]), **figures["accuracy"][run]}
                for run in runs
                if results.get(run)
            ),
            key=lambda point: point["train_pairs"],
        )
        for label, runs in spec.learning_curve.items()
    }
    return figures


def train_pairs(by_set: dict) -> int:
    """How many pairs the run trained on, from the run record of the model its first report evaluated."""
    report = next(iter(next(iter(by_set.values())).values()))
    record = read_run_record(report["model"])
    if "train_pairs" not in record:
        raise ValueError(f"{report['model']}: its run record does not say how many pairs it trained on (train_pairs)")
    return int(record["train_pairs"])


def _interval(figure: dict) -> str:
    low, high = figure["ci95"]
    return f"{figure['accuracy']:.3f} [{low:.3f}, {high:.3f}]"


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _pairs_of(by_run: dict, set_name: str) -> str:
    """The pair count of a set, from the first run evaluated on it."""
    counts = [by_set[set_name]["pairs"] for by_set in by_run.values() if set_name in by_set]
    return f"{set_name} ({counts[0]} pairs)" if counts else set_name


def _against(spec) -> str:
    """How the paired-differences section names what each run is compared with."""
    if isinstance(spec.baseline, str):
        return spec.baseline
    return "each run's baseline (" + ", ".join(f"{run} − {base}" for run, base in baselines(spec).items()) + ")"


def study_markdown(spec, figures: dict) -> str:
    sets = list(spec.evaluate)
    dash = "—"
    lines = [
        "## Accuracy with 95% intervals",
        "",
        "Each run's own score; each pair's outcome averaged over the seeds, the interval over test pairs "
        "(mean ± 1.96·sd/√N); seed-to-seed std in parentheses.",
        "",
        "| run | " + " | ".join(_pairs_of(figures["accuracy"], s) for s in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for run, by_set in figures["accuracy"].items():
        cells = [f"{_interval(by_set[s])} ({by_set[s]['seed_std']:.3f})" if s in by_set else dash for s in sets]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Paired differences against {_against(spec)}",
        "",
        "Accuracy minus the baseline's on the same test pairs, over the seeds both have: difference [95% interval], "
        "two-sided p of the paired test over pairs (`metrics.paired_difference`), and the per-seed differences.",
        "",
        "| run | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for run, by_set in figures["paired"].items():
        cells = []
        for s in sets:
            if s not in by_set:
                cells.append(dash)
                continue
            d = by_set[s]
            low, high = d["ci95"]
            seeds = ", ".join(_signed(v) for v in d["per_seed"])
            cells.append(
                f"{_signed(d['difference'])} [{_signed(low)}, {_signed(high)}], p = {d['p_value']:.3g} ({seeds})"
            )
        label = run if isinstance(spec.baseline, str) else f"{run} − {by_set[next(iter(by_set))]['baseline']}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Calibration",
        "",
        "Expected calibration error of σ(s_chosen − s_rejected), 10 bins, both orientations of each pair; "
        "mean ± std over seeds (lower is better).",
        "",
        "| run | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for run, by_set in figures["calibration"].items():
        cells = [f"{by_set[s]['mean']:.3f} ± {by_set[s]['std']:.3f}" if s in by_set else dash for s in sets]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    for set_name, by_run in figures["kinds"].items():
        kinds = list(next(iter(by_run.values())))
        first = next(iter(by_run.values()))
        lines += [
            "",
            f"## Per constraint kind on {set_name}",
            "",
            "Accuracy of each run's own score per kind of broken constraint, mean over seeds.",
            "",
            "| run | " + " | ".join(f"{k} ({first[k][1]})" for k in kinds) + " |",
            "|---|" + "---|" * len(kinds),
        ]
        for run, by_kind in by_run.items():
            lines.append(f"| {run} | " + " | ".join(f"{by_kind[k][0]:.3f}" for k in kinds) + " |")
    if figures["alpha_curve"]:
        lines += [
            "",
            "## α curve",
            "",
            "Accuracy [95% interval] against α (α = 0: the plain reward model).",
            "",
            "| α | run | " + " | ".join(sets) + " |",
            "|---|---|" + "---|" * len(sets),
        ]
        for point in figures["alpha_curve"]:
            lines.append(
                f"| {point['alpha']:g} | {point['run']} | " + " | ".join(_interval(point[s]) for s in sets) + " |"
            )
    if figures.get("learning_curve"):
        lines += [
            "",
            "## Learning curve",
            "",
            "Accuracy [95% interval] against the number of training pairs, per method.",
            "",
            "| method | training pairs | run | " + " | ".join(sets) + " |",
            "|---|---|---|" + "---|" * len(sets),
        ]
        for label, points in figures["learning_curve"].items():
            for point in points:
                cells = [_interval(point[s]) if s in point else dash for s in sets]
                lines.append(f"| {label} | {point['train_pairs']} | {point['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study_plots(spec, figures: dict, output) -> None:
    from . import plots

    differences = {
        run: {s: (d["difference"], d["ci95"]) for s, d in by_set.items()} for run, by_set in figures["paired"].items()
    }
    plots.paired_differences_plot(
        differences, output / "paired-differences.png",
        title=f"{spec.name}: accuracy minus {spec.baseline if isinstance(spec.baseline, str) else 'the baseline'}'s,"
        " same pairs (95% intervals)",
    )  # fmt: skip
    if figures["alpha_curve"]:
        curves = {
            s: [(p["alpha"], p[s]["accuracy"], p[s]["ci95"]) for p in figures["alpha_curve"]] for s in spec.evaluate
        }
        plots.alpha_curve_plot(curves, output / "alpha-curve.png", title=f"{spec.name}: accuracy against α")
    for set_name in spec.evaluate:
        curves = {
            label: [(p["train_pairs"], p[set_name]["accuracy"], p[set_name]["ci95"]) for p in points if set_name in p]
            for label, points in figures.get("learning_curve", {}).items()
        }
        if any(curves.values()):
            plots.curve_plot(
                curves, output / f"learning-curve-{set_name}.png", f"{spec.name}: accuracy against training pairs "
                f"on {set_name}", "training pairs", "Pairwise accuracy", log2_x=True, reference=0.5,
                reference_label="chance (0.5)", limits=(0.0, 1.0),
            )  # fmt: skip
