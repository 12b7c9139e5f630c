"""The hybrid model: one causal-LM trunk φ read by a scalar reward head F and the LM's policy head K.

    from hafrm.checkpoint import load_base_model
    from hafrm.model import hybrid_forward
    model, tokenizer = load_base_model("smollm2-135m-instruct", with_score_head=True)
    out = hybrid_forward(model, batch, need_rewards=True, need_logps=True)
    out.chosen_rewards, out.chosen_logps            # [B] each

There is no wrapper class. The reward head is a `Linear(hidden, 1)` (or GRM's MLP, `build_score_head`)
attached to the causal LM as its `score` submodule, so the model's own `save_pretrained` writes `model.*`, `lm_head.*` and
`score.weight` into one directory that loads unchanged as `AutoModelForCausalLM` (the policy) and as
`AutoModelForSequenceClassification(num_labels=1)` (the reward model). Trainer, peft, accelerate,
DeepSpeed and FSDP all see a plain `PreTrainedModel` (or `PeftModel`).

A batch holds B chosen rows followed by B rejected rows, so chosen and rejected share ONE trunk
forward pass, and both heads read its last hidden states.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .masks import rows_attention_mask

Tensor = torch.Tensor
SCORE_HEAD = "score"
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


def transformer_blocks(causal_lm: nn.Module) -> nn.ModuleList:
    """The trunk's stack of blocks: the ModuleList as long as the config's layer count."""
    n_layers = causal_lm.config.get_text_config().num_hidden_layers
    trunk = trunk_of(causal_lm)
    for module in trunk.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"{type(trunk).__name__}: found no list of {n_layers} transformer blocks")


class SkippedBlock(nn.Module):
    """Stands in for a frozen block while stored states feed its output: hands the hidden states through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def lower_blocks_skipped(model: nn.Module, n_frozen: int):
    """The trunk with its first `n_frozen` blocks handing their input through (their output is given as inputs_embeds)."""
    blocks = transformer_blocks(unwrap(model))
    originals = [blocks[i] for i in range(n_frozen)]
    skip = SkippedBlock()
    try:
        for i in range(n_frozen):
            blocks[i] = skip
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


# The reward head F's forms (`--reward-head-type`): `linear` (hafrm's default), `zero` (the same linear
# layer starting at 0, as the official HAF code initialises its head; its bias is left out because it
# cancels in the pairwise loss and no sequence-classification loader would read it), `mlp` (GRM's:
# dropout, Linear(hidden, 1024), ReLU, Linear(1024, 1), read by hafrm's own loaders only).
REWARD_HEAD_TYPES = ("linear", "zero", "mlp")
MLP_HEAD_HIDDEN = 1024
MLP_HEAD_DROPOUT = 0.1


def build_score_head(hidden: int, head_type: str = "linear", seed: int = 0) -> nn.Module:
    """The reward head F for a trunk of width `hidden`; its init depends on `seed` alone (its own generator,
    not whatever consumed the global RNG before, such as converting the default model on first use)."""
    generator = torch.Generator().manual_seed(seed)
    if head_type == "mlp":
        head = nn.Sequential(
            nn.Dropout(MLP_HEAD_DROPOUT),
            nn.Linear(hidden, MLP_HEAD_HIDDEN),
            nn.ReLU(),
            nn.Linear(MLP_HEAD_HIDDEN, 1),
        )
        for layer in (head[1], head[3]):  # nn.Linear's own default range, drawn from the seeded generator
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        return head
    if head_type not in REWARD_HEAD_TYPES:
        raise ValueError(f"unknown reward head type {head_type!r}; one of {', '.join(REWARD_HEAD_TYPES)}")
    head = nn.Linear(hidden, 1, bias=False)
    if head_type == "zero":
        nn.init.zeros_(head.weight)
    else:  # the same scale as OpenRLHF's value head: initial rewards of order 1 whatever the hidden size
        nn.init.normal_(head.weight, std=1 / math.sqrt(hidden + 1), generator=generator)
    return head


