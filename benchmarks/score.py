"""Scoring throughput: hafrm's scorer against plain AutoModelForSequenceClassification loops.

    python benchmarks/score.py                          # default model, 64 shared HH pairs, length 512
    python benchmarks/score.py --pairs 128 --batch-size 16 --rounds 3

All loops load the same checkpoint (the model with a reward head, saved once to a temporary
directory) and score the same pairs, truncated to the same --max-length; model loading is not timed,
tokenisation is. The baselines are plain loops over AutoModelForSequenceClassification: pairs in
file order, --batch-size conversations per batch, chosen and rejected in separate batches, padded
either to the fixed --max-length (`fixed`, the issue's baseline) or to each batch's longest row
(`longest`, what RewardBench's pipeline does with padding=True). hafrm's is the loop `hafrm eval`
and `hafrm score` run (inference.score_sequences): the 2N responses sorted by length, 2 x --batch-size
per forward pass, only the reward head, each pair's prompt run once (`hafrm`) or twice
(`hafrm-unshared`, --no-prompt-sharing). Rounds alternate the loops; the table prints pairs per
second, min / median / max over rounds, and checks that all give the same rewards.

Best-of-N (--bon 4,8): N responses to each of --bon-prompts prompts (stand-ins for N samples: the
prompt's own chosen and rejected replies and those of the pairs after it, so HH lengths), scored the
way `hafrm bon` scores them (`scoring.RewardModel.score`: the N responses of a prompt in one unit,
the prompt run once) against a per-response loop (one AutoModelForSequenceClassification call per
response, as a reward server without batching does) and against hafrm with sharing off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import as_messages, default_data, spread  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=None, help="preference file (default: the shared HH-harmless pairs)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch (both sides)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bon", default="4,8", help="comma-separated N for the best-of-N case ('' to skip it)")
    parser.add_argument("--bon-prompts", type=int, default=8, help="prompts in the best-of-N case")
    return parser.parse_args(argv)


def save_reward_model(model_name: str, directory: Path) -> None:
    from hafrm.checkpoint import load_base_model
    from hafrm.runrecord import write_run_record

    model, tokenizer = load_base_model(model_name, with_score_head=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_run_record(directory, {"base_model": model_name, "reward_head": True})  # the reader fills in the rest


@torch.inference_mode()
def hafrm_scores(reward, tokenizer, pairs, batch_size: int, max_length: int, sharing: bool = True) -> torch.Tensor:
    from hafrm.data import tokenize_pairs
    from hafrm.data.tokenize import pair_sequences

    dataset, _ = tokenize_pairs(pairs, tokenizer, max_length)
    reward.batch_size, reward.share_prompts = 2 * batch_size, sharing
    rewards = reward.sequence_scores(*pair_sequences(dataset))["rewards"]
    return torch.stack([rewards[: len(pairs)], rewards[len(pairs) :]], dim=1)  # [N, 2]


def conversation(prompt, response) -> list[dict]:
    return as_messages(prompt, "user") + as_messages(response, "assistant")


def fits_untruncated(tokenizer, pair, max_length: int) -> bool:
    """Both sides fit: the two loops truncate differently (hafrm cuts the prompt's start), so compare those only."""
    return all(
        len(tokenizer.apply_chat_template(conversation(pair.prompt, response), tokenize=True)["input_ids"])
        <= max_length
        for response in (pair.chosen, pair.rejected)
    )


@torch.inference_mode()
def baseline_scores(model, tokenizer, pairs, batch_size: int, max_length: int, padding) -> torch.Tensor:
    columns = []
    for side in ("chosen", "rejected"):
        texts = [tokenizer.apply_chat_template(conversation(p.prompt, getattr(p, side)), tokenize=False) for p in pairs]
        values = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=padding,
                truncation=True,
                max_length=max_length,
                add_special_tokens=False,
                return_tensors="pt",
            )
            values.append(model(**batch).logits[:, 0].float())
        columns.append(torch.cat(values))
    return torch.stack(columns, dim=1)  # [N, 2]


