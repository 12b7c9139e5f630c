"""Experiment designs that use trained reward models: `bon-builtin` (best-of-N with every run, seed by seed) and
`rlhf-builtin` (a policy trained against each run, compared by the oracle's win rate).

    hafrm experiment configs/experiments/bon-builtin.yaml       # `experiment.run_experiment` dispatches here

Each design trains (or reuses) the experiment's reward-model runs (`experiment_runs.train_all`), then runs
`hafrm bon` / `hafrm rlhf` with them and writes results.md / results.json beside the runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .bon import RANDOM, bon_report, finished_share, holds_scores, score_all, write_report
from .config import BonConfig, RlhfConfig, config_name
from .rlhf import compare, read_curve, run_rlhf

# ---------------------------------------------------------------- bon-builtin


def experiment_bon_config(spec, rewards: dict) -> BonConfig:
    """The experiment's `bon:` block as a BonConfig whose rewards are the trained runs."""
    known = {f.name for f in dataclasses.fields(BonConfig)}
    unknown = sorted(set(spec.bon) - known)
    if unknown:
        raise ValueError(f"experiment {spec.name!r}: unknown bon field(s) {unknown}; valid: {sorted(known)}")
    values = {"policy": spec.base.get("model", BonConfig.policy), **spec.bon}
    values["reward"] = [f"{label}={directory}" for label, directory in rewards.items()]
    values["output_dir"] = str(Path(spec.output_dir) / "bon")
    return BonConfig(**values)


def _pooled(judge, grids_a: list, grids_b: list) -> dict:
    """Head-to-head counts summed over seeds (seed s of A against seed s of B, on the same prompts)."""
    from .metrics import wilson_interval
    from .selection import head_to_head, selected

    totals = {"wins": 0, "ties": 0, "losses": 0, "same": 0, "prompts": 0}
    for a, b in zip(grids_a, grids_b, strict=True):
        picks_a = selected(a) if a is not None else [0] * len(judge)
        picks_b = selected(b) if b is not None else [0] * len(judge)
        match = head_to_head(judge, picks_a, picks_b)
        for key in ("wins", "ties", "losses"):
            totals[key] += match[key]
        totals["same"] += round(match["agreement"] * len(judge))
        totals["prompts"] += len(judge)
    n = totals["prompts"]
    score = totals["wins"] + totals["ties"] / 2
    return totals | {
        "win_rate": score / n,
        "ci95": list(wilson_interval(score, n)),
        "agreement": totals["same"] / n,
        "agreement_ci95": list(wilson_interval(totals["same"], n)),
    }


def summarise_bon(spec, judge: list[list[float]], selectors: dict[str, list[list[float]]]) -> dict:
    """Per method, over seeds: recall, the pick's judge score, the curve; head-to-head pooled over seeds."""
    import statistics

    from .selection import bon_curve, oracle_curve, random_recall, top_k_recall

    def mean_std(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "per_seed": values}  # fmt: skip

    from .experiment_runs import seeds_of

    seeded = {run: {seed: selectors[f"{run}/seed{seed}"] for seed in seeds_of(spec, run)} for run in spec.runs}
    by_method = {run: list(grids.values()) for run, grids in seeded.items()}
    n = min(len(row) for row in judge)
    table = {}
    for run, grids in by_method.items():
        curves = [bon_curve(judge, grid) for grid in grids]
        top1 = [top_k_recall(judge, grid, 1) for grid in grids]
        table[run] = {
            "top1": mean_std([figures["recall"] for figures in top1]),
            "top2": mean_std([top_k_recall(judge, grid, 2)["recall"] for grid in grids]),
            "top1_untied": mean_std([figures["recall_untied"] for figures in top1]),
            "pick": mean_std([curve[n]["mean"] for curve in curves]),
            "curve": {size: mean_std([curve[size]["mean"] for curve in curves]) for size in curves[0]},
        }
    chance, chance_top1 = bon_curve(judge), random_recall(judge, 1)
    runs = list(by_method)
    matches = {}
    for i, a in enumerate(runs):  # seed s against seed s, over the seeds both runs have
        for b in runs[i + 1 :]:
            common = [seed for seed in seeded[a] if seed in seeded[b]]
            if common:
                matches[f"{a} vs {b}"] = _pooled(judge, [seeded[a][s] for s in common], [seeded[b][s] for s in common])
    matches |= {f"{run} vs {RANDOM}": _pooled(judge, by_method[run], [None] * len(by_method[run])) for run in runs}
    return {
        "prompts": len(judge),
        "n": n,
        "judge_mean": sum(map(sum, judge)) / sum(map(len, judge)),
        "all_tied": top_k_recall(judge, judge, 1)["all_tied"],
        "table": table,
        "random": {
            "top1": chance_top1["recall"],
            "top2": random_recall(judge, 2)["recall"],
            "top1_untied": chance_top1["recall_untied"],
            "pick": chance[n]["mean"],
            "curve": {size: figures["mean"] for size, figures in chance.items()},
        },
        "ceiling": {size: figures["mean"] for size, figures in oracle_curve(judge).items()},
        "head_to_head": matches,
    }


