"""Load, save, export: the pad rule applied to models, the directory every loader reads, old runs refused and converted."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hafrm.checkpoint import export, load_base_model, load_trained, update_config_json, zero_dropout
from hafrm.data import PairCollator, read_pairs, tokenize_pairs
from hafrm.data.collator import pad_rows
from hafrm.model import forward_rows


@pytest.fixture(scope="module")
def dataset(tiny_model, pairs_file):
    _, tokenizer = load_base_model(tiny_model, with_score_head=False)
    return tokenize_pairs(read_pairs(str(pairs_file))[:6], tokenizer, max_length=128)[0]


def test_checkpoint_loads_in_both_auto_classes(tiny_model, dataset, tmp_path):
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    with torch.no_grad():
        model.score.weight.normal_()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "hafrm.json").write_text('{"reward_head": true, "method": "rm", "base_model": "x"}')

    rows = [dataset[i]["chosen_input_ids"] for i in range(4)]
    batch = pad_rows(rows, [0] * 4, tokenizer.pad_token_id, "right")
    ours, _, _ = forward_rows(load_trained(tmp_path)[0], batch, need_rewards=True, need_logps=False)

    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1).eval()
    assert classifier.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        theirs = classifier(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(theirs, ours.detach(), atol=1e-4, rtol=0)

    policy = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(policy.lm_head.weight, model.lm_head.weight)


def test_zero_dropout_finds_every_rate_in_nested_configs():
    from transformers import GPT2Config, LlavaConfig

    gpt2 = GPT2Config(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, summary_first_dropout=0.1)
    assert sorted(zero_dropout(gpt2)) == ["attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"]
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.0
    llava = LlavaConfig(text_config={"model_type": "llama", "attention_dropout": 0.2})
    assert "text_config.attention_dropout" in zero_dropout(llava)
    assert llava.text_config.attention_dropout == 0.0


def test_training_models_are_built_without_dropout(tiny_model, dataset, tmp_path):
    """A model with dropout: kept, two training-mode passes differ; dropped (the default), they agree."""
    source, _ = load_base_model(tiny_model, with_score_head=False)
    source.config.attention_dropout = 0.5
    source.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    batch = PairCollator(pad_token_id=49152)([dataset[i] for i in range(2)])
    for keep_dropout, same in ((True, False), (False, True)):
        model, _ = load_base_model(str(tmp_path), with_score_head=True, keep_dropout=keep_dropout)
        model.train()
        first, second = (forward_rows(model, batch, need_rewards=True, need_logps=True) for _ in range(2))
        assert torch.equal(first[0], second[0]) == same and torch.equal(first[1], second[1]) == same
        assert (model.config.attention_dropout == 0.0) == same


def test_config_json_carries_what_reward_loaders_read(tiny_model, tmp_path):
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    model.save_pretrained(tmp_path)
    update_config_json(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_labels"] == 1
    assert config["problem_type"] == "regression"
    assert config["value_head_prefix"] == "score"
    assert config["pad_token_id"] == tokenizer.pad_token_id == 49152


def _old_run(tiny_model, directory):
    """A directory as hafrm wrote it before the pad rule: pad == eos in the tokenizer and config.json."""
    from hafrm.model import attach_score_head

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    attach_score_head(model, tokenizer.eos_token_id, seed=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "hafrm.json").write_text(json.dumps({"reward_head": True, "method": "rm", "base_model": tiny_model}))
    return model.eval(), tokenizer


def test_an_old_pad_eos_run_is_refused_and_export_converts_it(tiny_model, tmp_path):
    old_model, tokenizer = _old_run(tiny_model, tmp_path / "old")
    with pytest.raises(ValueError, match=r"pad token '<\|im_end\|>' is the EOS token.*hafrm export --model"):
        load_trained(tmp_path / "old")
    # Old hafrm read the reward at the last attended token, here the EOS that ends the text.
    ids = tokenizer("a short reply")["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        hidden = old_model.model(input_ids=torch.tensor([ids])).last_hidden_state
        old_reward = old_model.score(hidden[0, -1]).item()

    export(tmp_path / "old", tmp_path / "new")
    model, new_tokenizer, run = load_trained(tmp_path / "new")
    assert new_tokenizer.pad_token == "<|pad|>" and run["pad_converted_from"] == "<|im_end|>"
    batch = pad_rows([ids, ids[:2]], [0, 0], new_tokenizer.pad_token_id, "right")
    rewards, _, _ = forward_rows(model, batch, need_rewards=True, need_logps=False)
    assert rewards[0].item() == pytest.approx(old_reward, abs=1e-5)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "new").eval()
    with torch.no_grad():
        theirs = classifier(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, 0]
    torch.testing.assert_close(theirs, rewards, atol=1e-5, rtol=0)


def test_export_refuses_a_directory_with_nothing_to_do(tiny_model, tmp_path):
    model, tokenizer = load_base_model(tiny_model, with_score_head=True)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "hafrm.json").write_text(json.dumps({"reward_head": True, "method": "rm", "base_model": tiny_model}))
    with pytest.raises(ValueError, match="nothing to export"):
        export(tmp_path, tmp_path / "out")
