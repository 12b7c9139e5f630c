"""Batch tokenised pairs as [chosen; rejected] rows that share one forward pass.

    collator = PairCollator(pad_token_id=tokenizer.pad_token_id, padding_side="right")
    batch = collator(rows)   # input_ids, attention_mask, response_mask: [2B, T]

Rows are padded only to the longest sequence in the batch. The response mask marks the tokens
whose log-probability the policy head scores; prompt and padding tokens are 0.

    collator = PairCollator(pad_token_id=..., packing=True)
    batch = collator(rows)   # input_ids, position_ids, response_mask, sequence_ids: [R, L]; sequence_ends: [2B]

With packing, the 2B sequences are laid end to end in R ≤ 2B rows as wide as the longest of them
(first fit, longest first), so the trunk runs far fewer padding tokens. Positions restart at 0 with
every sequence, which is how transformers' attention keeps packed sequences apart (block-diagonal
causal mask; varlen kernels with flash attention). `sequence_ids` names each token's sequence (-1:
padding) and `sequence_ends` the flat index, in the [R * L] view, of each sequence's last token;
`target_states` / `target_ids` / `target_sequences` list the response tokens the policy head scores.

    collator = PairCollator(pad_token_id=..., prompt_sharing=True, packing=True)
    batch = collator(rows)   # as packed, plus group_ids and segment_ids: [R, L]

With prompt sharing, a pair is one unit: prompt, chosen reply, rejected reply, so the prompt runs
through the trunk once instead of twice (Wang & Hegde 2024, "Accelerating Direct Preference
Optimization with Prefix Sharing"). The rejected reply's positions continue from the prompt's end,
as in its own sequence, and the attention mask built from `group_ids` / `segment_ids`
(`model.shared_attention_mask`) lets it see the prompt and itself, never the chosen reply. With
packing too, several pairs share a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Per-pair float columns passed through when present: the margin and cached reference log-probs.
PAIR_COLUMNS = ("margin", "ref_chosen_logps", "ref_rejected_logps")
# Per-pair integer columns passed through: a row's place in the frozen-prefix cache (`hafrm.prefix_cache`).
INDEX_COLUMNS = ("cache_row",)


def pad_rows(sequences: list[list[int]], prompt_lengths: list[int], pad_token_id: int, padding_side: str):
    """Token-id lists -> input_ids, attention_mask, response_mask, each [N, T] for the longest T."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        start = width - len(ids) if padding_side == "left" else 0
        input_ids[i, start : start + len(ids)] = torch.tensor(ids)
        attention_mask[i, start : start + len(ids)] = 1
        response_mask[i, start + prompt_length : start + len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def pack_rows(sequences: list[list[int]], prompt_lengths: list[int], pad_token_id: int, width: int | None = None):
    """Token-id lists -> packed input_ids, position_ids, response_mask, sequence_ids [R, L] and sequence_ends [N].

    Rows are `width` tokens wide (default: the longest sequence); sequences fill them first fit,
    longest first. A sequence's first token is never a response target: in a packed row the state
    before it belongs to another sequence. (`lay_out_rows` with every sequence a group of its own.)
    """
    return lay_out_rows(sequences, prompt_lengths, [[i] for i in range(len(sequences))], pad_token_id, width)


def common_prefix(sequences: list[list[int]]) -> int:
    """How many leading tokens all the sequences share, leaving each at least its last token of its own."""
    if len(sequences) < 2:
        return 0
    limit = min(len(ids) for ids in sequences) - 1
    first = sequences[0]
    for k in range(limit):
        if any(ids[k] != first[k] for ids in sequences[1:]):
            return k
    return max(limit, 0)


def unit_tokens(sequences: list[list[int]]) -> int:
    """Tokens one unit of these sequences takes in `lay_out_rows`: their common prefix once, then each one's own."""
    k = common_prefix(sequences)
    return k + sum(len(ids) - k for ids in sequences)


def lay_out_rows(
    sequences: list[list[int]],
    prompt_lengths: list[int],
    groups: list[list[int]],
    pad_token_id: int,
    width: int | None = None,
    pack: bool = True,
) -> dict[str, torch.Tensor]:
    """Token-id lists -> flat rows in which each group of sequences runs its common prefix once.

    A group (indices into `sequences`) becomes one unit: the tokens its members share at the start
    (their prompt, as a rule) once, then each member's own remaining tokens. Units are `width` wide
    rows' worth at most (default: the longest unit) and fill rows first fit, longest first (`pack`), or
    one per row. A group of one is an ordinary packed sequence.

    -> input_ids, position_ids, response_mask, sequence_ids [R, L]; sequence_ends [N] (flat index of each
    sequence's last token in the [R * L] view); target_states, target_ids, target_sequences [M] (for each
    response token scored, the flat index of the state that predicts it, its id, its sequence). With any
    group of two or more: group_ids and segment_ids [R, L] too, from which `model.shared_attention_mask`
    builds the mask that lets a member's own tokens see the shared prefix and themselves, never another
    member. A member's positions continue from the prefix's end, as in its own sequence.
    """
    if sorted(i for group in groups for i in group) != list(range(len(sequences))):
        raise ValueError("groups must name every sequence exactly once")
    prefixes = [common_prefix([sequences[i] for i in group]) for group in groups]
    sizes = [k + sum(len(sequences[i]) - k for i in group) for k, group in zip(prefixes, groups)]
    width = width or max(sizes)
    if any(size > width for size in sizes):
        raise ValueError(f"a sequence is longer than the packed row width {width}")
    free: list[int] = []  # room left in each row
    placement = [(0, 0)] * len(groups)  # (row, start) per unit
    for g in sorted(range(len(groups)), key=lambda g: -sizes[g]):
        row = next((r for r, room in enumerate(free) if room >= sizes[g]), None) if pack else None
        if row is None:
            row = len(free)
            free.append(width)
        placement[g] = (row, width - free[row])
        free[row] -= sizes[g]
    shape = (len(free), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    group_ids = torch.full(shape, -1, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    # Padding at a row's end counts on from 0 as one more (unread) sequence, so it never joins a real one.
    position_ids = (torch.arange(width) - (width - torch.tensor(free))[:, None]).clamp(min=0)
    sequence_ends = torch.empty(len(sequences), dtype=torch.long)
    states, targets, owners, scored = [], [], [], []  # one tensor per sequence, concatenated at the end
    for g, (group, k) in enumerate(zip(groups, prefixes)):
        row, start = placement[g]
        base = row * width
        first = torch.tensor(sequences[group[0]][:k], dtype=torch.long)
        input_ids[row, start : start + k] = first
        position_ids[row, start : start + k] = torch.arange(k)
        sequence_ids[row, start : start + k] = group[0]
        group_ids[row, start : start + k] = g
        prefix_places = base + start + torch.arange(k)
        cursor = start + k
        for member, i in enumerate(group, start=1):
            ids = torch.tensor(sequences[i], dtype=torch.long)
            own = len(ids) - k
            span = slice(cursor, cursor + own)
            input_ids[row, span] = ids[k:]
            position_ids[row, span] = torch.arange(k, len(ids))
            sequence_ids[row, span] = i
            group_ids[row, span] = g
            segment_ids[row, span] = member
            # flat index of token t of sequence i: in the prefix, or in the member's own span
            where = torch.cat([prefix_places, base + cursor + torch.arange(own)])
            # a packed sequence's first token is never a target: the state before it is another sequence's
            scored_positions = torch.arange(max(prompt_lengths[i], 1), len(ids))
            states.append(where[scored_positions - 1])
            scored.append(where[scored_positions])
            targets.append(ids[scored_positions])
            owners.append(torch.full((len(scored_positions),), i, dtype=torch.long))
            sequence_ends[i] = where[-1]
            cursor += own
    response_mask = torch.zeros(shape[0] * width, dtype=torch.long)
    response_mask[torch.cat(scored)] = 1
    batch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "response_mask": response_mask.view(shape),
        "sequence_ids": sequence_ids,
        "sequence_ends": sequence_ends,
        "target_states": torch.cat(states),
        "target_ids": torch.cat(targets),
        "target_sequences": torch.cat(owners),
    }
    if any(len(group) > 1 for group in groups):
        batch.update(group_ids=group_ids, segment_ids=segment_ids)
    return batch


@dataclass
class PairCollator:
    pad_token_id: int
    padding_side: str = "right"
    packing: bool = False
    prompt_sharing: bool = False
    prefix_cache: object = None  # a `hafrm.prefix_cache.FrozenPrefixCache`: batches carry the frozen blocks' output

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [row["chosen_input_ids"] for row in rows] + [row["rejected_input_ids"] for row in rows]
        prompt_lengths = [row["prompt_length"] for row in rows] * 2
        if self.prompt_sharing:  # pair i is chosen i and rejected i, its prompt run once
            groups = [[i, len(rows) + i] for i in range(len(rows))]
            batch = lay_out_rows(sequences, prompt_lengths, groups, self.pad_token_id, pack=self.packing)
        elif self.packing:
            batch = pack_rows(sequences, prompt_lengths, self.pad_token_id)
        else:
            batch = pad_rows(sequences, prompt_lengths, self.pad_token_id, self.padding_side)
        for column in PAIR_COLUMNS:
            if column in rows[0]:
                batch[column] = torch.tensor([row[column] for row in rows], dtype=torch.float32)
        for column in INDEX_COLUMNS:
            if column in rows[0]:
                batch[column] = torch.tensor([row[column] for row in rows], dtype=torch.long)
        if self.prefix_cache is not None and "cache_row" in batch:
            batch = self.prefix_cache.collate(batch)
        return batch
