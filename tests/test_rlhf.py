"""`hafrm rlhf` on the tiny model: TRL's GRPO and RLOO with a hafrm reward, held-out evaluation by the oracle
and a gold RM, exact resume, and the step-by-step comparison of two policies."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hafrm.cli import main
from hafrm.config import RlhfConfig
from hafrm.data.builtin import builtin_rows
from hafrm.data.instructions import check
from hafrm.rlhf import RewardFunction, compare, read_curve, run_rlhf
from hafrm.scoring import RewardModel

PROMPTS = [row["prompt"] for row in builtin_rows("test")[:3]]


def rlhf_cfg(tiny_model, reward_runs, out: Path, **changes) -> RlhfConfig:
    values = dict(policy=tiny_model, reward=str(reward_runs["rm"]), gold_reward=str(reward_runs["rm"]), max_steps=2,
                  eval_steps=1, eval_limit=3, max_new_tokens=6, limit=8, lr=5e-3, output_dir=str(out))  # fmt: skip
    return RlhfConfig(**{**values, **changes})


def test_the_reward_function_is_hafrms_reward_normalised_with_the_stored_moments(reward_runs, tmp_path):
    run = tmp_path / "rm"
    shutil.copytree(reward_runs["rm"], run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "mean": 0.25, "std": 2.0}))
    prompts = [[{"role": "user", "content": PROMPTS[0]}]] * 2  # TRL's conversational form
    completions = [[{"role": "assistant", "content": "the sky is dark."}], [{"role": "assistant", "content": "No."}]]
    raw = RewardModel(run).score([(PROMPTS[0], "the sky is dark."), (PROMPTS[0], "No.")])
    assert RewardFunction(str(run), normalize=False)(prompts, completions) == pytest.approx(raw, abs=1e-6)
    normalised = RewardFunction(str(run), normalize=True)(prompts, completions)
    assert normalised == pytest.approx([(r - 0.25) / 2.0 for r in raw], abs=1e-6)
    implicit = RewardModel(reward_runs["dpo"]).score([(PROMPTS[0], "the sky is dark."), (PROMPTS[0], "No.")])
    assert RewardFunction(str(reward_runs["dpo"]), normalize=False)(prompts, completions) == pytest.approx(implicit)


def test_grpo_trains_evaluates_and_resumes_exactly(tiny_model, reward_runs, tmp_path):
    straight = tmp_path / "straight"
    curve = run_rlhf(rlhf_cfg(tiny_model, reward_runs, straight, max_steps=4, eval_steps=2))
    assert [point["step"] for point in curve] == [0, 2, 4]
    answers = [json.loads(line) for line in (straight / "eval" / "step-000004.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == PROMPTS
    assert [a["oracle"] for a in answers] == [check(a["prompt"], a["response"]) for a in answers]
    gold = RewardModel(reward_runs["rm"]).score([(a["prompt"], a["response"]) for a in answers])
    assert [a["gold"] for a in answers] == pytest.approx(gold, abs=1e-5)
    assert curve[-1]["oracle"]["mean"] == pytest.approx(sum(a["oracle"] for a in answers) / 3)
    assert {"rlhf.json", "adapter_model.safetensors", "curve.png"} <= {p.name for p in straight.iterdir()}

    # A crash after step 2: the checkpoint is there, the run did not finish. --resume continues to step 4.
    crashed = tmp_path / "crashed"
    run_rlhf(rlhf_cfg(tiny_model, reward_runs, crashed, max_steps=2, eval_steps=2))
    (crashed / "rlhf.json").unlink()
    with pytest.raises(ValueError, match="holds checkpoints of an unfinished run: pass --resume"):
        run_rlhf(rlhf_cfg(tiny_model, reward_runs, crashed, max_steps=4, eval_steps=2))
    resumed = run_rlhf(rlhf_cfg(tiny_model, reward_runs, crashed, max_steps=4, eval_steps=2, resume="last"))
    assert [point["step"] for point in resumed] == [0, 2, 4]
    ours, theirs = load_file(crashed / "adapter_model.safetensors"), load_file(straight / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    assert max(theirs[k].abs().max().item() for k in theirs if "lora_B" in k) > 1e-4  # the adapters did train
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-6
    assert resumed[-1]["oracle"] == curve[-1]["oracle"]


def test_rloo_trains_with_a_frozen_trunk(tiny_model, reward_runs, tmp_path):
    out = tmp_path / "rloo"
    curve = run_rlhf(rlhf_cfg(tiny_model, reward_runs, out, algorithm="rloo", finetune="freeze", trainable_layers=1,
                              max_steps=1, gold_reward=None))  # fmt: skip
    assert [point["step"] for point in curve] == [0, 1] and "gold" not in curve[0]
    assert (out / "model.safetensors").is_file() and json.loads((out / "rlhf.json").read_text())["algorithm"] == "rloo"


def write_eval(directory: Path, step: int, grades: list[float]) -> None:
    (directory / "eval").mkdir(parents=True, exist_ok=True)
    rows = [{"index": i, "prompt": PROMPTS[i], "response": "x", "oracle": g} for i, g in enumerate(grades)]
    (directory / "eval" / f"step-{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_gives_the_oracle_win_rate_per_shared_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_eval(a, 0, [0.5, 0.5, 0.0])
    write_eval(b, 0, [0.5, 0.5, 0.0])  # all ties: 0.5
    write_eval(a, 10, [1.0, 0.5, 0.0])
    write_eval(b, 10, [0.5, 0.5, 1.0])  # win, tie, loss: 0.5
    write_eval(a, 20, [1.0, 1.0, 0.5])
    write_eval(b, 20, [0.0, 0.5, 0.5])  # win, win, tie: 2.5 / 3
    write_eval(a, 30, [1.0, 1.0, 1.0])  # b never reached step 30
    points = compare([str(a), str(b)], str(tmp_path / "out"))
    assert [p["step"] for p in points] == [0, 10, 20]
    assert [(p["wins"], p["ties"], p["losses"]) for p in points] == [(0, 3, 0), (1, 1, 1), (2, 1, 0)]
    assert [p["win_rate"] for p in points] == pytest.approx([0.5, 0.5, 2.5 / 3])
    assert (tmp_path / "out" / "win-rate.png").is_file()
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["points"] == points


def test_bad_settings_are_one_line_errors(tiny_model, reward_runs, tmp_path, capsys):
    base = ["rlhf", "--policy", tiny_model, "--output-dir", str(tmp_path / "out")]
    cases = [  # (flags, message, exit status: 2 a usage error found before anything runs, 1 one while running)
        ([], "--reward DIR is required", 2),
        (["--reward", str(tmp_path / "nowhere")], f"reward model {tmp_path / 'nowhere'}: no such directory", 2),
        (["--reward", str(reward_runs["rm"]), "--num-generations", "1"], "--num-generations must be at least 2", 2),
        (["--compare", str(tmp_path)], "--compare takes two rlhf output directories", 2),
    ]
    for extra, message, status in cases:
        assert main(base + extra) == status, message
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error
    assert read_curve(tmp_path / "out") == []