def bon_summary_markdown(spec, summary: dict, config_path: Path, cfg: BonConfig) -> str:
    import yaml

    def cell(figures):
        return f"{figures['mean']:.3f} ± {figures['std']:.3f}"

    n = summary["n"]
    lines = [
        f"# {spec.name}", "", spec.description.strip(), "",
        f"{summary['prompts']} prompts, N = {n} samples each from `{cfg.policy}` (temperature {cfg.temperature}, "
        f"top-p {cfg.top_p}, at most {cfg.max_new_tokens} new tokens, seed {cfg.seed}); judge: the built-in oracle "
        f"(fraction of a prompt's constraints met). Mean judge score of all samples {summary['judge_mean']:.3f}; "
        f"{summary['all_tied']} prompts have all N samples tied (a hit for every selector); {summary['finished']:.0%} "
        f"of the replies ended by themselves (the rest were cut at the length limit). Mean ± std over seeds "
        f"{spec.seeds} of the reward models"
        + "".join(f"; {run}: seed{'s' if len(seeds) > 1 else ''} {seeds}" for run, seeds in spec.run_seeds.items())
        + ".", "",
        f"| selector | top-1 recall | top-2 recall | top-1 recall, untied prompts | judge score of the pick (N = {n}) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for run, row in summary["table"].items():
        lines.append(
            f"| {run} | {cell(row['top1'])} | {cell(row['top2'])} | {cell(row['top1_untied'])} | {cell(row['pick'])} |"
        )
    chance = summary["random"]
    lines.append(
        f"| random | {chance['top1']:.3f} | {chance['top2']:.3f} | {chance['top1_untied']:.3f} | {chance['pick']:.3f} |"
    )
    lines += ["", "Head to head, by the judge, seed s of one against seed s of the other, counts summed over the "
              "seeds both have (the same prompts in every seed, so the interval is optimistic):", "",
              "| A vs B | A wins / ties / B wins | win rate of A [95%] | same pick [95%] |", "|---|---|---|---|"]  # fmt: skip
    for name, match in summary["head_to_head"].items():
        low, high = match["ci95"]
        a_low, a_high = match["agreement_ci95"]
        lines.append(f"| {name} | {match['wins']} / {match['ties']} / {match['losses']} | {match['win_rate']:.3f} "
                     f"[{low:.3f}, {high:.3f}] | {match['agreement']:.3f} [{a_low:.3f}, {a_high:.3f}] |")  # fmt: skip
    sizes = list(summary["ceiling"])
    lines += ["", "Best-of-N curve: the judge's mean score of the pick among each prompt's first N' samples "
              "(mean over seeds).", "", "| selector | " + " | ".join(f"N' = {size}" for size in sizes) + " |",
              "|---|" + "---|" * len(sizes)]  # fmt: skip
    for run, row in summary["table"].items():
        lines.append(f"| {run} | " + " | ".join(f"{row['curve'][size]['mean']:.3f}" for size in sizes) + " |")
    lines.append("| random | " + " | ".join(f"{summary['random']['curve'][size]:.3f}" for size in sizes) + " |")
    lines.append("| judge's best | " + " | ".join(f"{summary['ceiling'][size]:.3f}" for size in sizes) + " |")
    lines += ["", "## Budget and command", "", f"`hafrm experiment {config_name(config_path, 'experiments')}`", "", "```yaml",
              yaml.safe_dump({"base": spec.base, "runs": spec.runs, "seeds": spec.seeds,
                              **({"run_seeds": spec.run_seeds} if spec.run_seeds else {}), "bon": spec.bon},
                             sort_keys=False).rstrip(), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_bon_experiment(spec, config_path: Path) -> dict:
    """Train every run and seed, sample once, let each run pick, judge; results.md / .json / bon-curve.png."""
    from . import plots
    from .experiment_runs import train_all

    # a run restored without weights serves where its scores of the samples are kept; any other is trained
    scored = Path(spec.output_dir) / "bon"
    rewards = train_all(spec, needs_weights=lambda label, directory: not holds_scores(scored, label, directory))
    cfg = experiment_bon_config(spec, rewards)
    lines, judge_name, judge, selectors = score_all(cfg)
    report = bon_report(judge_name, judge, selectors) | {"finished": finished_share(lines)}
    write_report(Path(cfg.output_dir), report, f"{spec.name}: every seed")
    summary = summarise_bon(spec, judge, selectors) | {"finished": report["finished"]}
    output = Path(spec.output_dir)
    (output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "results.md").write_text(bon_summary_markdown(spec, summary, config_path, cfg))
    curves = {
        run: [(size, f["mean"], (f["mean"] - f["std"], f["mean"] + f["std"])) for size, f in row["curve"].items()]
        for run, row in summary["table"].items()
    }
    curves["random"] = [(size, value, (value, value)) for size, value in summary["random"]["curve"].items()]
    curves["judge's best"] = [(size, value, (value, value)) for size, value in summary["ceiling"].items()]
    plots.bon_curve_plot(curves, output / "bon-curve.png", f"{spec.name}: oracle score of the pick",
                         band="bands: ± std over seeds")  # fmt: skip
    print((output / "results.md").read_text())
    print(f"results: {output / 'results.md'} (every figure: results.json; the samples and scores: {cfg.output_dir})")
    return summary


# ---------------------------------------------------------------- rlhf-builtin


def experiment_rlhf_config(spec, reward: str, output_dir: Path) -> RlhfConfig:
    """The experiment's `rlhf:` block as the RlhfConfig of one policy, trained against `reward`."""
    known = {f.name for f in dataclasses.fields(RlhfConfig)}
    unknown = sorted(set(spec.rlhf) - known)
    if unknown:
        raise ValueError(f"experiment {spec.name!r}: unknown rlhf field(s) {unknown}; valid: {sorted(known)}")
    values = {"policy": spec.base.get("model", RlhfConfig.policy), **spec.rlhf, "reward": reward}
    values["output_dir"] = str(output_dir)
    if any(output_dir.glob("checkpoint-*")) and not (output_dir / "rlhf.json").is_file():
        values["resume"] = "last"
    return RlhfConfig(**values)


def run_rlhf_experiment(spec, config_path: Path) -> dict:
    """Train the reward models, one policy per reward model and seed at the same settings, compare them step by step."""
    import yaml

    from . import plots
    from .experiment_runs import train_all

    rewards = train_all(spec)
    output = Path(spec.output_dir)
    policies = {}
    for label, directory in rewards.items():
        policy_dir = output / "policies" / label.replace("/", "-")
        print(f"\n=== {spec.name}: policy trained against {label}")
        run_rlhf(experiment_rlhf_config(spec, str(directory), policy_dir))
        policies[label] = policy_dir
    curves = {label: read_curve(directory) for label, directory in policies.items()}
    runs = list(spec.runs)
    matches = {}
    for seed in spec.seeds:
        for i, a in enumerate(runs):
            for b in runs[i + 1 :]:
                pair = (policies[f"{a}/seed{seed}"], policies[f"{b}/seed{seed}"])
                matches[f"{a} vs {b}, seed {seed}"] = compare(
                    [str(p) for p in pair], str(output / "compare" / f"{a}-vs-{b}-seed{seed}")
                )
    summary = {"curves": curves, "head_to_head": matches}
    (output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    cfg = experiment_rlhf_config(spec, "REWARD", output / "policies")
    steps = sorted({point["step"] for curve in curves.values() for point in curve})
    lines = [f"# {spec.name}", "", spec.description.strip(), "",
             f"Policy `{cfg.policy}` ({cfg.finetune}), {cfg.algorithm.upper()}, {cfg.max_steps} steps of {cfg.batch_size} "
             f"prompts x {cfg.num_generations} completions (temperature {cfg.temperature}, at most {cfg.max_new_tokens} "
             f"tokens), KL β {cfg.beta}, lr {cfg.lr}, rewards normalised: {cfg.normalize}. Held out: the first "
             f"{cfg.eval_limit} prompts of {cfg.eval_prompts}, answered greedily.", "",
             "Mean oracle score of the held-out answers (fraction of constraints met) [95% interval]:", "",
             "| policy trained against | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]  # fmt: skip
    for label, curve in curves.items():
        by_step = {p["step"]: p for p in curve}
        cells = []
        for step in steps:
            point = by_step.get(step, {}).get("oracle")
            cells.append(f"{point['mean']:.3f} [{point['ci95'][0]:.3f}, {point['ci95'][1]:.3f}]" if point else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, points in matches.items():
        lines += ["", f"Oracle win rate, {name} (ties count half):", "",
                  "| step | wins / ties / losses | win rate [95%] |", "|---|---|---|"]  # fmt: skip
        for p in points:
            lines.append(f"| {p['step']} | {p['wins']} / {p['ties']} / {p['losses']} | {p['win_rate']:.3f} "
                         f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] |")  # fmt: skip
    lines += ["", "## Budget and command", "", f"`hafrm experiment {config_name(config_path, 'experiments')}`", "", "```yaml",
              yaml.safe_dump({"base": spec.base, "runs": spec.runs, "seeds": spec.seeds, "rlhf": spec.rlhf},
                             sort_keys=False).rstrip(), "```"]  # fmt: skip
    (output / "results.md").write_text("\n".join(lines) + "\n")
    series = {label: [(p["step"], p["oracle"]["mean"], p["oracle"]["ci95"]) for p in curve if "oracle" in p]
              for label, curve in curves.items()}  # fmt: skip
    plots.curve_plot(series, output / "oracle-curve.png", f"{spec.name}: held-out oracle score of the policy",
                     "training step", "mean oracle score (greedy answers)", limits=(0.0, 1.0))  # fmt: skip
    wins = {name: [(p["step"], p["win_rate"], p["ci95"]) for p in points] for name, points in matches.items()}
    plots.curve_plot(wins, output / "win-rate.png", f"{spec.name}: oracle win rate over steps", "training step",
                     "win rate (ties count half)", reference=0.5, reference_label="even (0.5)",
                     limits=(0.0, 1.0))  # fmt: skip
    print((output / "results.md").read_text())
    print(f"results: {output / 'results.md'} (plots: oracle-curve.png, win-rate.png; policies: {output / 'policies'})")
    return summary