def attach_score_head(causal_lm: nn.Module, pad_token_id: int, seed: int = 0, head_type: str = "linear") -> nn.Module:
    """Add the reward head F (`build_score_head`) and make the config load as a 1-label sequence classifier."""
    head = build_score_head(causal_lm.config.get_text_config().hidden_size, head_type, seed)
    param = next(causal_lm.parameters())
    causal_lm.score = head.to(device=param.device, dtype=param.dtype)
    set_reward_config(causal_lm.config, pad_token_id, head_type)
    return causal_lm.score


def score_head_type(causal_lm: nn.Module) -> str:
    """The form of the reward head a model carries (`REWARD_HEAD_TYPES`; `zero` reads as `linear` once built)."""
    return "mlp" if isinstance(getattr(causal_lm, SCORE_HEAD), nn.Sequential) else "linear"


def set_reward_config(config, pad_token_id: int, head_type: str = "linear") -> None:
    """The config.json fields reward-model loaders read: transformers' sequence classifier (num_labels,
    pad_token_id), the text-classification pipeline (problem_type regression: raw rewards, no sigmoid),
    OpenRLHF (value_head_prefix); and, for GRM's MLP head, which no stock loader builds, its form
    (`hafrm_reward_head`) so that a reader can tell."""
    config.num_labels = 1
    config.problem_type = "regression"
    config.value_head_prefix = SCORE_HEAD
    config.pad_token_id = pad_token_id
    if head_type == "mlp":
        config.hafrm_reward_head = {"type": "mlp", "hidden": MLP_HEAD_HIDDEN, "dropout": MLP_HEAD_DROPOUT}


def reward_index(input_ids: Tensor, pad_token_id: int) -> Tensor:
    """Where the reward is read in each row: the last token that is not the pad token.

    The one pooling rule, the same as transformers' sequence classifiers (so TRL, RewardBench, the
    pipeline and vLLM read where hafrm does), right or left padding. It is the last real token
    because the pad token is one that no text holds (`hafrm.data.templates.ensure_pad_token`).
    """
    # input_ids: [N, T] -> [N]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id)).argmax(dim=1)


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
    causal_lm: nn.Module, hidden: Tensor, input_ids: Tensor, response_mask: Tensor, targets: tuple | None = None
):
    """Summed log-probs and token counts of response tokens only, lm_head run on those positions.

    -> (logps [N], lengths [N]) for N sequences: one per row, or, for flat rows (packed or shared), as
    `targets` = (target_states, target_ids, target_sequences, N) lists them (`data.collator.lay_out_rows`).
    """
    if targets is None:
        # hidden: [R, T, H]; input_ids, response_mask: [R, T]. Token t+1 is predicted from state t.
        target_mask = response_mask[:, 1:].bool()  # [R, T-1]
        states = hidden[:, :-1][target_mask]  # [M, H]
        target_ids = input_ids[:, 1:][target_mask]  # [M]
        n_sequences = input_ids.shape[0]
        rows = torch.arange(n_sequences, device=input_ids.device)[:, None].expand_as(target_mask)[target_mask]
    else:
        state_index, target_ids, rows, n_sequences = targets  # [M] flat state index, id, sequence of each target
        states = hidden.reshape(-1, hidden.shape[-1])[state_index]  # [M, H]
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
        chunk_states, chunk_targets = states[start : start + LOGIT_CHUNK], target_ids[start : start + LOGIT_CHUNK]
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
    flat = "sequence_ends" in batch  # packed or shared rows
    if need_rewards:
        if flat:  # each sequence's last token: where `reward_index` reads, as no sequence ends on the pad
            last_states = hidden.reshape(-1, hidden.shape[-1])[batch["sequence_ends"]]  # [N, H]
        else:
            last = reward_index(batch["input_ids"], causal_lm.config.pad_token_id)
            last_states = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [N, H]
        score = getattr(causal_lm, SCORE_HEAD)
        # a fresh tensor, not a view: wrappers (FSDP2) hook the model's outputs and in-place ops drop hooks on views
        dtype = next(score.parameters()).dtype
        rewards = score(last_states.to(dtype)).squeeze(-1).float().clone()  # [N]
    if need_logps:
        targets = (
            (batch["target_states"], batch["target_ids"], batch["target_sequences"], batch["sequence_ends"].shape[0])
            if flat
            else None
        )
        logps, lengths = response_logps(causal_lm, hidden, batch["input_ids"], batch["response_mask"], targets)
    return rewards, logps, lengths


