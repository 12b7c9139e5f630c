"""The reward head's forms (`--reward-head-type`): linear (default), zero (the official HAF code's start) and
GRM's MLP; each trained, saved and read back with the same rewards by every loader that can build it."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from hafrm.checkpoint import load_base_model, load_trained
from hafrm.cli import main, run
from hafrm.config import ScoreConfig
from hafrm.data import PairCollator, read_pairs, tokenize_pairs
from hafrm.model import MLP_HEAD_HIDDEN, build_score_head, hybrid_forward
from hafrm.scoring import RewardModel

ITEMS = [
    ("Answer in lower case: what is a kite?", "a kite is a toy that flies."),
    ("Answer in lower case: what is a kite?", "A KITE IS A TOY."),
    ("Name a colour.", "Blue, like the sky on a clear day."),
]


@pytest.fixture(scope="module")
def batch(tiny_model, pairs_file):
    _, tokenizer = load_base_model(tiny_model, with_score_head=False)
    rows = tokenize_pairs(read_pairs(str(pairs_file))[:4], tokenizer, max_length=96)[0]
    return PairCollator(pad_token_id=tokenizer.pad_token_id)([rows[i] for i in range(4)])


def test_a_zero_head_starts_at_reward_zero_and_still_learns(tiny_model, batch):
    model, _ = load_base_model(tiny_model, with_score_head=True, reward_head_type="zero")
    assert type(model.score) is torch.nn.Linear and model.score.bias is None
    out = hybrid_forward(model, batch, need_rewards=True, need_logps=False)
    assert out.chosen_rewards.tolist() == [0.0] * 4 and out.rejected_rewards.tolist() == [0.0] * 4
    # the Bradley-Terry loss at margin 0 is log 2, and its gradient reaches the head (not the trunk, yet)
    loss = -torch.nn.functional.logsigmoid(out.chosen_rewards - out.rejected_rewards).mean()
    assert loss.item() == pytest.approx(0.6931472, abs=1e-6)
    loss.backward()
    assert model.score.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.model.parameters())


def test_the_mlp_head_is_grms_and_depends_on_its_seed_alone():
    head = build_score_head(64, "mlp", seed=3)
    layers = [type(layer).__name__ for layer in head]
    assert layers == ["Dropout", "Linear", "ReLU", "Linear"]
    assert head[0].p == 0.1 and head[1].weight.shape == (MLP_HEAD_HIDDEN, 64) and head[3].weight.shape == (1, 1024)
    torch.manual_seed(123)  # the global generator plays no part
    again, other = build_score_head(64, "mlp", seed=3), build_score_head(64, "mlp", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(head[1].weight, other[1].weight)
    assert head[1].weight.abs().max() <= 1 / 8  # nn.Linear's own range, 1/sqrt(fan_in)
    with pytest.raises(ValueError, match="unknown reward head type 'cubic'; one of linear, zero, mlp"):
        build_score_head(64, "cubic")


@pytest.fixture(scope="module")
def runs(tiny_model, pairs_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    directories = {}
    for finetune, head in (("full", "zero"), ("full", "mlp"), ("lora", "mlp")):
        out = root / f"{finetune}-{head}"
        argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(out),
                "--method", "haf", "--finetune", finetune, "--reward-head-type", head, "--max-length", "64",
                "--batch-size", "4", "--lr", "5e-3", "--max-steps", "2", "--val-fraction", "0"]  # fmt: skip
        assert main(argv) == 0
        directories[finetune, head] = out
    return directories


def test_a_zero_head_run_reads_alike_in_hafrm_and_transformers(runs):
    run_dir = runs["full", "zero"]
    record = json.loads((run_dir / "hafrm.json").read_text())
    assert record["reward_head_type"] == "zero"
    weights = load_file(run_dir / "model.safetensors")
    assert [name for name in weights if name.startswith("score")] == ["score.weight"]
    assert weights["score.weight"].abs().sum() > 0  # it trained away from 0
    ours = RewardModel(run_dir).score(ITEMS)
    tokenizer = RewardModel(run_dir).tokenizer
    classifier = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    theirs = []
    for prompt, response in ITEMS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        with torch.no_grad():
            theirs.append(classifier(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0])
    assert ours == pytest.approx([value.item() for value in theirs], abs=1e-5)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_an_mlp_head_run_reads_alike_in_every_hafrm_reader(finetune, runs, tmp_path):
    run_dir = runs[finetune, "mlp"]
    model, _, record = load_trained(run_dir)
    assert record["reward_head_type"] == "mlp" and record["packing"] and record["prompt_sharing"]  # eval mode
    head = model.get_base_model().score.modules_to_save["default"] if finetune == "lora" else model.score
    assert [type(layer).__name__ for layer in head] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert not head.training  # its dropout is off when scoring
    expected = RewardModel(run_dir).score(ITEMS)
    assert len(set(expected)) == 3
    # the head's saved tensors are the trained ones, not a fresh draw
    initial = build_score_head(model.config.hidden_size, "mlp", seed=0)
    assert not torch.equal(head[3].weight.detach(), initial[3].weight)
    # `hafrm score` and the exported (merged for LoRA) directory give the same rewards
    prompt, first, second = ITEMS[0][0], ITEMS[0][1], ITEMS[1][1]
    scored = run("score", ScoreConfig(model=str(run_dir), prompt=prompt, response=[first, second]))
    assert scored == pytest.approx(expected[:2], abs=1e-5)
    if finetune == "lora":
        assert main(["export", "--model", str(run_dir), "--output-dir", str(tmp_path / "merged")]) == 0
        config = json.loads((tmp_path / "merged" / "config.json").read_text())
        assert config["hafrm_reward_head"] == {"type": "mlp", "hidden": 1024, "dropout": 0.1}
        assert RewardModel(tmp_path / "merged").score(ITEMS) == pytest.approx(expected, abs=1e-5)
        # without its run record, the directory is refused rather than read with a random linear head
        (tmp_path / "merged" / "hafrm.json").unlink()
        with pytest.raises(ValueError, match="hafrm's mlp head .*restore hafrm.json"):
            RewardModel(tmp_path / "merged")


def test_a_dpo_run_refuses_a_head_type(tiny_model, pairs_file, tmp_path, capsys):
    argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(tmp_path / "x"),
            "--method", "dpo", "--reward-head-type", "mlp"]  # fmt: skip
    assert main(argv) == 2
    assert "--reward-head-type mlp: a dpo run has no reward head" in capsys.readouterr().err
