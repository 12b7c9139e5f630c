"""The hybrid model: one causal-LM trunk φ read by a scalar reward head F and the LM's policy head K.

    from hafrm.model import load_base_model, hybrid_forward
    model, tokenizer = load_base_model("smollm2-135m-instruct", with_score_head=True)
    out = hybrid_forward(model, batch, need_rewards=True, need_logps=True)
    out.chosen_rewards, out.chosen_logps            # [B] each

There is no wrapper class. The reward head is a `Linear(hidden, 1)` attached to the causal LM as its
`score` submodule, so the model's own `save_pretrained` writes `model.*`, `lm_head.*` and
`score.weight` into one directory that loads unchanged as `AutoModelForCausalLM` (the policy) and as
`AutoModelForSequenceClassification(num_labels=1)` (the reward model). Trainer, peft, accelerate,
DeepSpeed and FSDP all see a plain `PreTrainedModel` (or `PeftModel`).

A batch holds B chosen rows followed by B rejected rows, so chosen and rejected share ONE trunk
forward pass, and both heads read its last hidden states.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .default_model import resolve_model_path

Tensor = torch.Tensor
SCORE_HEAD = "score"
HAFRM_CONFIG = "hafrm.json"
# lm_head logits are built for at most this many response tokens at a time.
LOGIT_CHUNK = 1024
# A trainable lm_head keeps its [tokens, vocab] fp32 logits for backward while a batch's response
# logits stay under this many elements (256 MiB) and gradient checkpointing is off; otherwise each
# chunk is recomputed in backward, which bounds memory at the price of one more lm_head matmul.
LOGIT_KEEP_ELEMENTS = 1 << 26


@dataclass
class HybridOutput:
    """What one forward pass over B pairs gives; None for a head the method does not use."""

    chosen_rewards: Tensor | None = None  # [B] reward head at the last real token
    rejected_rewards: Tensor | None = None
    chosen_logps: Tensor | None = None  # [B] summed log π over response tokens
    rejected_logps: Tensor | None = None
    chosen_lengths: Tensor | None = None  # [B] response token counts
    rejected_lengths: Tensor | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The causal LM inside any DDP / FSDP / DeepSpeed wrapper and PeftModel (LoRA layers injected)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def trunk_of(causal_lm: nn.Module) -> nn.Module:
    """The transformer φ without its lm_head (`LlamaModel` inside `LlamaForCausalLM`, etc.)."""
    return getattr(causal_lm, causal_lm.base_model_prefix)


def has_score_head(model: nn.Module) -> bool:
    return hasattr(unwrap(model), SCORE_HEAD)


def attach_score_head(causal_lm: nn.Module, pad_token_id: int, seed: int = 0) -> nn.Linear:
    """Add the reward head F and make the config load as a 1-label sequence classifier.

    The head's init draws from its own generator, so it depends on `seed` alone (not on whatever
    consumed the global RNG before, such as converting the default model on first use).
    """
    hidden = causal_lm.config.get_text_config().hidden_size
    head = nn.Linear(hidden, 1, bias=False)
    # Same scale as OpenRLHF's value head: initial rewards of order 1 whatever the hidden size.
    nn.init.normal_(head.weight, std=1 / math.sqrt(hidden + 1), generator=torch.Generator().manual_seed(seed))
    param = next(causal_lm.parameters())
    causal_lm.score = head.to(device=param.device, dtype=param.dtype)
    causal_lm.config.num_labels = 1
    causal_lm.config.pad_token_id = pad_token_id
    return causal_lm.score


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token per row, from the mask alone: right or left padding, pad == eos."""
    # attention_mask: [N, T] -> [N]
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _token_logps(hidden: Tensor, targets: Tensor, lm_head: nn.Module, softcap: float | None) -> Tensor:
    # hidden: [M, H], targets: [M] -> [M]
    logits = lm_head(hidden).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.gather(1, targets[:, None]).squeeze(1) - logits.logsumexp(dim=1)


