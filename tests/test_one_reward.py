"""One reward everywhere: after a short haf run, every loader reads the same reward, for every template family.

Families (tests/template_families.py): ChatML (pad == eos), Llama 3 (ends on <|eot_id|>, no pad, reserved tokens),
Mistral (ends on </s> == eos, no pad), Gemma (its own <pad>), and a base model without a template (HH text).
Readers: (a) `hafrm score`, (b) AutoModelForSequenceClassification on the rendered text tokenised without
special tokens, (c) the text-classification pipeline at its defaults, (d) TRL's GRPO reward computation
with `reward_funcs=<output dir>`, (e) an OpenRLHF-style read of decode(prompt ids + response ids ending
on the end-of-turn token), scored at the last attended token after `canonical_text`.
"""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from conftest import build_tiny_model
from hafrm.cli import main
from hafrm.config import ScoreConfig
from hafrm.data.templates import canonical_text, encode, encode_text, render, turn_suffix
from hafrm.evaluate import score
from hafrm.model import reward_index
from template_families import FAMILIES, build_family_tokenizer

INSTRUCTION = "Reply in lower case only. Describe: the river is calm."
REPLIES = ["the river is calm.", "THE RIVER IS CALM AND THE MORNING TRAIN IS LATE."]
TOLERANCE = 1e-4


def items_for(family: str) -> list[tuple[str, str]]:
    """(prompt, response) as `hafrm score` takes them; the base model reads HH transcripts."""
    if family == "base":
        return [(f"\n\nHuman: {INSTRUCTION}\n\nAssistant:", " " + reply) for reply in REPLIES]
    return [(INSTRUCTION, reply) for reply in REPLIES]


