"""Attention masks for shared-prompt rows: a pair's (or a group's) prompt runs once, each reply sees it and itself.

    from hafrm.masks import rows_attention_mask
    mask = rows_attention_mask(causal_lm, batch)     # dense [R, 1, L, L] additive, or a FlexAttention BlockMask

The rows come from `data.collator.lay_out_rows`, which numbers each token's unit (`group_ids`, -1 for
padding) and segment (`segment_ids`: 0 for the shared prompt, 1.. for each member's reply).
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


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


def rows_attention_mask(causal_lm: nn.Module, batch: dict):
    """The shared rows' mask in the form the model's attention takes: a BlockMask for FlexAttention, else dense."""
    if getattr(causal_lm.config, "_attn_implementation", None) == "flex_attention":
        return shared_block_mask(batch["group_ids"], batch["segment_ids"])
    dtype = next(causal_lm.parameters()).dtype
    return shared_attention_mask(batch["group_ids"], batch["segment_ids"], dtype)