class FrozenHeadLogps(torch.autograd.Function):
    """log π(target) per token through a frozen lm_head, its backward prepared in forward.

    d log p_t / d logits = onehot(t) - softmax, so the gradient reaching the hidden state is
    g · (onehot - softmax) @ W with g the token's upstream scalar: forward computes the [M, H] product
    once and keeps only it. Two vocabulary matmuls per chunk (logits, product) instead of three
    (logits, recomputed logits, backward), and no [M, vocab] tensor outlives the chunk.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
        # hidden: [M, H], weight: [V, H], targets: [M] -> [M]
        raw = (hidden @ weight.T).float()  # [M, V]
        logits = softcap * torch.tanh(raw / softcap) if softcap else raw
        logsumexp = logits.logsumexp(dim=1, keepdim=True)
        token_logps = logits.gather(1, targets[:, None]).squeeze(1) - logsumexp.squeeze(1)
        if ctx.needs_input_grad[0]:
            d_logits = (logits - logsumexp).exp_().neg_()  # -softmax
            d_logits[torch.arange(targets.shape[0], device=targets.device), targets] += 1
            if softcap:
                d_logits *= 1 - torch.tanh(raw / softcap).square()
            ctx.save_for_backward(d_logits.to(weight.dtype) @ weight)  # [M, H]
        return token_logps

    @staticmethod
    def backward(ctx, grad_token_logps: Tensor):
        (d_hidden,) = ctx.saved_tensors
        return grad_token_logps[:, None].to(d_hidden.dtype) * d_hidden, None, None, None


def _frozen_weight(lm_head: nn.Module) -> Tensor | None:
    """lm_head's weight when it is frozen, bias-free and held whole in this process (not sharded), else None."""
    weight = getattr(lm_head, "weight", None)
    if type(lm_head) is not nn.Linear or lm_head.bias is not None or weight is None or weight.requires_grad:
        return None
    if type(weight) not in (nn.Parameter, torch.Tensor) or weight.dim() != 2:  # DTensor, ZeRO-3 partition, ...
        return None
    return weight


def response_logps(
    causal_lm: nn.Module, hidden: Tensor, input_ids: Tensor, response_mask: Tensor, sequence_ids: Tensor | None = None
):
    """Summed log-probs and token counts of response tokens only, lm_head run on those positions.

    -> (logps [N], lengths [N]) for N sequences: one per row, or, with packed rows, as `sequence_ids` names them.
    """
    # hidden: [R, T, H]; input_ids, response_mask, sequence_ids: [R, T]. Token t+1 is predicted from state t.
    target_mask = response_mask[:, 1:].bool()  # [R, T-1]
    states = hidden[:, :-1][target_mask]  # [M, H]
    targets = input_ids[:, 1:][target_mask]  # [M]
    if sequence_ids is None:
        n_sequences = input_ids.shape[0]
        rows = torch.arange(n_sequences, device=input_ids.device)[:, None].expand_as(target_mask)[target_mask]
    else:
        n_sequences = int(sequence_ids.max()) + 1
        rows = sequence_ids[:, 1:][target_mask]  # [M] the sequence each target token belongs to
    lm_head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config.get_text_config(), "final_logit_softcapping", None)
    with_grad = torch.is_grad_enabled() and states.requires_grad
    frozen_weight = _frozen_weight(lm_head) if with_grad else None
    # A trainable head keeps its logits for backward while they are small, else recomputes per chunk;
    # under gradient checkpointing it always recomputes (memory is what the user asked to save).
    too_large = states.shape[0] * causal_lm.config.get_text_config().vocab_size > LOGIT_KEEP_ELEMENTS
    recompute = with_grad and (too_large or getattr(causal_lm, "is_activation_checkpointing", False))
    pieces = []
    for start in range(0, states.shape[0], LOGIT_CHUNK):
        chunk_states, chunk_targets = states[start : start + LOGIT_CHUNK], targets[start : start + LOGIT_CHUNK]
        if frozen_weight is not None:
            pieces.append(FrozenHeadLogps.apply(chunk_states, frozen_weight, chunk_targets, softcap))
        elif recompute:
            pieces.append(checkpoint(_token_logps, chunk_states, chunk_targets, lm_head, softcap, use_reentrant=False))
        else:
            pieces.append(_token_logps(chunk_states, chunk_targets, lm_head, softcap))
    token_logps = torch.cat(pieces) if pieces else states.new_zeros(0)
    sums = torch.zeros(n_sequences, device=hidden.device, dtype=token_logps.dtype)
    return sums.index_add(0, rows, token_logps), torch.bincount(rows, minlength=n_sequences)


