"""Every output directory has a model card: hub metadata, the training setup, figures with intervals, and loading
code for this very run that runs and gives hafrm's reward."""

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard

from hafrm.cli import main
from hafrm.config import EvalConfig
from hafrm.evaluate import evaluate
from hafrm.scoring import RewardModel

ITEM = ("What is a kite?", "A toy that flies on a string.")


@pytest.fixture(scope="module")
def runs(tiny_model, pairs_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    kinds = {"full-haf": ["--method", "haf"], "lora-haf": ["--method", "haf", "--finetune", "lora"],
             "full-mlp": ["--method", "rm", "--reward-head-type", "mlp"], "full-dpo": ["--method", "dpo"]}  # fmt: skip
    for name, flags in kinds.items():
        argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(root / name),
                "--max-length", "64", "--batch-size", "4", "--lr", "5e-3", "--max-steps", "2", "--eval-steps", "2",
                "--val-fraction", "0.25", *flags]  # fmt: skip
        assert main(argv) == 0
    return {name: root / name for name in kinds}


def code_blocks(card: str, title: str) -> str:
    section = card.split(f"### {title}\n", 1)[1]
    return re.search(r"```\w+\n(.*?)```", section, re.DOTALL).group(1)


def run_block(code: str) -> dict:
    scope = {}
    exec(compile(code, "<card>", "exec"), scope)  # the card's own code, as a user pastes it
    return scope


@pytest.mark.parametrize("name", ["full-haf", "lora-haf"])
def test_the_card_has_hub_metadata_figures_and_loading_code_that_gives_the_reward(name, runs, tiny_model):
    run = runs[name]
    card = ModelCard.load(run / "README.md")
    record = json.loads((run / "hafrm.json").read_text())
    assert card.data.pipeline_tag == "text-classification" and card.data.base_model == tiny_model
    assert card.data.library_name == ("peft" if name.startswith("lora") else "transformers")
    assert set(card.data.tags) == {"hafrm", "reward-model", "haf-rm", "hafrm-haf"}
    validation = record["validation"]
    assert validation["pairs"] == 12  # a quarter of the 48 pairs
    low, high = validation["ci95"]
    assert (
        f"| validation (the kept checkpoint) | 12 | {validation['accuracy']:.3f} [{low:.3f}, {high:.3f}] |" in card.text
    )
    assert "α = 0.2, β = 0.1, policy loss `dpo`" in card.text and "(36 training pairs)" in card.text
    expected = RewardModel(run).score([ITEM])[0]
    scope = run_block(code_blocks(card.content, "transformers"))
    assert scope["reward"] == pytest.approx(expected, abs=1e-4)
    assert run_block(code_blocks(card.content, "hafrm")) is not None
    if name.startswith("lora"):
        assert f"hafrm export --model {run} --output-dir {run}-merged" in card.text
        assert f"reward_funcs='{run}-merged'" in code_blocks(card.content, "TRL")
    else:
        assert f"--reward_pretrain {run} --value_head_prefix score" in code_blocks(card.content, "OpenRLHF")


def test_eval_adds_its_figures_to_the_card_and_export_writes_one(runs, pairs_file, tmp_path):
    run = runs["lora-haf"]
    report = evaluate(EvalConfig(model=str(run), data=str(pairs_file), implicit=False, combine=False))
    figures = report["reward_head"]
    card = (run / "README.md").read_text()
    low, high = figures["ci95"]
    assert f"| `{pairs_file}` (reward head) | 48 | {figures['accuracy']:.3f} [{low:.3f}, {high:.3f}] |" in card
    merged = tmp_path / "merged"
    assert main(["export", "--model", str(run), "--output-dir", str(merged)]) == 0
    exported = ModelCard.load(merged / "README.md")
    assert exported.data.library_name == "transformers"
    assert "LoRA, merged into the base weights by `hafrm export`" in exported.text
    scope = run_block(code_blocks(exported.content, "transformers"))
    assert scope["reward"] == pytest.approx(RewardModel(run).score([ITEM])[0], abs=1e-4)


@pytest.mark.parametrize("name", ["full-mlp", "full-dpo"])
def test_runs_only_hafrm_reads_get_only_hafrm_s_code(name, runs):
    card = ModelCard.load(runs[name] / "README.md")
    assert "### transformers" not in card.content and "### hafrm" in card.content
    scope = run_block(code_blocks(card.content, "hafrm").replace("print(", "values = ("))
    assert isinstance(scope["values"], list) and len(scope["values"]) == 1 and torch.isfinite(
        torch.tensor(scope["values"])).all()  # fmt: skip
    if name == "full-dpo":
        assert card.data.pipeline_tag == "text-generation" and "hafrm-dpo" in card.data.tags
        assert "| method | `dpo`; β = 0.1 |" in card.text
    else:
        assert "read by hafrm only" in card.text
