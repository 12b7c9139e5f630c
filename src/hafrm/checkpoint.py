"""Load, save and export: the one directory every loader reads as the same reward model.

    from hafrm.checkpoint import load_base_model, load_trained, export
    model, tokenizer = load_base_model("smollm2-135m-instruct", with_score_head=True)
    model, tokenizer, run = load_trained("runs/haf")          # full weights or a LoRA adapter
    export("runs/haf", "runs/haf-merged")                       # LoRA merged; old pad == eos runs converted

Every model hafrm builds gets its pad token from `hafrm.data.templates.ensure_pad_token` (a token no
rendered conversation holds, never EOS); when that token had to be added, the embeddings grow by one
row, set to the mean of the others (deterministic, so the reference pass and evaluation rebuild the
same model). A directory written before that rule (pad == EOS or end-of-turn) is refused with the
command that converts it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .data.templates import ensure_pad_token, pad_problem
from .default_model import resolve_model_path
from .devices import to_scoring_device
from .model import SCORE_HEAD, attach_score_head
from .modelcard import lora_loading_lines, write_model_card
from .runrecord import read_run_record, write_run_record
from .writes import atomic_write_text

ADAPTER_README = "LOADING.md"


def load_tokenizer(name_or_path: str):
    """A base model's tokenizer with its pad token chosen by the one-reward rule."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    ensure_pad_token(tokenizer)
    return tokenizer


def fit_embeddings(model: nn.Module, tokenizer) -> None:
    """Grow the embeddings when the tokenizer's pad token is beyond them (a token that was added)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            tables = {
                id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m
            }
            for weight in tables.values():
                weight[rows:] = weight[:rows].mean(dim=0)
    model.config.pad_token_id = tokenizer.pad_token_id
    # the embedding's own padding_idx (its row gets no gradient) still names the model's old pad, often EOS
    embeddings = model.get_input_embeddings()
    if getattr(embeddings, "padding_idx", None) is not None:
        embeddings.padding_idx = tokenizer.pad_token_id


def zero_dropout(config) -> list[str]:
    """Set every dropout rate in a transformers config (and its sub-configs) to 0 -> the names changed.

    Rates are the float fields named `*dropout*` or `*_pdrop` (Llama's attention_dropout, GPT-2's
    resid_pdrop, OPT's activation_dropout, ...). Zeroing them before the model is built reaches both
    `nn.Dropout` modules and the functional dropout attention layers apply from a stored rate.
    """
    changed = []
    for key, value in list(vars(config).items()):
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config (text_config, ...)
            changed += [f"{key}.{name}" for name in zero_dropout(value)]
        elif isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")) and value != 0.0:
            setattr(config, key, 0.0)
            changed.append(key)
    return changed


def load_base_model(
    name_or_path: str,
    with_score_head: bool,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    keep_dropout: bool = True,
    attn_implementation: str | None = None,
    reward_head_type: str = "linear",
):
    """A hub id, a local checkpoint or the default model's alias -> (causal LM [+ score], tokenizer).

    keep_dropout=False builds the model with every dropout rate at 0 (what training uses by default).
    attn_implementation: transformers' attention (sdpa, eager, flex_attention, flash_attention_2); None: the model's.
    reward_head_type: the reward head's form, `model.REWARD_HEAD_TYPES` (its own dropout stays as GRM has it).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    if not keep_dropout:
        zero_dropout(config)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **extra)
    if not keep_dropout:
        for module in model.modules():  # any dropout a model builds with a fixed rate
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    fit_embeddings(model, tokenizer)
    if with_score_head:
        attach_score_head(model, tokenizer.pad_token_id, seed, reward_head_type)
    return model, tokenizer


def update_config_json(directory: str | Path, values: dict | None = None) -> None:
    """Write `num_labels: 1` (transformers saves only id2label) and `values` into a saved reward model's config.json."""
    path = Path(directory) / "config.json"
    if path.is_file():  # a LoRA run has none until `hafrm export`
        config = json.loads(path.read_text())
        config.update({"num_labels": 1, **(values or {})})
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_adapter_note(directory: str | Path, shown_as: str | Path | None = None) -> None:
    """Beside a LoRA adapter: LOADING.md, with the exact code that loads this run as a reward model
    (`modelcard.lora_loading_lines`: the same code as the model card's).
    `shown_as`: the directory the note names, where it is written somewhere else first (the final save).
    """
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    run = str(shown_as or directory)
    lines, case, base = lora_loading_lines(directory, run, tokenizer)
    if tokenizer.chat_template:
        lines += ["", "text = tokenizer.apply_chat_template(messages, tokenize=False)  # prompt + reply, rendered"]
        lines += ['reward = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]']
    else:  # a template-free tokenizer: plain text, tokenised with its defaults (docs/checkpoints.md, rule 2)
        lines += ["", 'reward = model(**tokenizer(prompt + response, return_tensors="pt")).logits[0, 0]']
    (directory / ADAPTER_README).write_text(
        "# A hafrm LoRA run\n\n"
        "This directory holds LoRA adapters and the trained reward head `score` (peft `modules_to_save`), "
        "trained from\n"
        f"`{base}`. hafrm reads it as it is (`hafrm score`, `eval`, `serve`, `bon`, `rlhf`).\n\n"
        f"## As a reward model in transformers\n\nFor this run {case}:\n\n"
        "```python\n" + "\n".join(lines) + "\n```\n\n"
        "Every other loader (TRL, RewardBench, OpenRLHF, vLLM) reads the merged directory:\n\n"
        f"    hafrm export --model {run} --output-dir {run}-merged\n\n"
        "See docs/checkpoints.md, LoRA runs.\n"
    )


