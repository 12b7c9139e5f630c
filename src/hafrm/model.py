"""The hybrid model: one causal-LM trunk φ read by a scalar reward head F and the LM's policy head K.

    from hafrm.checkpoint import load_base_model
    from hafrm.model import hybrid_forward
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

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor
SCORE_HEAD = "score"
# lm_head logits are built for at most this many response tokens at a time.
LOGIT_CHUNK = 1024
# A trainable lm_head keeps its [tokens, vocab] fp32 logits for backward while a batch's response
# logits stay under this many elements (256 MiB) and gradient checkpointing is off; otherwise each
# chunk is recomputed in backward, which bounds memory at the price of one more lm_head matmul.
LOGIT_KEEP_ELEMENTS = 1 << 26
# Packed or shared rows and padded ones may differ by float rounding (~1e-6 relative in fp32), no more;
# in bf16 / fp16 weights rounding reaches ~1e-2, still far below what a mask that leaks gives (order 1).
LAYOUT_TOLERANCE = 1e-3
HALF_LAYOUT_TOLERANCE = 5e-2


def layout_tolerance(model: nn.Module) -> float:
    """How far a packed / shared / cached result may be from the padded one for this model's weights' dtype."""
    dtype = next(model.parameters()).dtype
    return LAYOUT_TOLERANCE if dtype in (torch.float32, torch.float64) else HALF_LAYOUT_TOLERANCE


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
    set_reward_config(causal_lm.config, pad_token_id)
    return causal_lm.score


def set_reward_config(config, pad_token_id: int) -> None:
    """The config.json fields reward-model loaders read: transformers' sequence classifier (num_labels,
    pad_token_id), the text-classification pipeline (problem_type regression: raw rewards, no sigmoid),
    OpenRLHF (value_head_prefix)."""
    config.num_labels = 1
    config.problem_type = "regression"
    config.value_head_prefix = SCORE_HEAD
    config.pad_token_id = pad_token_id


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


def _visible(group_ids: Tensor, segment_ids: Tensor, row, query, key) -> Tensor:
    """The shared-rows rule: a token sees earlier tokens of its own unit that are in the shared prefix
    (segment 0) or in its own segment, and padding (unit -1) sees itself only (no row of the mask is empty).
    Indices broadcast: whole index grids for the dense mask, scalars inside FlexAttention's mask_mod."""
    same_unit = (group_ids[row, query] == group_ids[row, key]) & (group_ids[row, query] >= 0)
    segment = (segment_ids[row, key] == 0) | (segment_ids[row, query] == segment_ids[row, key])
    return (same_unit & segment & (key <= query)) | (query == key)


def shared_attention_mask(group_ids: Tensor, segment_ids: Tensor, dtype: torch.dtype) -> Tensor:
    """[R, L] unit and segment ids of shared rows -> additive [R, 1, L, L] mask (0: may attend, dtype min: may not).

    A member's reply sees the prompt and itself, never another member's reply (`_visible`). Works with
    eager and SDPA attention.
    """
    rows, length = group_ids.shape
    positions = torch.arange(length, device=group_ids.device)
    row = torch.arange(rows, device=group_ids.device)[:, None, None]
    allowed = _visible(group_ids, segment_ids, row, positions[None, :, None], positions[None, None, :])  # [R, L, L]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=group_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def shared_block_mask(group_ids: Tensor, segment_ids: Tensor):
    """The same rule (`_visible`) as a FlexAttention BlockMask, whose kernel skips masked blocks."""
    from torch.nn.attention.flex_attention import create_block_mask

    def visible(row, _head, query, key):
        return _visible(group_ids, segment_ids, row, query, key)

    rows, length = group_ids.shape
    return create_block_mask(visible, rows, None, length, length, device=group_ids.device)


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
        rewards = score(last_states.to(score.weight.dtype)).squeeze(-1).float().clone()  # [N]
    if need_logps:
        targets = (
            (batch["target_states"], batch["target_ids"], batch["target_sequences"], batch["sequence_ends"].shape[0])
            if flat
            else None
        )
        logps, lengths = response_logps(causal_lm, hidden, batch["input_ids"], batch["response_mask"], targets)
    return rewards, logps, lengths


