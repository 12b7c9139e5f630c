"""`hafrm eval` and `hafrm score`: read what `hafrm train` wrote and judge pairs or score responses.

    from hafrm.evaluate import evaluate, score
    report = evaluate(EvalConfig(model="runs/hafrm", data="test.jsonl"))
    rewards = score(ScoreConfig(model="runs/hafrm", prompt="Hi", response=["Hello!", "Go away."]))

Accuracy counts a pair as right when chosen scores strictly above rejected; ties are counted apart.
The implicit reward β·(log π(y|x) - log π_ref(y|x)) needs the reference policy: the base model named
in hafrm.json, loaded and used before the trained model is (never both in memory), or the LoRA model
with its adapters disabled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .config import EvalConfig, ScoreConfig, TrainConfig
from .data import load_data, tokenize_pairs
from .data.length_rule import longer_is_better_accuracy
from .data.tokenize import pair_sequences
from .losses import needs_reference
from .metrics import comparison, fit_combination, grouped, perplexity
from .modelcard import record_evaluation
from .runrecord import read_run_record
from .scoring import RewardModel


def _split_pairs(scores: dict, n_pairs: int) -> dict:
    """{name: [2N]} over chosen then rejected -> {chosen_NAME: [N], rejected_NAME: [N]}."""
    return {
        f"{side}_{name}": values[:n_pairs] if side == "chosen" else values[n_pairs:]
        for name, values in scores.items()
        for side in ("chosen", "rejected")
    }


def score_sets(cfg: EvalConfig, run: dict, pair_sets: dict, max_length: int, implicit: bool, need_logps: bool):
    """Tokenise and score every set through `scoring.RewardModel` -> ({name: dataset}, {name: truncation}, {name: scores}).

    A pair is cut as training cuts it (its prompt as far as the longer reply needs); the reference pass
    (base model alone, or the LoRA run with adapters off) runs before the trained model loads.
    """
    reward = RewardModel(cfg.model, max_length, 2 * cfg.batch_size, cfg.prompt_sharing, getattr(torch, cfg.dtype))
    tokenised = {name: tokenize_pairs(pairs, reward.tokenizer, max_length) for name, pairs in pair_sets.items()}
    datasets = {name: dataset for name, (dataset, _) in tokenised.items()}
    sequences = {name: pair_sequences(dataset) for name, dataset in datasets.items()}
    need_logps = need_logps or implicit
    heads = {"need_rewards": run["reward_head"], "need_logps": need_logps}
    references = {}
    if implicit and needs_reference(run["policy_loss"]) and reward.is_lora:
        references = {
            name: reward.reference_logps(ids, prompts, "reference") for name, (ids, prompts) in sequences.items()
        }
    elif implicit and needs_reference(run["policy_loss"]):
        with reward.base_kept() as base:  # one load of the base model for every set, freed before the run loads
            base_states = stored_frozen_states(cfg, run, base, datasets, {**heads, "need_rewards": False})
            for name, (ids, prompts) in sequences.items():
                references[name] = reward.reference_logps(ids, prompts, "reference", base_states.get(name))
    frozen = stored_frozen_states(cfg, run, reward.model, datasets, heads) if not reward.is_lora else {}
    scores = {}
    for name, (ids, prompts) in sequences.items():
        values = reward.sequence_scores(ids, prompts, **heads, desc=f"scoring {name}", frozen=frozen.get(name))
        if implicit:
            values["implicit"] = reward.implicit_from(values["logps"], values["lengths"], references.get(name))
        scores[name] = _split_pairs(values, len(datasets[name]))
    return datasets, {name: truncation for name, (_, truncation) in tokenised.items()}, scores


def frozen_blocks(run: dict, model) -> int:
    """How many lower blocks a run kept frozen (`--finetune freeze`); 0 for full and LoRA runs."""
    if run.get("finetune") != "freeze":
        return 0
    return max(0, model.config.get_text_config().num_hidden_layers - int(run["trainable_layers"]))


def stored_frozen_states(cfg: EvalConfig, run: dict, model, datasets: dict, heads: dict):
    """{set: StoredFrozenStates} for a freeze run with `--prefix-cache`, checked on one set; {} where off."""
    from .layout import layout_tolerance
    from .prefix_cache import StoredFrozenStates

    n_frozen = frozen_blocks(run, model)
    if not cfg.prefix_cache or n_frozen < 1 or not datasets:
        return {}
    stored = {}
    for name, dataset in datasets.items():
        sequences, prompt_lengths = pair_sequences(dataset)
        stored[name] = StoredFrozenStates.load_or_build(model, n_frozen, sequences, cfg.batch_size)
        if len(stored) == 1:  # the first set checks that this model gives the same numbers from the states
            try:
                error = stored[name].error(model, sequences, prompt_lengths, **heads)
            except (
                Exception
            ) as exc:  # an architecture whose forward does not take inputs_embeds with blocks handed through
                error, failure = float("inf"), f"failed ({type(exc).__name__}: {exc})"
            else:
                failure = f"gives other results (relative difference {error:.2g})"
            if error > layout_tolerance(model):
                print(f"note: frozen-prefix states off: {type(model).__name__} run from the stored states {failure}")
                return {}
    return stored


def _validation_pairs(run: dict):
    """The run's own validation pairs (for fitting λ), rebuilt from hafrm.json exactly as training built them."""
    from .train import validation_pairs

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{key: value for key, value in run.items() if key in fields and key != "model"})
    cfg.model = run["base_model"]
    return validation_pairs(cfg)