def _load_score_state(directory: Path) -> dict[str, torch.Tensor]:
    """The reward head's tensors in a saved directory, named as in the head (`weight`; `1.weight`, ... for the MLP)."""
    from safetensors import safe_open

    prefix = f"{SCORE_HEAD}."
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({file for name, file in weight_map.items() if name.startswith(prefix)})
    else:
        files = ["model.safetensors"]
    state = {}
    for file in files:
        with safe_open(str(directory / file), framework="pt") as handle:
            state |= {name[len(prefix) :]: handle.get_tensor(name) for name in handle.keys() if name.startswith(prefix)}
    return state


def _quietly(load, *args, **kwargs):
    """Run a transformers loader without its report of the `score.*` tensors as unexpected keys: hafrm
    loads them itself, right after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def run_tokenizer(directory: str | Path, allow_old_pad: bool = False):
    """The tokenizer saved in a hafrm output directory; refuses one whose pad breaks the one-reward rule."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    problem = pad_problem(tokenizer)
    if problem and not allow_old_pad:
        raise ValueError(
            f"{directory}: {problem}, so transformers, TRL and OpenRLHF would read its reward at another token than "
            f"hafrm trained it on (a directory written before hafrm 0.2). Convert it once with "
            f"`hafrm export --model {directory} --output-dir NEW_DIR` and use NEW_DIR."
        )
    return tokenizer


def _load(directory: Path, dtype: torch.dtype, allow_old_pad: bool):
    """-> (model, tokenizer, run record, the old pad token when an old run was given its new one, else None)."""
    from transformers import AutoModelForCausalLM

    record = read_run_record(directory)
    tokenizer = run_tokenizer(directory, allow_old_pad)
    old_pad = tokenizer.pad_token if pad_problem(tokenizer) else None
    if old_pad is not None:  # only with allow_old_pad: the run keeps its tokenizer and gets the new pad
        ensure_pad_token(tokenizer)
    with_score, head_type = record["reward_head"], record["reward_head_type"]
    if (directory / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        model, _ = load_base_model(
            record["base_model"], with_score_head=with_score, dtype=dtype, reward_head_type=head_type
        )
        fit_embeddings(model, tokenizer)
        adapter_config = PeftConfig.from_pretrained(str(directory))
        adapter_config.task_type = "CAUSAL_LM"  # hafrm runs the causal LM with its score head, whatever the file says
        model = PeftModel.from_pretrained(model, str(directory), config=adapter_config)
    else:
        model = _quietly(AutoModelForCausalLM.from_pretrained, str(directory), dtype=dtype)
        fit_embeddings(model, tokenizer)
        if with_score:
            attach_score_head(model, tokenizer.pad_token_id, head_type=head_type)
            model.score.load_state_dict(_load_score_state(directory))  # strict: every tensor of the head, no other
    return model, tokenizer, record, old_pad


def load_trained(directory: str | Path, dtype: torch.dtype = torch.float32):
    """Load a hafrm output directory (full weights or a LoRA adapter) -> (model, tokenizer, run record)."""
    model, tokenizer, record, _ = _load(Path(directory), dtype, allow_old_pad=False)
    to_scoring_device(model)  # scoring runs where the model is; batches follow it
    model.eval()
    return model, tokenizer, record


def export(run_dir: str | Path, output_dir: str | Path) -> Path:
    """One full directory that every loader reads: a LoRA run merged, an old pad == EOS run given its new pad.

    An old run read its reward at the last attended token; with a pad that no text holds, the
    converted directory is read there too, by hafrm and by every transformers-based loader.
    """
    model, tokenizer, record, old_pad = _load(Path(run_dir), torch.float32, allow_old_pad=True)
    is_lora = hasattr(model, "merge_and_unload")
    if not is_lora and old_pad is None:
        raise ValueError(f"{run_dir} holds full weights with a valid pad token: it loads as it is, nothing to export")
    if is_lora:
        model = model.merge_and_unload()
    if old_pad is not None:
        record = {**record, "pad_converted_from": old_pad}
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if record["reward_head"]:  # the normalisation OpenRLHF reads from config.json, where the run measured it
        moments = {"mean": record["reward_mean"], "std": record["reward_std"]} if "reward_mean" in record else {}
        update_config_json(output_dir, moments)
    finetune = "lora-merged" if is_lora else record.get("finetune")
    write_run_record(output_dir, {**record, "finetune": finetune, "exported_from": str(run_dir)})
    write_model_card(output_dir)
    return Path(output_dir)