def rows_attention_mask(causal_lm: nn.Module, batch: dict):
    """The shared rows' mask in the form the model's attention takes: a BlockMask for FlexAttention, else dense."""
    if getattr(causal_lm.config, "_attn_implementation", None) == "flex_attention":
        return shared_block_mask(batch["group_ids"], batch["segment_ids"])
    dtype = next(causal_lm.parameters()).dtype
    return shared_attention_mask(batch["group_ids"], batch["segment_ids"], dtype)


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
    if "segment_ids" in batch:  # shared rows: the mask keeps each unit's replies apart
        attention_mask, position_ids = rows_attention_mask(causal_lm, batch), batch["position_ids"]
    elif "sequence_ends" in batch:  # packed rows: restarting positions are the mask
        attention_mask, position_ids = None, batch["position_ids"]
    else:
        attention_mask, position_ids = batch["attention_mask"], position_ids_from_mask(batch["attention_mask"])
    inputs = {"input_ids": batch["input_ids"]}
    skipped = contextlib.nullcontext()
    if "frozen_states" in batch:  # `--finetune freeze` with the frozen-prefix cache: start at the first trained block
        from .prefix_cache import lower_blocks_skipped

        dtype = causal_lm.get_input_embeddings().weight.dtype
        inputs = {"inputs_embeds": batch["frozen_states"].to(dtype)}
        skipped = lower_blocks_skipped(causal_lm, int(batch["frozen_blocks"]))
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


@torch.no_grad()
def packing_error(model: nn.Module, chosen: list[int], rejected: list[int], prompt_length: int, **heads) -> float:
    """Largest relative difference between the heads' outputs on two sequences padded and packed into one row.

    ~1e-6 when the model's attention keeps packed sequences apart; far larger when the second
    sequence attends to the first (an architecture whose mask ignores restarting positions).
    `heads`: need_rewards / need_logps, as the method uses them.
    """
    from .data.collator import pack_rows

    def one_row(sequences, prompts, pad):
        return pack_rows(sequences, prompts, pad, width=sum(len(ids) for ids in sequences))

    return _layout_error(model, [chosen, rejected], [prompt_length] * 2, one_row, heads)


@torch.no_grad()
def sharing_error(model: nn.Module, chosen: list[int], rejected: list[int], prompt_length: int, **heads) -> float:
    """Largest relative difference between the heads' outputs on a pair padded and run with its prompt shared.

    ~1e-6 when the model's attention takes the shared-rows mask; far larger when it ignores it (the
    rejected reply then sees the chosen one), or where an attention kernel cannot take such a mask.
    """
    from .data.collator import lay_out_rows

    def shared(sequences, prompts, pad):
        return lay_out_rows(sequences, prompts, [[0, 1]], pad)

    return _layout_error(model, [chosen, rejected], [prompt_length] * 2, shared, heads)


def _layout_error(model, sequences, prompts, lay_out, heads) -> float:
    from .data.collator import pad_rows

    was_training = model.training
    model.eval()
    pad = unwrap(model).config.pad_token_id
    device = next(model.parameters()).device
    try:
        padded = forward_rows(model, _to(pad_rows(sequences, prompts, pad, "right"), device), **heads)
        laid_out = forward_rows(model, _to(lay_out(sequences, prompts, pad), device), **heads)
    finally:
        model.train(was_training)
    errors = [((a - b).abs() / (1 + b.abs())).max().item() for a, b in zip(laid_out[:2], padded[:2]) if a is not None]
    return max(errors)


