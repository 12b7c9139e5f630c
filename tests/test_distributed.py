"""`hafrm train` under `accelerate launch` with 2 CPU processes on gloo matches a 1-process run.

Same global batch (2 x 4 pairs against 1 x 8), same seed, no dropout, one epoch over a training set the global
batch divides, so both runs see the same pairs in the same steps: per-step losses and gradient
norms, and the validation figures, must agree to float tolerance. This is the check that the hybrid
forward goes through DDP (gradients synchronised, both heads included) and that logged metrics are
reduced over processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from make_data import write_pairs

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
# 40 pairs, 20% held out -> 32 training pairs = 4 global batches of 8.
COMMON = ["--max-length", "96", "--lr", "5e-3", "--logging-steps", "1", "--val-fraction", "0.2"]
COMMON += ["--max-steps", "4", "--eval-steps", "2", "--eval-on-start", "false"]


def run(command: list[str], cache: Path) -> None:
    env = {**os.environ, "HAFRM_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def log_history(directory: Path) -> list[dict]:
    return json.loads((directory / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "haf", "--finetune", "full"],
        ["--method", "dpo", "--finetune", "lora", "--reference", "adapters"],
    ],
    ids=["haf-full", "dpo-lora-adapters"],
)
def test_two_processes_match_one(flags, tiny_model, tmp_path, free_port):
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    args = ["train", "--model", tiny_model, "--data", str(data), *COMMON, *flags]
    hafrm = [sys.executable, "-m", "hafrm.cli"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu-ddp.yaml")]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "hafrm.cli"]
    run([*hafrm, *args, "--batch-size", "8", "--output-dir", str(tmp_path / "one")], tmp_path / "cache")
    run([*launch, *args, "--batch-size", "4", "--output-dir", str(tmp_path / "two")], tmp_path / "cache")

    one, two = log_history(tmp_path / "one"), log_history(tmp_path / "two")
    train_one = [entry for entry in one if "loss" in entry]
    train_two = [entry for entry in two if "loss" in entry]
    assert [e["step"] for e in train_one] == [e["step"] for e in train_two] == [1, 2, 3, 4]
    for a, b in zip(train_one, train_two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), (a, b)
        assert b["accuracy"] == pytest.approx(a["accuracy"]), (a, b)  # reduced over both processes
    evals_one = [entry for entry in one if "eval_accuracy" in entry]
    evals_two = [entry for entry in two if "eval_accuracy" in entry]
    assert len(evals_one) == len(evals_two) == 2
    for a, b in zip(evals_one, evals_two):
        for name in ("eval_accuracy", "eval_margin", "eval_loss"):
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (name, a, b)
    assert (tmp_path / "two" / "hafrm.json").is_file()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(path)
    assert config.num_processes >= 2
    expected = {"ddp": "MULTI_GPU", "cpu-ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
    assert str(config.distributed_type).split(".")[-1] == expected[path.stem]
    if config.distributed_type == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