def write_training_pairs(path, family: str, n: int = 24):
    from make_data import make_pairs

    rows = make_pairs(n, seed=1, conversational=True)
    if family == "base":  # HH transcripts on a model without a template
        rows = [
            {
                side: f"\n\nHuman: {row['prompt'][0]['content']}\n\nAssistant: {row[side][0]['content']}"
                for side in ("chosen", "rejected")
            }
            for row in rows
        ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tokenizer_dir, tmp_path_factory):
    """(family, output directory) of a 2-step haf run on a tiny model with that family's tokenizer."""
    family = request.param
    root = tmp_path_factory.mktemp(f"family-{family}")
    tokenizer_path = build_family_tokenizer(tokenizer_dir, family, root / "tokenizer")
    model_dir = build_tiny_model(tokenizer_path, root / "model")
    data = write_training_pairs(root / "pairs.jsonl", family)
    out = root / "run"
    argv = ["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out)]
    argv += ["--max-length", "96", "--batch-size", "4", "--lr", "5e-3", "--max-steps", "2", "--val-fraction", "0"]
    assert main(argv) == 0
    return family, out, model_dir


def hafrm_rewards(out, family) -> list[float]:
    return score(
        ScoreConfig(model=str(out), prompt=items_for(family)[0][0], response=[r for _, r in items_for(family)])
    )


def rendered_texts(tokenizer, family) -> list[str]:
    return [render(tokenizer, prompt, response)[1] for prompt, response in items_for(family)]


def test_the_pad_token_never_ends_a_text_and_the_reward_is_read_on_the_last_token(trained):
    family, out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in rendered_texts(tokenizer, family):
        ids = encode(tokenizer, text, bool(tokenizer.chat_template))
        assert tokenizer.pad_token_id not in ids
        padded = torch.tensor([ids + [tokenizer.pad_token_id] * 3])
        assert reward_index(padded, tokenizer.pad_token_id).item() == len(ids) - 1


def test_sequence_classifier_and_pipeline_read_hafrms_reward(trained, capsys):
    family, out, _ = trained
    ours = hafrm_rewards(out, family)
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = rendered_texts(tokenizer, family)
    classifier = AutoModelForSequenceClassification.from_pretrained(out).eval()
    templated = bool(tokenizer.chat_template)
    batch = tokenizer(texts, add_special_tokens=not templated, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = classifier(**batch).logits[:, 0].tolist()
    assert theirs == pytest.approx(ours, abs=TOLERANCE)
    # The pipeline tokenises with the defaults, which add the BOS that a rendered template already holds:
    # give it the text without that BOS (docs/checkpoints.md).
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    plain = [t[len(bos) :] if adds_bos and templated and t.startswith(bos) else t for t in texts]
    reader = pipeline("text-classification", model=str(out), device="cpu")
    assert [r["score"] for r in reader(plain)] == pytest.approx(ours, abs=TOLERANCE)


def test_trl_grpo_reward_funcs_read_hafrms_reward(trained, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    family, out, model_dir = trained
    ours = hafrm_rewards(out, family)
    if family == "base":
        prompts = [prompt for prompt, _ in items_for(family)]
        completions = [response for _, response in items_for(family)]
    else:
        prompts = [[{"role": "user", "content": INSTRUCTION}]] * len(REPLIES)
        completions = [[{"role": "assistant", "content": reply}] for reply in REPLIES]
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    trainer = GRPOTrainer(
        model=str(model_dir), reward_funcs=str(out), args=args, train_dataset=Dataset.from_dict({"prompt": prompts})
    )
    inputs = [{"prompt": prompt} for prompt in prompts]
    rewards = trainer._calculate_rewards(inputs, prompts, completions, [[0]] * len(prompts))
    assert rewards[:, 0].tolist() == pytest.approx(ours, abs=TOLERANCE)


def test_an_openrlhf_style_read_of_decoded_rollouts_gets_hafrms_reward(trained):
    family, out, _ = trained
    ours = hafrm_rewards(out, family)
    tokenizer = AutoTokenizer.from_pretrained(out)
    templated = bool(tokenizer.chat_template)
    if templated:  # the policy stops on the end-of-turn token; the template's trailing text never comes
        end = next(
            t for t in tokenizer.added_tokens_decoder.values() if t.special and t.content in turn_suffix(tokenizer)
        )
        end_id = tokenizer.convert_tokens_to_ids(end.content)
    else:
        end_id = tokenizer.eos_token_id
    queries = []
    for prompt, response in items_for(family):
        prompt_text = render(tokenizer, prompt, response)[0]
        prompt_ids = encode(tokenizer, prompt_text, templated)
        content = response if isinstance(response, str) else response[0]["content"]
        response_ids = tokenizer(content, add_special_tokens=False)["input_ids"] + [end_id]
        queries.append(tokenizer.decode(prompt_ids + response_ids))  # special tokens kept, as OpenRLHF sends
    ids = [encode_text(tokenizer, query) for query in queries]
    if templated:
        assert ids == [tokenizer(canonical_text(tokenizer, q), add_special_tokens=False)["input_ids"] for q in queries]
    # OpenRLHF's reward model: the value head named in config.json, read at the last attended token
    classifier = AutoModelForSequenceClassification.from_pretrained(out).eval()
    head = getattr(classifier, classifier.config.value_head_prefix)
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.no_grad():
        values = head(classifier.model(input_ids=input_ids, attention_mask=mask).last_hidden_state).squeeze(-1)
    last = mask.shape[1] - 1 - mask.fliplr().argmax(dim=1)
    assert values.gather(1, last[:, None])[:, 0].tolist() == pytest.approx(ours, abs=TOLERANCE)
    assert score(ScoreConfig(model=str(out), text=queries)) == pytest.approx(ours, abs=TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_run_loads_by_its_own_loading_md_and_through_its_export(family, tokenizer_dir, tmp_path):
    """Every family: the code LOADING.md gives for this run (an added pad or one the base holds) reads hafrm's reward."""
    tokenizer_path = build_family_tokenizer(tokenizer_dir, family, tmp_path / "tokenizer")
    model_dir = build_tiny_model(tokenizer_path, tmp_path / "model")
    data = write_training_pairs(tmp_path / "pairs.jsonl", family)
    out = tmp_path / "run"
    argv = ["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--finetune", "lora"]
    argv += ["--max-length", "96", "--batch-size", "4", "--lr", "5e-3", "--max-steps", "2", "--val-fraction", "0"]
    assert main(argv) == 0
    note = (out / "LOADING.md").read_text()
    code = note.split("```python\n")[1].split("```")[0]
    added = family in ("chatml", "mistral", "base")  # the families whose tokenizer has no pad of its own to take
    assert ("resize_token_embeddings" in code) == added
    ours = hafrm_rewards(out, family)
    loaded = []
    for prompt, response in items_for(family):
        namespace = {"prompt": prompt, "response": response, "messages": conversation(prompt, response)}
        exec(code, namespace)  # the note's code, as a user pastes it
        loaded.append(float(namespace["reward"]))
    assert loaded == pytest.approx(ours, abs=TOLERANCE)
    assert main(["export", "--model", str(out), "--output-dir", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(rendered_texts(tokenizer, family), add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert merged(**batch).logits[:, 0].tolist() == pytest.approx(ours, abs=TOLERANCE)
    # the wrong way, without num_labels: the base config's two labels do not fit the trained head, and it says so
    if not added:
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            AutoModelForSequenceClassification.from_pretrained(out)


def conversation(prompt, response) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