def _to(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


# A unit of shared-prompt sequences in scoring holds at most this many tokens (or its longest member).
SHARED_UNIT_TOKENS = 4096


def prompt_groups(sequences: list[list[int]], prompt_lengths: list[int], max_tokens: int = SHARED_UNIT_TOKENS):
    """Sequences with the same prompt tokens, in groups of at most `max_tokens` with the prompt counted once.

    -> groups of indices (input order within each); a sequence with no prompt is a group of its own.
    """
    by_prompt: dict[tuple, list[int]] = {}
    for i, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        key = tuple(ids[:prompt_length]) if prompt_length else ("alone", i)
        by_prompt.setdefault(key, []).append(i)
    groups = []
    for key, members in by_prompt.items():
        prompt = len(key) if key[0] != "alone" else 0
        group, size = [], prompt
        for i in members:
            own = len(sequences[i]) - prompt
            if group and size + own > max(max_tokens, len(sequences[i])):
                groups.append(group)
                group, size = [], prompt
            group.append(i)
            size += own
        groups.append(group)
    return groups


def sharing_holds(model: nn.Module, sequences, prompt_lengths, groups, **heads) -> bool:
    """Whether this model scores shared-prompt rows as padded ones (checked once per model, on one group)."""
    causal_lm = unwrap(model)
    verdict = getattr(causal_lm, "_hafrm_sharing_holds", None)
    if verdict is None:
        group = next(g for g in groups if len(g) > 1)
        first, second = (sequences[i] for i in group[:2])
        try:
            verdict = sharing_error(
                model, first, second, min(prompt_lengths[i] for i in group[:2]), **heads
            ) <= layout_tolerance(model)
        except Exception:  # an attention kernel that cannot take the mask
            verdict = False
        if not verdict:
            print(
                f"note: prompt sharing off: {type(causal_lm).__name__} does not score shared-prompt rows as padded ones"
            )
        causal_lm._hafrm_sharing_holds = verdict
    return verdict


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
    share_prompts: bool = True,
    frozen=None,
) -> dict[str, Tensor]:
    """Rewards, response log-probs and response lengths of N token sequences, in input order, CPU [N].

    Sequences run longest first, about `rows` per forward pass, so each batch pads only to lengths
    near its own. With `share_prompts`, sequences that start with the same prompt tokens (the chosen and
    rejected replies of a pair, N best-of-N samples) are one unit whose prompt runs once
    (`data.collator.lay_out_rows`), after a check that the model's attention takes the mask (else a note
    and padded rows). `frozen` (a `prefix_cache.StoredFrozenStates` of these sequences) feeds the frozen
    lower blocks' stored output to the first trained block, so only the top of the trunk runs.
    """
    from tqdm.auto import tqdm

    from .data.collator import lay_out_rows, pad_rows

    device = next(model.parameters()).device
    heads = {"need_rewards": need_rewards, "need_logps": need_logps}
    groups = prompt_groups(sequences, prompt_lengths) if share_prompts else [[i] for i in range(len(sequences))]
    if not any(len(group) > 1 for group in groups) or not sharing_holds(
        model, sequences, prompt_lengths, groups, **heads
    ):
        groups = [[i] for i in range(len(sequences))]
    size = {id(g): sum(len(sequences[i]) for i in g) - (len(g) - 1) * min(prompt_lengths[i] for i in g) for g in groups}
    groups.sort(key=lambda g: -size[id(g)])
    batches, batch_groups, count = [], [], 0
    for group in groups:  # about `rows` sequences per pass
        batch_groups.append(group)
        count += len(group)
        if count >= rows:
            batches.append(batch_groups)
            batch_groups, count = [], 0
    if batch_groups:
        batches.append(batch_groups)
    collected: dict[str, list[Tensor]] = {}
    order: list[int] = []
    for batch_groups in tqdm(batches, desc=desc, unit="batch", disable=len(batches) <= 1):
        members = [i for group in batch_groups for i in group]
        ids, prompts = [sequences[i] for i in members], [prompt_lengths[i] for i in members]
        if any(len(group) > 1 for group in batch_groups):
            local, groups_here = iter(range(len(members))), []
            for group in batch_groups:
                groups_here.append([next(local) for _ in group])
            batch = lay_out_rows(ids, prompts, groups_here, pad_token_id, pack=False)
        else:
            batch = pad_rows(ids, prompts, pad_token_id, padding_side)
        if frozen is not None:
            batch = frozen.gather(members, batch)
        outputs = forward_rows(model, _to(batch, device), need_rewards, need_logps)
        order.extend(members)
        for name, values in zip(("rewards", "logps", "lengths"), outputs):
            if values is not None:
                collected.setdefault(name, []).append(values.float().cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {name: torch.cat(parts)[inverse] for name, parts in collected.items()}
