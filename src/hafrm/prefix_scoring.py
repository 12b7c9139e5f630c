"""Rewards of texts that share leading tokens (a rollout group), the shared tokens run once into a KV cache.

    from hafrm.prefix_scoring import cached_prefix_rewards
    rewards = cached_prefix_rewards(model, sequences, groups, pad_token_id)   # CPU [N], input order

Each group's common prefix (`data.collator.common_prefix`: its prompt, as a rule) runs once; then every
member's own tokens run as one row that attends to its group's cached prefix and to itself. All groups of a
call share one trunk pass for the prefixes (right-padded in one batch), then the members run right-padded against
the prefixes' cache gathered per member (slots past a group's own prefix masked out), in chunks of similar own
length so that padding stays small.
Attention costs each member R·(P + R) for its R own tokens and a P-token prefix: a batch costs what its
tokens cost, where the shared-rows layout (`data.collator.lay_out_rows` under `masks.shared_attention_mask`)
builds a (P + G·R)² mask per unit and attends over all of it. Exact against scoring each text alone up to
the dtype's rounding (`cached_prefix_verified` checks a model once, as `layout.shared_rows_verified` does).
Reward heads only: the policy head's log-probs keep the shared-rows layout of training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .data.collator import common_prefix, pad_rows
from .layout import layout_tolerance
from .model import SCORE_HEAD, forward_rows, trunk_of, unwrap

Tensor = torch.Tensor

# members of one chunk of the second pass are at least this fraction of its longest member's own length: padding
# stays under a quarter of a chunk's tokens
LENGTH_BAND = 0.8


@torch.no_grad()
def cached_prefix_rewards(model: nn.Module, sequences: list[list[int]], groups: list[list[int]], pad: int) -> Tensor:
    """Reward-head outputs of `sequences` [N] (CPU, float32, input order), every group's prefix run once.

    `groups` (indices into `sequences`) must each share at least one leading token and leave every member
    one token of its own (`common_prefix` sees to the latter); a group of one is a prefix of all but its
    last token.
    """
    causal_lm = unwrap(model)
    trunk, score = trunk_of(causal_lm), getattr(causal_lm, SCORE_HEAD)
    device = next(causal_lm.parameters()).device
    prefixes = [common_prefix([sequences[i] for i in group]) or len(sequences[group[0]]) - 1 for group in groups]
    if any(k < 1 for k in prefixes):
        raise ValueError("a group shares no leading token: score it as padded rows")
    # 1. every group's prefix, right-padded, in one pass: causal attention keeps the pads out of real tokens
    widest = max(prefixes)
    prefix_ids = torch.full((len(groups), widest), pad, dtype=torch.long)
    prefix_mask = torch.zeros((len(groups), widest), dtype=torch.long)
    for g, (group, k) in enumerate(zip(groups, prefixes)):
        prefix_ids[g, :k] = torch.tensor(sequences[group[0]][:k])
        prefix_mask[g, :k] = 1
    cache = trunk(
        input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device), use_cache=True
    ).past_key_values
    # 2. every member's own tokens, right-padded, against its group's prefix (the cache gathered per member), in
    # chunks of members of similar length (longest first, each within LENGTH_BAND of its chunk's longest)
    members = [(g, i) for g, group in enumerate(groups) for i in group]
    members.sort(key=lambda member: -len(sequences[member[1]]) + prefixes[member[0]])
    out = torch.empty(len(sequences))
    start = 0
    while start < len(members):
        widest = len(sequences[members[start][1]]) - prefixes[members[start][0]]
        end = start + 1
        while (
            end < len(members) and len(sequences[members[end][1]]) - prefixes[members[end][0]] >= LENGTH_BAND * widest
        ):
            end += 1
        chunk = members[start:end]
        out[torch.tensor([i for _, i in chunk])] = _members_rewards(
            trunk, score, cache, sequences, prefixes, max(prefixes), chunk, pad, device, last_chunk=end == len(members)
        )
        start = end
    return out


def _members_rewards(trunk, score, cache, sequences, prefixes, prefix_width, chunk, pad, device, last_chunk) -> Tensor:
    """Rewards of one chunk of (group, index) members, each member's own tokens after its group's cached prefix."""
    owns = [sequences[i][prefixes[g] :] for g, i in chunk]
    own_width = max(len(own) for own in owns)
    gathered = cache if last_chunk else copy.deepcopy(cache)  # reorder_cache gathers in place
    gathered.reorder_cache(torch.tensor([g for g, _ in chunk], device=device))
    input_ids = torch.full((len(chunk), own_width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(chunk), prefix_width + own_width), dtype=torch.long)
    position_ids = torch.zeros((len(chunk), own_width), dtype=torch.long)
    for row, ((g, _), own) in enumerate(zip(chunk, owns)):
        k = prefixes[g]
        input_ids[row, : len(own)] = torch.tensor(own)
        attention_mask[row, :k] = 1
        attention_mask[row, prefix_width : prefix_width + len(own)] = 1
        position_ids[row] = torch.arange(k, k + own_width)
    hidden = trunk(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        past_key_values=gathered,
        use_cache=False,
    ).last_hidden_state
    last = torch.tensor([len(own) - 1 for own in owns], device=device)
    states = hidden[torch.arange(len(chunk), device=device), last]
    return score(states.to(next(score.parameters()).dtype)).squeeze(-1).float().cpu()


def cached_prefix_error(model: nn.Module, sequences: list[list[int]], group: list[int]) -> float:
    """Largest relative difference between a group's rewards with its prefix cached and as padded rows."""
    pad = unwrap(model).config.pad_token_id
    members = [sequences[i] for i in group]
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in pad_rows(members, [0] * len(members), pad, "right").items()}
    padded = forward_rows(model, batch, need_rewards=True, need_logps=False)[0].float().cpu()
    cached = cached_prefix_rewards(model, members, [list(range(len(members)))], pad)
    return ((cached - padded).abs() / (1 + padded.abs())).max().item()


def cached_prefix_verified(model: nn.Module, sequences: list[list[int]], groups: list[list[int]]) -> bool:
    """Whether this model scores cached-prefix rows as padded ones: checked once per model (on the first group of
    two or more), the verdict kept on the model. A model whose cache cannot be gathered or extended (a kernel or
    cache type that does not take it) fails the check; its texts are then scored without sharing."""
    causal_lm = unwrap(model)
    verdict = getattr(causal_lm, "_hafrm_cached_prefix_verified", None)
    if verdict is None:
        group = next(g for g in groups if len(g) > 1)[:2]
        try:
            verdict = cached_prefix_error(model, sequences, group) <= layout_tolerance(model)
        except Exception:  # a cache or attention kernel that cannot do it
            verdict = False
        if not verdict:
            print(
                f"note: prefix caching off: {type(causal_lm).__name__} does not score cached-prefix rows as padded ones"
            )
        causal_lm._hafrm_cached_prefix_verified = verdict
    return verdict
