"""Tokenizers with the special tokens and chat-template layouts of the common model families, built offline.

    path = build_family_tokenizer(tokenizer_dir, "llama3", tmp / "tok")   # then conftest.build_tiny_model(path, ...)

Each starts from SmolLM2's byte-level BPE vocabulary and takes a family's special tokens, its BOS /
EOS / pad, whether it adds BOS by itself, and a template with the family's layout (what the reward
reading depends on: which token a rendered conversation ends on, and what follows it).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import processors
from transformers import AutoTokenizer

FAMILIES = ("chatml", "llama3", "mistral", "gemma", "base")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'system' %}{{ m['content'] }}\n\n{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# family -> (special tokens to add, bos, eos, pad, template)
LAYOUTS = {
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        + [f"<|reserved_special_token_{i}|>" for i in range(4)],
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
        LLAMA3,
    ),
    "mistral": (["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", None, MISTRAL),
    "gemma": (["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>", GEMMA),
}


def _add_bos_by_default(tokenizer) -> None:
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )


def build_family_tokenizer(source_dir: Path, family: str, out_dir: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    if family == "chatml":
        tokenizer.chat_template = CHATML
        tokenizer.pad_token = tokenizer.eos_token  # SmolLM2, Qwen base: pad == eos
    elif family == "base":
        tokenizer.chat_template = None
        tokenizer.eos_token = "<|endoftext|>"
        tokenizer.pad_token = None
    else:
        tokens, bos, eos, pad, template = LAYOUTS[family]
        tokenizer.add_special_tokens({"additional_special_tokens": tokens})
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = bos, eos, pad
        tokenizer.chat_template = template
        _add_bos_by_default(tokenizer)
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    if family == "base":
        for name in ("chat_template.jinja", "chat_template.json"):
            (out_dir / name).unlink(missing_ok=True)
    return out_dir