def forward_rows(model: nn.Module, batch: dict, need_rewards: bool, need_logps: bool):
    """One trunk pass over N rows -> (rewards [N] or None, response logps [N] or None, lengths [N] or None).

    `batch` has `input_ids`, `attention_mask` and, for log-probs, `response_mask`, each [N, T]; or
    packed rows (`PairCollator(packing=True)`): `input_ids`, `position_ids`, `sequence_ids` [R, T],
    `sequence_ends` [N] and the `target_*` lists, run with no attention mask so that transformers
    reads the sequence boundaries from the restarting positions; or shared rows (`prompt_sharing=True`,
    `data.collator.lay_out_rows`), which add `group_ids` and `segment_ids` and run under the 4-D mask
    built from them.

    The call goes through `model(...)`, whatever wraps it (DDP, FSDP, DeepSpeed, peft, accelerate's
    autocast), so gradient sync, sharded-parameter gathering and mixed precision apply to both heads.
    Two hooks live for the duration of the call: one on the trunk reads its last hidden states,
    runs the heads the method uses, and hands the model's own lm_head zero positions (its logits are
    empty, so a method that does not use the policy head does no vocabulary work at all); one on the
    causal LM returns the heads' results as the model's output, so DDP sees every tensor the loss uses.
    """
    causal_lm = unwrap(model)
    # 1. The rows' inputs: the mask that keeps sequences apart, and where the trunk starts.
    if "segment_ids" in batch:  # shared rows: the mask keeps each unit's replies apart
        attention_mask, position_ids = rows_attention_mask(causal_lm, batch), batch["position_ids"]
    elif "sequence_ends" in batch:  # packed rows: restarting positions are the mask
        attention_mask, position_ids = None, batch["position_ids"]
    else:
        attention_mask, position_ids = batch["attention_mask"], position_ids_from_mask(batch["attention_mask"])
    inputs = {"input_ids": batch["input_ids"]}
    skipped = contextlib.nullcontext()
    if "frozen_states" in batch:  # `--finetune freeze` with the frozen-prefix cache: start at the first trained block
        dtype = causal_lm.get_input_embeddings().weight.dtype
        inputs = {"inputs_embeds": batch["frozen_states"].to(dtype)}
        skipped = lower_blocks_skipped(causal_lm, int(batch["frozen_blocks"]))

    # 2. The trunk φ runs, then the heads F and K read its last hidden states (`_heads`), inside the model's
    # own forward: a hook is the only place between the trunk and lm_head that every wrapper runs.
    results: list[tuple] = []

    def run_heads(_trunk, _args, output):
        results.append(_heads(causal_lm, output.last_hidden_state, batch, need_rewards, need_logps))
        output.last_hidden_state = output.last_hidden_state[:, :0]  # the model's own logits: [N, 0, vocab]
        return output

    def heads_as_output(_module, _args, _output):  # the heads' results are what the wrapper returns
        return results[-1]

    hooks = [
        trunk_of(causal_lm).register_forward_hook(run_heads),
        # prepend: the heads' results are the output that a wrapper's own post-forward hook sees (FSDP2's
        # registers its pre-backward hooks on it; appended, they would land on the empty logits instead)
        causal_lm.register_forward_hook(heads_as_output, prepend=True),
    ]
    # 3. One call through whatever wraps the model -> (rewards, logps, lengths).
    try:
        with skipped:
            return model(**inputs, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
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