def _heads(causal_lm: nn.Module, hidden: Tensor, batch: dict, need_rewards: bool, need_logps: bool):
    # hidden: [N, T, H] last hidden states -> (rewards [N] | None, logps [N] | None, lengths [N] | None)
    rewards = logps = lengths = None
    packed = "sequence_ids" in batch
    if need_rewards:
        if packed:
            last_states = hidden.reshape(-1, hidden.shape[-1])[batch["sequence_ends"]]  # [N, H]
        else:
            last = last_token_index(batch["attention_mask"])
            last_states = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [N, H]
        score = getattr(causal_lm, SCORE_HEAD)
        # a fresh tensor, not a view: wrappers (FSDP2) hook the model's outputs and in-place ops drop hooks on views
        rewards = score(last_states.to(score.weight.dtype)).squeeze(-1).float().clone()  # [N]
    if need_logps:
        logps, lengths = response_logps(
            causal_lm, hidden, batch["input_ids"], batch["response_mask"], batch.get("sequence_ids") if packed else None
        )
    return rewards, logps, lengths


def forward_rows(model: nn.Module, batch: dict, need_rewards: bool, need_logps: bool):
    """One trunk pass over N rows -> (rewards [N] or None, response logps [N] or None, lengths [N] or None).

    `batch` has `input_ids`, `attention_mask` and, for log-probs, `response_mask`, each [N, T]; or
    packed rows (`PairCollator(packing=True)`): `input_ids`, `position_ids`, `response_mask`,
    `sequence_ids` [R, T] and `sequence_ends` [N], run with no attention mask so that transformers
    reads the sequence boundaries from the restarting positions.

    The call goes through `model(...)`, whatever wraps it (DDP, FSDP, DeepSpeed, peft, accelerate's
    autocast), so gradient sync, sharded-parameter gathering and mixed precision apply to both heads.
    Two hooks live for the duration of the call: one on the trunk reads its last hidden states,
    runs the heads the method uses, and hands the model's own lm_head zero positions (its logits are
    empty, so a method that does not use the policy head does no vocabulary work at all); one on the
    causal LM returns the heads' results as the model's output, so DDP sees every tensor the loss uses.
    """
    causal_lm = unwrap(model)
    results: list[tuple] = []

    def run_heads(_trunk, _args, output):
        results.append(_heads(causal_lm, output.last_hidden_state, batch, need_rewards, need_logps))
        output.last_hidden_state = output.last_hidden_state[:, :0]  # the model's own logits: [N, 0, vocab]
        return output

    def heads_as_output(_module, _args, _output):
        return results[-1]

    hooks = [
        trunk_of(causal_lm).register_forward_hook(run_heads),
        # prepend: the heads' results are the output that a wrapper's own post-forward hook sees (FSDP2's
        # registers its pre-backward hooks on it; appended, they would land on the empty logits instead)
        causal_lm.register_forward_hook(heads_as_output, prepend=True),
    ]
    if "sequence_ids" in batch:
        attention_mask, position_ids = None, batch["position_ids"]
    else:
        attention_mask, position_ids = batch["attention_mask"], position_ids_from_mask(batch["attention_mask"])
    try:
        return model(
            input_ids=batch["input_ids"], attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
    finally:
        for hook in hooks:
            hook.remove()


def hybrid_forward(model: nn.Module, batch: dict, need_rewards: bool, need_logps: bool) -> HybridOutput:
    """One trunk pass over [chosen; rejected] (2B sequences, chosen first; padded or packed rows), then the heads asked for."""
    rewards, logps, lengths = forward_rows(model, batch, need_rewards, need_logps)
    n_pairs = (rewards if rewards is not None else logps).shape[0] // 2
    out = HybridOutput()
    if rewards is not None:
        out.chosen_rewards, out.rejected_rewards = rewards[:n_pairs], rewards[n_pairs:]
    if logps is not None:
        out.chosen_logps, out.rejected_logps = logps[:n_pairs], logps[n_pairs:]
        out.chosen_lengths, out.rejected_lengths = lengths[:n_pairs], lengths[n_pairs:]
    return out


@torch.no_grad()
def packing_error(model: nn.Module, chosen: list[int], rejected: list[int], prompt_length: int, **heads) -> float:
    """Largest relative difference between the heads' outputs on two sequences padded and packed into one row.

    ~1e-6 when the model's attention keeps packed sequences apart; far larger when the second
    sequence attends to the first (an architecture whose mask ignores restarting positions).
    `heads`: need_rewards / need_logps, as the method uses them.
    """
    from .data.collator import pack_rows, pad_rows

    was_training = model.training
    model.eval()
    sequences, prompts = [chosen, rejected], [prompt_length, prompt_length]
    padded = forward_rows(model, pad_rows(sequences, prompts, 0, "right"), **heads)
    packed = forward_rows(model, pack_rows(sequences, prompts, 0, width=len(chosen) + len(rejected)), **heads)
    model.train(was_training)
    errors = [((a - b).abs() / (1 + b.abs())).max().item() for a, b in zip(packed[:2], padded[:2]) if a is not None]
    return max(errors)


@torch.no_grad()
def score_sequences(
    model: nn.Module,
    sequences: list[list[int]],
    prompt_lengths: list[int],
    rows: int,
    pad_token_id: int,
    padding_side: str = "right",
    need_rewards: bool = True,
    need_logps: bool = False,
    desc: str = "scoring",
) -> dict[str, Tensor]:
    """Rewards, response log-probs and response lengths of N token sequences, in input order, CPU [N].

    Sequences run longest first, `rows` per forward pass, so each batch pads only to lengths near its
    own (chosen and rejected of a pair are scored apart: their lengths often differ more than pairs do).
    """
    from tqdm.auto import tqdm

    from .data.collator import pad_rows

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    collected: dict[str, list[Tensor]] = {}
    for start in tqdm(range(0, len(order), rows), desc=desc, unit="batch", disable=len(order) <= rows):
        members = order[start : start + rows]
        batch = pad_rows(
            [sequences[i] for i in members], [prompt_lengths[i] for i in members], pad_token_id, padding_side
        )
        batch = {key: value.to(device) for key, value in batch.items()}
        outputs = forward_rows(model, batch, need_rewards, need_logps)
        for name, values in zip(("rewards", "logps", "lengths"), outputs):
            if values is not None:
                collected.setdefault(name, []).append(values.float().cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {name: torch.cat(parts)[inverse] for name, parts in collected.items()}


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # rewards are pooled from the mask, so this is safe
    return tokenizer


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
):
    """A hub id, a local checkpoint or the default model's alias -> (causal LM [+ score], tokenizer).

    keep_dropout=False builds the model with every dropout rate at 0 (what training uses by default).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    if not keep_dropout:
        zero_dropout(config)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)
    if not keep_dropout:
        for module in model.modules():  # any dropout a model builds with a fixed rate
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    model.config.pad_token_id = tokenizer.pad_token_id
    if with_score_head:
        attach_score_head(model, tokenizer.pad_token_id, seed)
    return model, tokenizer


def read_hafrm_config(directory: str | Path) -> dict:
    path = Path(directory) / HAFRM_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a hafrm output directory: {HAFRM_CONFIG} is missing")
    return json.loads(path.read_text())


def write_hafrm_config(directory: str | Path, config: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / HAFRM_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _load_score_weight(directory: Path) -> Tensor:
    from safetensors import safe_open

    files = [directory / "model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = [directory / json.loads(index.read_text())["weight_map"][f"{SCORE_HEAD}.weight"]]
    with safe_open(str(files[0]), framework="pt") as handle:
        return handle.get_tensor(f"{SCORE_HEAD}.weight")


def _quietly(load, *args, **kwargs):
    """Run a transformers loader without its report of `score.weight` as an unexpected key: hafrm
    loads that tensor itself, right after."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def load_trained(directory: str | Path, dtype: torch.dtype = torch.float32):
    """Load a hafrm output directory (full weights or a LoRA adapter) -> (model, tokenizer, hafrm config)."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    config = read_hafrm_config(directory)
    tokenizer = load_tokenizer(str(directory))
    with_score = config["reward_head"]
    if (directory / "adapter_config.json").is_file():
        from peft import PeftModel

        model, _ = load_base_model(config["base_model"], with_score_head=with_score, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(directory))
    else:
        model = _quietly(AutoModelForCausalLM.from_pretrained, str(directory), dtype=dtype)
        if with_score:
            attach_score_head(model, tokenizer.pad_token_id)
            with torch.no_grad():
                model.score.weight.copy_(_load_score_weight(directory))
    if torch.cuda.is_available():  # scoring runs where the model is; batches follow it
        model.to("cuda")
    model.eval()
    return model, tokenizer, config


def export_merged(adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Merge a LoRA run into a full directory that both Auto classes load."""
    model, tokenizer, config = load_trained(adapter_dir)
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"{adapter_dir} holds full weights, not a LoRA adapter: there is nothing to merge")
    merged = model.merge_and_unload()
    if "reward_mean" in config:  # the normalisation OpenRLHF reads from config.json
        merged.config.mean, merged.config.std = config["reward_mean"], config["reward_std"]
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_hafrm_config(output_dir, {**config, "finetune": "lora-merged", "merged_from": str(adapter_dir)})
    return Path(output_dir)