def evaluate(cfg: EvalConfig) -> dict:
    if cfg.rewardbench:
        report = evaluate_rewardbench(cfg)
        if cfg.json:
            Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.json).write_text(json.dumps(report, indent=2) + "\n")
        return report
    run = read_run_record(cfg.model)
    max_length = cfg.max_length or run["max_length"]
    pairs, load_reports = load_data(cfg.data, cfg.format, cfg.skip_bad_rows, default_split="test")
    for load_report in load_reports:
        print(load_report.summary())
    # dpo's implicit reward is its reward: --no-implicit leaves it out for the runs with a reward head only
    implicit = run["method"] == "dpo" or (cfg.implicit and run["method"] != "rm")
    pair_sets = {"test": pairs}
    combine = cfg.combine and implicit and run["reward_head"]
    if combine:
        validation = _validation_pairs(run)
        if validation:
            pair_sets["validation"] = validation
        else:
            print("note: the run has no validation data, so the combined score r + λ·implicit is not fitted")
            combine = False
    datasets, truncations, scores = score_sets(cfg, run, pair_sets, max_length, implicit, implicit or cfg.perplexity)
    heads = _heads(scores["test"], datasets["test"], run, implicit)
    report = {
        "model": str(cfg.model),
        "data": cfg.data,
        "method": run["method"],
        "pairs": len(pairs),
        "truncation": {"max_length": max_length, **_truncation(truncations["test"])},
        "length_rule": {"accuracy": longer_is_better_accuracy(pairs)},
    }
    if combine:
        validation_heads = _heads(scores["validation"], datasets["validation"], run, implicit)
        margins = [
            chosen - rejected
            for chosen, rejected in (validation_heads["reward_head"], validation_heads["implicit_reward"])
        ]
        lam = fit_combination(*margins)
        heads["combined"] = tuple(r + lam * i for r, i in zip(heads["reward_head"], heads["implicit_reward"]))
        report["combined_lambda"] = {
            "lambda": lam,
            "fitted_on": f"{len(pair_sets['validation'])} validation pairs of the run",
        }
    for head, (chosen, rejected) in heads.items():
        report[head] = comparison(chosen, rejected, calibration=head == "reward_head")
    if "chosen_logps" in scores["test"]:
        test_scores = scores["test"]
        report["perplexity"] = {
            side: perplexity(test_scores[f"{side}_logps"], test_scores[f"{side}_lengths"])
            for side in ("chosen", "rejected")
        }
    for column in ("source", "subset"):
        groups = grouped(datasets["test"][column], heads)
        if column == "source" or set(groups) != {"(none)"}:
            report[f"per_{column}"] = groups
    if cfg.save_scores:  # chosen then rejected, in data order: aligned across runs on the same data
        report["scores"] = {head: chosen.tolist() + rejected.tolist() for head, (chosen, rejected) in heads.items()}
    print_report(report)
    _write_outputs(cfg, report, heads, scores["test"])
    record_evaluation(cfg.model, cfg.data, report)  # the run's card lists what it was evaluated on
    return report


def _truncation(report) -> dict:
    return {"prompt_truncated": report.prompt_truncated, "response_truncated": report.response_truncated}


def _heads(scores: dict, dataset, run: dict, implicit: bool) -> dict:
    heads = {}
    if run["reward_head"]:
        heads["reward_head"] = (scores["chosen_rewards"], scores["rejected_rewards"])
    if implicit:
        heads["implicit_reward"] = (scores["chosen_implicit"], scores["rejected_implicit"])
    return heads


def _write_outputs(cfg: EvalConfig, report: dict, heads: dict, scores: dict) -> None:
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(report, indent=2) + "\n")
    if cfg.plots:
        for path in write_eval_plots(Path(cfg.plots), report, heads, scores):
            print(f"  wrote {path}")


