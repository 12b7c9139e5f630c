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
padding) and `sequence_ends` the flat index, in the [R * L] view, of each sequence's last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Per-pair float columns passed through when present: the margin and cached reference log-probs.
PAIR_COLUMNS = ("margin", "ref_chosen_logps", "ref_rejected_logps")


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
    before it belongs to another sequence.
    """
    width = width or max(len(ids) for ids in sequences)
    if any(len(ids) > width for ids in sequences):
        raise ValueError(f"a sequence is longer than the packed row width {width}")
    free: list[int] = []  # room left in each row
    placement = [(0, 0)] * len(sequences)  # (row, start) per sequence
    for i in sorted(range(len(sequences)), key=lambda i: -len(sequences[i])):
        length = len(sequences[i])
        row = next((r for r, room in enumerate(free) if room >= length), None)
        if row is None:
            row = len(free)
            free.append(width)
        placement[i] = (row, width - free[row])
        free[row] -= length
    shape = (len(free), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    response_mask = torch.zeros(shape, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    # Padding at a row's end counts on from 0 as one more (unread) sequence, so it never joins a real one.
    position_ids = (torch.arange(width) - (width - torch.tensor(free))[:, None]).clamp(min=0)
    sequence_ends = torch.empty(len(sequences), dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        row, start = placement[i]
        end = start + len(ids)
        input_ids[row, start:end] = torch.tensor(ids)
        position_ids[row, start:end] = torch.arange(len(ids))
        response_mask[row, start + max(prompt_length, 1) : end] = 1
        sequence_ids[row, start:end] = i
        sequence_ends[i] = row * width + end - 1
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "response_mask": response_mask,
        "sequence_ids": sequence_ids,
        "sequence_ends": sequence_ends,
    }


@dataclass
class PairCollator:
    pad_token_id: int
    padding_side: str = "right"
    packing: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [row["chosen_input_ids"] for row in rows] + [row["rejected_input_ids"] for row in rows]
        prompt_lengths = [row["prompt_length"] for row in rows] * 2
        if self.packing:
            batch = pack_rows(sequences, prompt_lengths, self.pad_token_id)
        else:
            batch = pad_rows(sequences, prompt_lengths, self.pad_token_id, self.padding_side)
        for column in PAIR_COLUMNS:
            if column in rows[0]:
                batch[column] = torch.tensor([row[column] for row in rows], dtype=torch.float32)
        return batch
