"""A shipped study config at another budget: the same design (runs, baselines, sets) with more data, longer
sequences and a GPU's batch, or at toy sizes for a dry run. Writes the new YAML and prints its path.

    python benchmarks/scale_study.py configs/experiments/study-full.yaml --out runs/gpu --scale 4 \\
        --max-length 1024 --batch-size 16 --bf16                 # 4x the built-in training pairs
    python benchmarks/scale_study.py configs/experiments/study-lora.yaml --out /tmp/x --toy DATA --model DIR

What changes: every `builtin:train@N` (the base's and each run's) becomes `builtin:train@(scale·N)`, every
built-in test set `--test-scale` times larger; `max_length`, `batch_size`, `bf16`, `model` and `seeds` as
given (`run_seeds` kept where those seeds remain); output_dir goes under --out. A GPU machine has no network:
a test set named by source (`pandalm`, `hh-harmless:test@181`) reads the copy under --shared (default
../shared/data) where it is there, and is left out (with a note) where not. `--toy DATA` makes every run
read DATA for training and every set evaluate on it, 2 steps, seed 0: the design end to end in minutes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

BUILTIN_SIZE = re.compile(r"^builtin:(train|test|validation)@(\d+)$")
# source name -> (its file under --shared, the split to carve it with, or None for the whole file)
LOCAL_COPIES = {"pandalm": ("pandalm/testset-v1.json", None), "hh-harmless": ("hh-harmless/train.jsonl.gz", "test")}


def local_copy(spec: str, shared: Path) -> str | None:
    """A named test set's offline copy under `shared` (its weight kept), or None where there is none."""
    target, *rest = str(spec).split(":")
    if target not in LOCAL_COPIES:
        return None
    path, split = LOCAL_COPIES[target]
    if not (shared / path).is_file():
        return None
    weight = [piece for piece in rest if not piece.startswith(("test", "train"))]
    return ":".join([str(shared / path), *([split] if split else []), *weight])


def scaled(spec: str, split: str, factor: float) -> str:
    """`builtin:SPLIT@N` -> `builtin:SPLIT@(factor·N)`; anything else as it is."""
    match = BUILTIN_SIZE.match(str(spec))
    if not match or match.group(1) != split:
        return spec
    return f"builtin:{split}@{round(int(match.group(2)) * factor)}"


def rescale(config: dict, args) -> dict:
    config = dict(config)
    config["name"] = f"{config['name']}-{args.tag}"
    config["output_dir"] = str(Path(args.out) / config["name"])
    base = dict(config.get("base", {}))
    runs = {name: dict(overrides) for name, overrides in config["runs"].items()}
    if args.toy:
        base |= {"data": args.toy, "eval_data": None, "val_fraction": 0.1, "max_steps": 2, "batch_size": 2,
                 "max_length": 96, "eval_steps": 2, "logging_steps": 1}  # fmt: skip
        for overrides in runs.values():
            overrides.pop("data", None)
        config["evaluate"] = {name: args.toy for name in config["evaluate"]}
        config["seeds"], config["run_seeds"] = [0], {}
        config["eval_options"] = {**config.get("eval_options", {}), "batch_size": 2}
    else:
        base["data"] = scaled(base.get("data", ""), "train", args.scale)
        for overrides in runs.values():
            if "data" in overrides:
                overrides["data"] = scaled(overrides["data"], "train", args.scale)
        config["evaluate"] = {name: scaled(data, "test", args.test_scale) for name, data in config["evaluate"].items()}
        for name, data in list(config["evaluate"].items()):
            if str(data).startswith("builtin:"):
                continue
            copy = local_copy(data, Path(args.shared))
            if copy is not None:
                config["evaluate"][name] = copy
                continue
            print(f"note: no offline copy of {data} under {args.shared}: the set {name!r} is left out", file=sys.stderr)
            del config["evaluate"][name]
            config.get("set_runs", {}).pop(name, None)
        for key in ("max_length", "batch_size"):
            if getattr(args, key) is not None:
                base[key] = getattr(args, key)
        if args.bf16:
            base["bf16"] = True
        if args.seeds:
            seeds = [int(seed) for seed in args.seeds.split(",")]
            config["seeds"] = seeds
            kept = {run: [s for s in run_seeds if s in seeds] for run, run_seeds in config.get("run_seeds", {}).items()}
            config["run_seeds"] = {run: run_seeds for run, run_seeds in kept.items() if run_seeds}
    if args.model:
        base["model"] = args.model
    config["base"], config["runs"] = base, runs
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", required=True, help="folder for the new YAML and the experiment's output")
    parser.add_argument("--tag", default="gpu", help="appended to the experiment's name (default gpu)")
    parser.add_argument("--scale", type=float, default=4.0, help="times the built-in training pairs (default 4)")
    parser.add_argument("--test-scale", type=float, default=2.0, help="times the built-in test pairs (default 2)")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    parser.add_argument("--model", help="another base model")
    parser.add_argument("--shared", default="../shared/data", help="offline copies of named test sets")
    parser.add_argument("--toy", metavar="DATA", help="toy sizes: train and evaluate on DATA, 2 steps, seed 0")
    args = parser.parse_args()
    config = rescale(yaml.safe_load(args.config.read_text()), args)
    path = Path(args.out) / f"{config['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    print(path)


if __name__ == "__main__":
    main()