def write_eval_plots(directory: Path, report: dict, heads: dict, scores: dict) -> list[Path]:
    from . import plots

    directory.mkdir(parents=True, exist_ok=True)
    name = f"{Path(report['model']).name} ({report['method']}) on {report['data']}"
    written = []
    calibrated = "reward_head" if "reward_head" in heads else "implicit_reward"
    chosen, rejected = heads[calibrated]
    written.append(plots.calibration_plot(chosen.tolist(), rejected.tolist(), directory / "calibration.png",
                                          title=f"Calibration of σ(margin), {calibrated.replace('_', ' ')}: {name}"))  # fmt: skip
    margins = {head.replace("_", " "): (c - r).tolist() for head, (c, r) in heads.items()}
    written.append(
        plots.margin_histogram(margins, directory / "margins.png", title=f"Margins r(chosen) − r(rejected): {name}")
    )
    if "chosen_logps" in scores:
        per_token = {
            side: torch.exp(-scores[f"{side}_logps"] / scores[f"{side}_lengths"].clamp(min=1)).tolist()
            for side in ("chosen", "rejected")
        }
        written.append(plots.per_token_perplexity_plot({report["method"]: (per_token["chosen"], per_token["rejected"])},
                                                       directory / "perplexity.png", title=f"Per-token perplexity: {name}"))  # fmt: skip
    return written


HEAD_LABELS = {"reward_head": "reward head", "implicit_reward": "implicit reward", "combined": "combined r+λ·i"}


def print_report(report: dict) -> None:
    truncation = report["truncation"]
    print(f"{report['model']} ({report['method']}) on {report['data']}: {report['pairs']} pairs")
    print(
        f"  truncated at {truncation['max_length']} tokens: prompt in {truncation['prompt_truncated']}, "
        f"response in {truncation['response_truncated']} pairs"
    )
    for key, label in HEAD_LABELS.items():
        if key in report:
            r = report[key]
            low, high = r["ci95"]
            extra = f"  ECE {r['ece']:.4f}" if "ece" in r else ""
            print(
                f"  {label:<16} accuracy {r['accuracy']:.4f} [{low:.3f}, {high:.3f}]  ties {r['ties']}  "
                f"margin {r['margin']:+.4f}  scores {r['mean']:+.3f} ± {r['std']:.3f}{extra}"
            )
    if "combined_lambda" in report:
        print(f"  λ = {report['combined_lambda']['lambda']:g}, fitted on {report['combined_lambda']['fitted_on']}")
    print(f"  {'length rule':<16} accuracy {report['length_rule']['accuracy']:.4f}  (longer response wins)")
    if "perplexity" in report:
        ppl = report["perplexity"]
        print(
            f"  per-token perplexity: chosen {ppl['chosen']['mean']:.3f} (var {ppl['chosen']['variance']:.3f}), "
            f"rejected {ppl['rejected']['mean']:.3f} (var {ppl['rejected']['variance']:.3f})"
        )
    for column in ("per_source", "per_subset"):
        if column in report:
            print(f"  {column.replace('_', ' ')}:")
            for label, group in report[column].items():
                figures = "  ".join(f"{HEAD_LABELS[h]} {group[h]['accuracy']:.4f}" for h in HEAD_LABELS if h in group)
                print(f"    {label:<28} {group['pairs']:>6} pairs  {figures}")


def score(cfg: ScoreConfig) -> list[float]:
    """Reward of each response to the prompt, and of each full text, by the run's own reward (head, or implicit)."""
    if not cfg.response and not cfg.text:
        raise ValueError("give at least one --response (with --prompt) or --text to score")
    reward = RewardModel(cfg.model, cfg.max_length, share_prompts=cfg.prompt_sharing, dtype=getattr(torch, cfg.dtype))
    items = [(cfg.prompt, response) for response in cfg.response] + list(cfg.text)
    rewards = reward.score(items)
    for i, (shown, value) in enumerate(zip(cfg.response + cfg.text, rewards)):
        print(f"{value:+.4f}\t{i}\t{shown[:80]!r}")
    print_truncation_note(reward.truncated, len(items), reward.max_length)
    return rewards


def print_truncation_note(truncated: int, items: int, max_length: int) -> None:
    """The one line every command prints when items were cut to max_length (the training rule)."""
    if truncated:
        print(f"note: {truncated} of {items} items exceed {max_length} tokens and were cut as training cuts them")


def evaluate_rewardbench(cfg: EvalConfig) -> dict:
    """RewardBench v1 or v2 from a local copy, scored by the run's reward (head, or implicit) or a classifier."""
    from .rewardbench import print_rewardbench, read_rewardbench, score_v1, score_v2

    version, rows = read_rewardbench(cfg.rewardbench)
    reward = RewardModel(cfg.model, cfg.max_length, cfg.batch_size, cfg.prompt_sharing, getattr(torch, cfg.dtype))
    counts = {"items": 0, "truncated": 0}

    def scores(items):
        values = reward.score(items)
        counts["items"] += len(items)
        counts["truncated"] += reward.truncated
        return values

    report = (score_v1 if version == "v1" else score_v2)(rows, scores)
    report.update(
        model=str(cfg.model), data=str(cfg.rewardbench), method=reward.run.get("method", reward.kind),
        truncation={"max_length": reward.max_length, **counts},
    )  # fmt: skip
    print_rewardbench(report)
    print_truncation_note(counts["truncated"], counts["items"], reward.max_length)
    return report
