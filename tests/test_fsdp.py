"""hafrm's hybrid forward under FSDP2 (`fully_shard`), 2 CPU processes on gloo: the sharded run's gradients
equal one unsharded process's on the whole batch, in full / freeze / lora, padded and packed, with the
lm_head's logits kept or recomputed, with and without activation checkpointing (tests/fsdp_worker.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_tiny_model

WORKER = Path(__file__).with_name("fsdp_worker.py")


@pytest.fixture(scope="module")
def results(tiny_model, tokenizer_dir, tmp_path_factory, free_port) -> dict[str, dict]:
    untied = build_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("fsdp-untied"), tied=False)
    output = tmp_path_factory.mktemp("fsdp") / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), str(WORKER), tiny_model, str(untied), str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return {case["case"]: case for case in json.loads(output.read_text())}


CASES = ["full-padded", "full-packed-recompute", "full-untied-packed", "freeze-padded", "lora-packed"]
CASES += ["full-checkpointing"]


@pytest.mark.parametrize("case", CASES)
def test_fsdp2_gradients_match_one_process(results, case):
    result = results[case]
    assert result["sharded"], "every parameter should be a DTensor shard"
    assert result["sharded_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    assert result["sharded_trainable"] == result["trainable"], "a trainable parameter got no gradient"
    assert result["worst_relative_grad_error"] < 1e-4, result["worst_parameter"]
    # FSDP2 hooks the root's outputs to unshard for backward and to wait for the gradient reductions:
    # the heads' results must be those outputs.
    assert result["root_pre_backward"]


def test_every_case_ran(results):
    assert sorted(results) == sorted(CASES)
    assert len(results["freeze-padded"]["trainable"]) < len(results["full-untied-packed"]["trainable"])
    assert any("lora_B" in name for name in results["lora-packed"]["trainable"])
