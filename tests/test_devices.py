"""Device choice from the environment, and the bf16 training and scoring paths (dtype handling, run here on the CPU)."""

import json
import math

import pytest
import torch

from hafrm.cli import main
from hafrm.devices import on_cpu, scoring_device


def test_the_device_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("HAFRM_DEVICE", raising=False)
    expected = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    assert scoring_device() == expected
    assert on_cpu() is (expected.type == "cpu")
    monkeypatch.setenv("HAFRM_DEVICE", "cpu")
    assert scoring_device() == torch.device("cpu") and on_cpu()
    monkeypatch.setenv("HAFRM_DEVICE", "gpu-please")
    with pytest.raises(ValueError, match=r"\$HAFRM_DEVICE='gpu-please' is not a torch device"):
        scoring_device()


def test_bf16_training_runs_every_layout_and_keeps_fp32_weights(tiny_model, pairs_file, tmp_path, train_run, logged):
    """Autocast bf16 over packed, shared-prompt rows (the 4-D mask is cast with the activations)."""
    from safetensors.torch import load_file

    runs = {}
    for name, flags in (("fp32", []), ("bf16", ["--bf16"])):
        runs[name] = train_run(
            tiny_model,
            pairs_file,
            tmp_path / name,
            *("--val-fraction", "0", "--method", "haf", "--max-steps", "3", "--sampling", "sequential", *flags),
        )
    hafrm_json = json.loads((runs["bf16"] / "hafrm.json").read_text())
    assert hafrm_json["bf16"] is True and hafrm_json["prompt_sharing"] is True and hafrm_json["packing"] is True
    bf16, fp32 = logged(runs["bf16"], "loss"), logged(runs["fp32"], "loss")
    assert len(bf16) == 3 and all(math.isfinite(value) for value in bf16)
    assert bf16 != fp32  # the step really ran in bf16 ...
    assert bf16 == pytest.approx(fp32, rel=0.1)  # ... and still computed the same loss, to bf16 rounding
    weights = load_file(str(runs["bf16"] / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}  # master weights stay fp32


def test_bf16_scoring_gives_the_fp32_rewards_to_bf16_rounding(tiny_model, pairs_file, tmp_path, capsys, train_run):
    from hafrm.scoring import RewardModel

    out = train_run(
        tiny_model, pairs_file, tmp_path / "run", "--val-fraction", "0", "--method", "rm", "--max-steps", "2"
    )
    items = [("Name a colour.", reply) for reply in ("Blue.", "Red, like a fire truck.", "I will not.")]
    rewards = {}
    for dtype in ("float32", "bfloat16"):
        reward = RewardModel(out, 96, dtype=getattr(torch, dtype))
        assert next(reward.model.parameters()).dtype == getattr(torch, dtype)
        rewards[dtype] = torch.tensor(reward.score(items))
    assert "prompt sharing off" not in capsys.readouterr().out  # the check holds in bf16 too (its own tolerance)
    assert rewards["bfloat16"].dtype == torch.float32
    torch.testing.assert_close(rewards["bfloat16"], rewards["float32"], rtol=0.05, atol=0.05)
    assert not torch.equal(rewards["bfloat16"], rewards["float32"])
    assert (
        main(["score", "--model", str(out), "--prompt", "Name a colour.", "--response", "Blue.", "--dtype", "bfloat16"])
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(printed.split("\t")[0]) == pytest.approx(float(rewards["bfloat16"][0]), abs=1e-3)
