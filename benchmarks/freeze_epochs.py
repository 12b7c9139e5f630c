"""Epoch times of `--finetune freeze` with and without the frozen-prefix cache.

    python benchmarks/freeze_epochs.py                         # default model, 64 shared HH pairs, 3 epochs
    python benchmarks/freeze_epochs.py --pairs 128 --trainable-layers 2 --method haf

Both runs train the same pairs in the same order (sequential sampling, no validation) for --epochs
epochs. With the cache, the frozen blocks run once before training (its build time is printed and
counted with the first epoch); every epoch then runs the trained blocks only. The table prints each
epoch's seconds, the first epoch (with the build) over the later ones, and each cached epoch against
the same epoch without the cache; the last training losses of both runs are printed to show they
trained alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, select_pairs, write_trl_file  # noqa: E402


class Epochs(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []
        self.losses: list[float] = []
        self.began = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.began)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=None, help="preference file (default: the shared HH-harmless pairs)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trainable-layers", type=int, default=2)
    parser.add_argument("--method", default="haf")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def run(opts, pairs_file: str, output_dir: str, cache: bool) -> dict:
    from hafrm.config import TrainConfig
    from hafrm.train import train

    epochs = Epochs()
    began = time.perf_counter()
    cfg = TrainConfig(
        model=opts.model,
        data=pairs_file,
        method=opts.method,
        finetune="freeze",
        trainable_layers=opts.trainable_layers,
        prefix_cache=cache,
        max_length=opts.max_length,
        batch_size=opts.batch_size,
        epochs=opts.epochs,
        val_fraction=0.0,
        lr=1e-4,
        sampling="sequential",
        logging_steps=1,
        eval_steps=10**6,
        output_dir=output_dir,
    )
    summary = train(cfg, callbacks=[epochs])
    total = time.perf_counter() - began
    return {
        "epoch_seconds": epochs.seconds,
        "total_seconds": total,
        "losses": epochs.losses,
        "build_seconds": summary["prefix_cache_build_seconds"] or 0.0,
    }


def main(argv=None) -> None:
    opts = parse_args(argv)
    from hafrm.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(opts.model)
    pairs, report = select_pairs(opts.data or default_data(), tokenizer, opts.max_length, opts.pairs)
    results = {}
    with tempfile.TemporaryDirectory(prefix="hafrm-freeze-") as workdir:
        pairs_file = str(write_trl_file(pairs, Path(workdir) / "pairs.jsonl"))
        for name, cache in (("no cache", False), ("cache", True)):
            results[name] = run(opts, pairs_file, str(Path(workdir) / name.replace(" ", "-")), cache)
            print(f"  {name}: epochs {[round(s, 1) for s in results[name]['epoch_seconds']]} s", flush=True)
    plain, cached = results["no cache"], results["cache"]
    # set-up: loading, tokenising, the reference pass (from the cache when there is one), the cache build
    setup = {name: r["total_seconds"] - sum(r["epoch_seconds"]) for name, r in results.items()}
    build = cached["build_seconds"]
    print(
        f"\n{opts.model}; {len(pairs)} pairs ({report['tokens']} tokens); batch {opts.batch_size}; length "
        f"{opts.max_length}; {opts.method}, freeze top {opts.trainable_layers} blocks; {opts.epochs} epochs"
    )
    print(f"{'epoch':<8} {'no cache s':>11} {'cache s':>9} {'cache / no cache':>17}")
    for i, (a, b) in enumerate(zip(plain["epoch_seconds"], cached["epoch_seconds"]), start=1):
        print(f"{i:<8} {a:11.1f} {b:9.1f} {b / a:17.2f}")
    later = statistics.fmean(cached["epoch_seconds"][1:]) if len(cached["epoch_seconds"]) > 1 else float("nan")
    first = cached["epoch_seconds"][0] + build
    print(
        f"cache build: {build:.1f} s; set-up before the first epoch: {setup['no cache']:.1f} s without the cache, "
        f"{setup['cache']:.1f} s with it (build included; its reference pass reads the cache)"
    )
    print(
        f"cached run: first epoch with the build {first:.1f} s / later epochs {later:.1f} s = {first / later:.2f}x"
        " (target >= 2.5x)"
    )
    print(
        f"uncached run: first epoch over later epochs = "
        f"{plain['epoch_seconds'][0] / statistics.fmean(plain['epoch_seconds'][1:]):.2f}x"
    )
    print(
        f"whole run: {plain['total_seconds']:.1f} s without the cache, {cached['total_seconds']:.1f} s with it; "
        f"epochs alone: {sum(plain['epoch_seconds']):.1f} s -> {sum(cached['epoch_seconds']):.1f} s"
    )
    difference = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(plain["losses"], cached["losses"]))
    print(f"largest relative difference between the two runs' step losses: {difference:.1e}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "results": results, "build": build}, indent=2))


if __name__ == "__main__":
    main()
