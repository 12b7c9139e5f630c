"""Checks that a layout (packed rows, shared-prompt rows) gives the numbers padded rows give, for one model.

    from hafrm.layout import layout_tolerance, packing_error, sharing_error, shared_rows_verified
    packing_error(model, chosen_ids, rejected_ids, prompt_length, need_rewards=True, need_logps=True)  # ~1e-6

Training, scoring and the frozen-prefix cache run a layout only after such a check; where it fails
(an architecture whose attention ignores restarting positions or the 4-D mask) they fall back to
padded rows and say so.
"""

from __future__ import annotations

import torch
from torch import nn

from .data.collator import lay_out_rows, pack_rows, pad_rows
from .model import forward_rows, unwrap

# Packed or shared rows and padded ones may differ by float rounding (~1e-6 relative in fp32), no more;
# in bf16 / fp16 weights rounding reaches ~1e-2, still far below what a mask that leaks gives (order 1).
LAYOUT_TOLERANCE = 1e-3
HALF_LAYOUT_TOLERANCE = 5e-2


def layout_tolerance(model: nn.Module) -> float:
    """How far a packed / shared / cached result may be from the padded one for this model's weights' dtype."""
    dtype = next(model.parameters()).dtype
    return LAYOUT_TOLERANCE if dtype in (torch.float32, torch.float64) else HALF_LAYOUT_TOLERANCE


@torch.no_grad()
def packing_error(model: nn.Module, chosen: list[int], rejected: list[int], prompt_length: int, **heads) -> float:
    """Largest relative difference between the heads' outputs on two sequences padded and packed into one row.

    ~1e-6 when the model's attention keeps packed sequences apart; far larger when the second
    sequence attends to the first (an architecture whose mask ignores restarting positions).
    `heads`: need_rewards / need_logps, as the method uses them.
    """

    def one_row(sequences, prompts, pad):
        return pack_rows(sequences, prompts, pad, width=sum(len(ids) for ids in sequences))

    return _layout_error(model, [chosen, rejected], [prompt_length] * 2, one_row, heads)


@torch.no_grad()
def sharing_error(model: nn.Module, chosen: list[int], rejected: list[int], prompt_length: int, **heads) -> float:
    """Largest relative difference between the heads' outputs on a pair padded and run with its prompt shared.

    ~1e-6 when the model's attention takes the shared-rows mask; far larger when it ignores it (the
    rejected reply then sees the chosen one), or where an attention kernel cannot take such a mask.
    """

    def shared(sequences, prompts, pad):
        return lay_out_rows(sequences, prompts, [[0, 1]], pad)

    return _layout_error(model, [chosen, rejected], [prompt_length] * 2, shared, heads)


def _layout_error(model, sequences, prompts, lay_out, heads) -> float:
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


def shared_rows_verified(model: nn.Module, sequences, prompt_lengths, groups, **heads) -> bool:
    """Whether this model scores shared-prompt rows as padded ones: checked once per model (on the first group of
    two or more), the verdict kept on the model."""
    causal_lm = unwrap(model)
    verdict = getattr(causal_lm, "_hafrm_shared_rows_verified", None)
    if verdict is None:
        group = next(g for g in groups if len(g) > 1)
        first, second = (sequences[i] for i in group[:2])
        try:
            error = sharing_error(model, first, second, min(prompt_lengths[i] for i in group[:2]), **heads)
            verdict = error <= layout_tolerance(model)
        except Exception:  # an attention kernel that cannot take the mask
            verdict = False
        if not verdict:
            print(
                f"note: prompt sharing off: {type(causal_lm).__name__} does not score shared-prompt rows as padded ones"
            )
        causal_lm._hafrm_shared_rows_verified = verdict
    return verdict
