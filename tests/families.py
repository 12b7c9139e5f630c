"""Test helper: SmolLM2's tokenizer re-dressed as the tokenizer of another model family, built offline.

    out = build_family_tokenizer(tokenizer_dir, "llama3", tmp_path / "tok")  # then conftest.build_tiny_model(out, ...)

Each family keeps SmolLM2's byte-level BPE vocabulary and takes that family's special tokens, its BOS / EOS / pad,
whether the tokenizer adds BOS by itself, and a chat template with the family's layout (which token a rendered
conversation ends on and what follows it).  "base" has no chat template at all.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

FAMILIES = ("chatml", "llama3", "mistral", "gemma", "base")

# Mistral and Gemma have no system turn: a system message is folded into the first user turn.
_SPLIT_SYSTEM = (
    "{% set ns = namespace(system='') %}{% set turns = messages %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set ns.system = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_TEMPLATE = _SPLIT_SYSTEM + (
    "{{ bos_token }}{% for message in turns %}{% if message['role'] == 'user' %}"
    "[INST] {% if loop.first %}{{ ns.system }}{% endif %}{{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = _SPLIT_SYSTEM + (
    "{{ bos_token }}{% for message in turns %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if loop.first and message['role'] == 'user' %}{{ ns.system }}{% endif %}"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# family -> (bos, eos, pad, extra special tokens, template); the new tokens are appended to SmolLM2's vocabulary.
_NEW_TOKEN_FAMILIES = {
    "llama3": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
        ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
        + [f"<|reserved_special_token_{i}|>" for i in range(4)],
        LLAMA3_TEMPLATE,
    ),
    "mistral": ("<s>", "</s>", None, ["[INST]", "[/INST]"], MISTRAL_TEMPLATE),
    "gemma": ("<bos>", "<eos>", "<pad>", ["<start_of_turn>", "<end_of_turn>"], GEMMA_TEMPLATE),
}


def build_family_tokenizer(source_dir: Path, family: str, out_dir: Path) -> Path:
    """Save to `out_dir` the tokenizer at `source_dir` (SmolLM2's) made into one of FAMILIES; return `out_dir`.

    llama3, mistral and gemma add their BOS when called (`tokenizer(text)`), as their real tokenizers do; this is
    stored only as the post-processor in tokenizer.json (transformers 5 does not save `add_bos_token`), so after
    loading `tokenizer.add_bos_token` reads False although the BOS is added.  Their templates also start with the
    BOS: tokenize a rendered conversation with `add_special_tokens=False` to avoid a second one.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    if family == "chatml":
        tokenizer.pad_token = tokenizer.eos_token  # SmolLM2: pad == eos == <|im_end|>
        tokenizer.chat_template = CHATML_TEMPLATE
    elif family == "base":
        tokenizer.bos_token = tokenizer.eos_token = "<|endoftext|>"  # as SmolLM2-135M (base)
        tokenizer.pad_token = None
        tokenizer.chat_template = None
    else:
        bos, eos, pad, extra, template = _NEW_TOKEN_FAMILIES[family]
        named = {"bos_token": bos, "eos_token": eos} | ({"pad_token": pad} if pad else {})
        tokenizer.add_special_tokens(named | {"extra_special_tokens": extra})
        tokenizer.pad_token = pad
        tokenizer.chat_template = template
        tokenizer.add_bos_token = True  # rebuilds the backend's TemplateProcessing post-processor: "<bos> $A"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if family == "base":  # no stale template file may give the template back on loading
        for name in ("chat_template.jinja", "chat_template.json"):
            (out_dir / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
