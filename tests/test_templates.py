"""The pad rule, the rendered text and its canonical end, on SmolLM2's real tokenizer (ChatML, pad == eos)."""

import re

import pytest
from transformers import AutoTokenizer

from hafrm.data import DataError
from hafrm.data.templates import (
    canonical_text,
    choose_pad_token,
    encode_response,
    encode_text,
    ensure_pad_token,
    pad_problem,
    render,
    turn_suffix,
)


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture
def padded(tokenizer):
    ensure_pad_token(tokenizer)
    return tokenizer


def test_pad_eos_is_replaced_by_an_added_pad_when_the_vocabulary_has_no_reserved_token(tokenizer):
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert pad_problem(tokenizer) == "its pad token '<|im_end|>' is the EOS token"
    assert choose_pad_token(tokenizer) == ("<|pad|>", "added")
    assert ensure_pad_token(tokenizer) == "added"
    assert (tokenizer.pad_token, tokenizer.pad_token_id, len(tokenizer)) == ("<|pad|>", 49152, 49153)
    assert pad_problem(tokenizer) is None
    assert ensure_pad_token(tokenizer) == "own"  # a second pass keeps it


def test_a_reserved_token_is_preferred_to_adding_one(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|reserved_special_token_0|>"]})
    assert choose_pad_token(tokenizer) == ("<|reserved_special_token_0|>", "reserved")


def test_a_dedicated_pad_is_kept_and_a_token_the_template_writes_is_never_taken(tokenizer):
    tokenizer.pad_token = "<|endoftext|>"  # unk here, so not dedicated: the rule moves on
    assert choose_pad_token(tokenizer)[1] == "added"
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert choose_pad_token(tokenizer) == ("<pad>", "own")
    tokenizer.pad_token = "<|im_start|>"  # every rendered turn starts with it
    assert "rendered conversations contain" in pad_problem(tokenizer)


def test_templated_ids_are_the_full_text_tokenised_without_special_tokens(padded):
    prompt_ids, response_ids = encode_response(padded, "Hi", "Hello there.", "row 0")
    _, full_text, templated = render(padded, "Hi", "Hello there.")
    assert templated and full_text.endswith("assistant\nHello there.<|im_end|>\n")
    assert prompt_ids + response_ids == padded(full_text, add_special_tokens=False)["input_ids"]
    assert padded.decode(response_ids) == "Hello there.<|im_end|>\n"


@pytest.mark.parametrize(
    "ending",
    ["", "<|pad|><|pad|>"],
)
def test_a_rollout_text_ending_on_the_end_of_turn_token_reads_as_the_rendered_conversation(padded, ending):
    _, full_text, _ = render(padded, "Hi", "Hello there.")
    assert turn_suffix(padded) == "<|im_end|>\n"
    cut = full_text[: -len("\n")]  # what OpenRLHF decodes: generation stops at <|im_end|>
    for text in (cut + ending, cut + "<|im_end|><|im_end|>" + ending, "<|pad|>" + full_text, full_text + ending):
        assert canonical_text(padded, text) == full_text
        assert encode_text(padded, text) == padded(full_text, add_special_tokens=False)["input_ids"]
    truncated = full_text[: full_text.rindex("<|im_end|>")]  # cut by max_new_tokens: scored as it is
    assert canonical_text(padded, truncated) == truncated


def test_without_a_template_conversations_are_hh_transcripts_and_plain_text_has_no_eos(padded):
    padded.chat_template = None
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    prompt_text, full_text, templated = render(padded, prompt, [{"role": "assistant", "content": "Simmer it."}])
    assert not templated
    assert prompt_text == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert full_text == prompt_text + " Simmer it."
    assert render(padded, "Q: hi\nA:", " hello")[1] == "Q: hi\nA: hello"
    eos = padded.eos_token
    assert canonical_text(padded, full_text + eos + eos + "<|pad|>") == full_text
    prompt_ids, response_ids = encode_response(padded, prompt, [{"role": "assistant", "content": "Simmer it."}], "r")
    assert prompt_ids + response_ids == padded(full_text)["input_ids"]


def test_a_text_ending_on_the_pad_token_is_refused(padded):
    padded.chat_template = None
    with pytest.raises(DataError, match=re.escape("row 3: the text ends on the pad token '<|pad|>'")):
        encode_response(padded, "Q:", " a<|pad|>", "row 3")