def main(argv=None) -> None:
    opts = parse_args(argv)
    from transformers import AutoModelForSequenceClassification

    from hafrm.data import load_data
    from hafrm.scoring import RewardModel

    pairs, _ = load_data(opts.data or default_data(), skip_bad_rows=True)
    pairs = pairs[: opts.pairs]
    with tempfile.TemporaryDirectory() as directory:
        save_reward_model(opts.model, Path(directory))
        ours = RewardModel(directory, opts.max_length)
        ours.load()  # while the directory exists
        tokenizer = ours.tokenizer
        tokenizer.padding_side = "right"
        theirs = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1).eval()
    loops = {
        "hafrm": partial(hafrm_scores, ours),
        "hafrm-unshared": partial(hafrm_scores, ours, sharing=False),
        "fixed": partial(baseline_scores, theirs, padding="max_length"),
        "longest": partial(baseline_scores, theirs, padding="longest"),
    }
    timings: dict[str, list[float]] = {name: [] for name in loops}
    results = {}
    print(f"model {opts.model}; {len(pairs)} pairs; batch {opts.batch_size} pairs; max length {opts.max_length}; fp32")
    for round_index in range(opts.rounds):
        for name, run in loops.items():
            started = time.perf_counter()
            results[name] = run(tokenizer, pairs, opts.batch_size, opts.max_length)
            rate = len(pairs) / (time.perf_counter() - started)
            timings[name].append(rate)
            print(f"  round {round_index + 1} {name:<9} {rate:8.2f} pairs/s", flush=True)
    fits = torch.tensor([fits_untruncated(tokenizer, pair, opts.max_length) for pair in pairs])
    difference = max((results["hafrm"] - results[name]).abs()[fits].max().item() for name in ("fixed", "longest"))
    print(f"\n{'loop':<16} {'pairs/s (min/med/max)':>26}")
    for name, rates in timings.items():
        print(f"{name:<16} {spread(rates):>26}")
    for name, target in (("fixed", " (target >= 2x)"), ("longest", ""), ("hafrm-unshared", "")):
        ratios = [a / b for a, b in zip(timings["hafrm"], timings[name])]
        print(f"hafrm / {name}: {spread(ratios)} (median {statistics.median(ratios):.2f}x){target}")
    difference = max(difference, (results["hafrm"] - results["hafrm-unshared"]).abs().max().item())
    print(f"largest reward difference between the loops: {difference:.2e} ({int(fits.sum())} untruncated pairs)")
    for n in [int(n) for n in opts.bon.split(",") if n.strip()]:
        best_of_n(opts, n, pairs, ours, theirs, tokenizer)


def bon_items(pairs, n: int, prompts: int) -> list[tuple]:
    """N (prompt, response) items for each of the first `prompts` pairs' prompts, responses taken in turn."""
    responses = [response for pair in pairs for response in (pair.chosen, pair.rejected)]
    if len(responses) < 2 * prompts + n:
        raise SystemExit(f"--pairs {len(pairs)} is too few for {prompts} prompts x {n} responses")
    return [(pairs[i].prompt, responses[2 * i + j]) for i in range(prompts) for j in range(n)]


@torch.inference_mode()
def per_response_loop(model, tokenizer, items, max_length: int) -> torch.Tensor:
    values = []
    for prompt, response in items:
        text = tokenizer.apply_chat_template(conversation(prompt, response), tokenize=False)
        batch = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=False, return_tensors="pt")
        values.append(model(**batch).logits[0, 0].float())
    return torch.stack(values)


def best_of_n(opts, n: int, pairs, ours, theirs, tokenizer) -> None:
    items = bon_items(pairs, n, opts.bon_prompts)

    def scored(sharing: bool) -> torch.Tensor:
        ours.batch_size, ours.share_prompts = 2 * opts.batch_size, sharing
        return torch.tensor(ours.score(items))

    loops = {
        "hafrm": lambda: scored(True),
        "hafrm-unshared": lambda: scored(False),
        "per-response": lambda: per_response_loop(theirs, tokenizer, items, opts.max_length),
    }
    timings: dict[str, list[float]] = {name: [] for name in loops}
    results = {}
    for _ in range(opts.rounds):
        for name, run in loops.items():
            started = time.perf_counter()
            results[name] = run()
            timings[name].append(len(items) / (time.perf_counter() - started))
    print(f"\nbest-of-{n}: {opts.bon_prompts} prompts x {n} responses")
    print(f"{'loop':<16} {'responses/s (min/med/max)':>26}")
    for name, rates in timings.items():
        print(f"{name:<16} {spread(rates):>26}")
    for name, target in (("per-response", " (target >= 3x at N = 8)"), ("hafrm-unshared", "")):
        ratios = [a / b for a, b in zip(timings["hafrm"], timings[name])]
        print(f"best-of-{n} hafrm / {name}: {spread(ratios)} (median {statistics.median(ratios):.2f}x){target}")
    difference = max(
        (results["hafrm"] - results[name]).abs().max().item() for name in ("hafrm-unshared", "per-response")
    )
    print(f"best-of-{n} largest reward difference between the loops: {difference:.2e}")


if __name__ == "__main__":
    main()
