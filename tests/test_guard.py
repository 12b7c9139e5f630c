"""hafrm.guard: a non-finite loss, gradient norm, reward or weight stops training; nothing non-finite is kept."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hafrm.cli import main
from hafrm.guard import STALL_STEPS, NumericalGuard, TrainingStopped
from hafrm.rundir import RunDirectory, checkpoint_problem


def all_finite(directory: Path) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in load_file(directory / "model.safetensors").values())


@pytest.fixture
def stopped_run(capsys, tiny_model, train_argv):
    """stopped_run(data, output_dir, *flags) -> the one-line error of a training run that must stop cleanly."""

    def run(data, output_dir, *flags) -> str:
        # every test gives its own --lr, which replaces the fast runs' 5e-3
        assert main(train_argv(tiny_model, data, output_dir, "--eval-steps", "2", *flags)) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        error = err[err.index("hafrm train: error: ") :].strip()
        assert "\n" not in error, error  # one line
        assert not (output_dir / "hafrm.json").exists()  # a stopped run is never marked finished
        for checkpoint in RunDirectory(output_dir).checkpoints():
            assert checkpoint_problem(checkpoint) is None and all_finite(checkpoint)
        return error

    return run


@pytest.mark.parametrize("lr", ["1e10", "10"])
def test_a_huge_learning_rate_stops_with_the_step_and_the_cause(lr, pairs_file, tmp_path, stopped_run, trainer_state):
    output_dir = tmp_path / "run"
    error = stopped_run(pairs_file, output_dir, "--method", "rm", "--lr", lr, "--max-steps", "30")
    assert error.startswith("hafrm train: error: training stopped at step ")
    cause = f"likely cause: the learning rate {float(lr):g} (--lr) is far above the usual 1e-6-1e-3, so the weights diverged"
    assert cause in error
    if lr == "10":  # it diverges after the first checkpoints: the best of them is kept, finite
        state = trainer_state(output_dir)
        assert math.isfinite(state["best_metric"]) and all_finite(Path(state["best_model_checkpoint"]))
        assert error.endswith(
            f"Nothing from this step on was saved; the best checkpoint is {state['best_model_checkpoint']} "
            f"(validation accuracy {state['best_metric']:.4f})"
        )
    else:
        assert error.endswith("No checkpoint had been saved yet")


def test_a_huge_beta_stops_at_the_first_step_before_any_update(pairs_file, tmp_path, stopped_run):
    output_dir = tmp_path / "run"
    error = stopped_run(pairs_file, output_dir, "--method", "dpo", "--beta", "1e30", "--lr", "5e-3")
    assert error.startswith("hafrm train: error: training stopped at step 1: ")
    assert "likely cause: β = 1e+30 (--beta) is far above the usual 0.01-1, so β·log π/π_ref overflows" in error
    assert error.endswith("No checkpoint had been saved yet")


def test_a_margin_beyond_float32_stops_naming_its_row(pairs_file, tmp_path, stopped_run, trainer_state):
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    for index, row in enumerate(rows):
        row["margin"] = 1e39 if index == 30 else 0.5
    data = tmp_path / "margins.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "run"
    flags = ("--method", "rm", "--lr", "5e-3", "--max-steps", "12", "--sampling", "sequential", "--val-fraction", "0.1")
    error = stopped_run(data, output_dir, *flags)
    assert "the loss is inf" in error
    assert "likely cause: a margin value: margins.jsonl: row 30 has margin 1e+39, beyond float32 (±3.4e+38)" in error
    state = trainer_state(output_dir)
    assert state["best_model_checkpoint"] and math.isfinite(state["best_metric"])
    assert f"the best checkpoint is {state['best_model_checkpoint']}" in error


def test_a_stalled_run_is_warned_about_once():
    said = []
    guard = NumericalGuard(lr=1e-5, beta=0.1, uses_policy_head=False, say=said.append)
    for step in range(1, 2 * STALL_STEPS + 1):
        guard.check_grad_norm(torch.tensor(0.0), step)
    assert said == [
        f"warning: the gradient norm has been 0 for {STALL_STEPS} steps in a row (steps 1-{STALL_STEPS}): nothing is "
        "learning; check --finetune / --trainable-layers, the learning rate, and whether the loss saturated"
    ]
    said.clear()
    for step in range(1, STALL_STEPS + 2):
        guard.check_grad_norm(1.0, step, previous_step_skipped=step > 1)
    assert said == [
        f"warning: the optimizer skipped {STALL_STEPS} steps in a row (up to step {STALL_STEPS}): the fp16 loss scale "
        "keeps overflowing; train in bf16 or fp32, or lower --lr"
    ]


def test_non_finite_rewards_weights_and_norms_stop():
    guard = NumericalGuard(lr=1e-5, beta=0.1, uses_policy_head=True)
    with pytest.raises(TrainingStopped, match=r"^training stopped at step 3: the gradient norm is inf \(the weights"):
        guard.check_grad_norm(torch.tensor(float("inf")), 3)
    with pytest.raises(TrainingStopped, match=r"step 4: 2 validation rewards are not finite"):
        guard.check_rewards(torch.tensor([[0.1, float("nan")], [float("inf"), 0.0]]), 4)
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(TrainingStopped, match="weight bias is not finite after the update of step 5; it was not saved"):
        guard.check_weights(model, 5)
    reference = {"ref_chosen_logps": torch.tensor([float("-inf")]), "ref_rejected_logps": torch.tensor([0.0])}
    assert guard.likely_cause(reference).startswith("the reference log-probs: the base model gives non-finite")
    assert guard.likely_cause({}).startswith("the weights diverged or the forward pass overflowed")
