"""Many token sequences -> the heads' outputs, batched for inference: longest first, prompts shared.

    from hafrm.inference import score_sequences
    scores = score_sequences(model, sequences, prompt_lengths, rows=16, pad_token_id=pad)
    scores["rewards"], scores["logps"], scores["lengths"]        # CPU [N] each, in input order

What every reader of a model's heads runs (`hafrm.scoring`, `hafrm eval`'s pairs, the frozen-prefix
states); the model call is `model.forward_rows`.
"""

from __future__ import annotations

import torch
from torch import nn

from .data.collator import lay_out_rows, pad_rows, unit_tokens
from .layout import shared_rows_verified
from .model import forward_rows

Tensor = torch.Tensor


def _to(batch: dict, device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


# A unit of shared-prompt sequences in scoring holds at most this many tokens (or its longest member).
SHARED_UNIT_TOKENS = 4096


# Full texts (no prompt length known: OpenRLHF's /get_reward, `hafrm score --text`) are grouped when they share at
# least this many leading tokens: a rollout group's G completions of one prompt, sent as G whole texts. (A chat
# template's system prompt alone, shared by every text, is about 20-30 tokens: not worth a group of its own.)
MIN_SHARED_PREFIX = 32


def _shared_prefix(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    k = 0
    while k < limit and a[k] == b[k]:
        k += 1
    return k


def _full_text_runs(sequences: list[list[int]], indices: list[int], min_shared: int) -> list[tuple[int, list[int]]]:
    """Full texts -> (shared prefix length, members) runs of neighbours in token order.

    A text joins the run before it while the run then still shares `min_shared` tokens and the tokens it saves,
    (members - 1) · shared prefix, do not fall: texts of one prompt stay together, and a prefix that every text
    has (a system prompt) does not pull two prompts' groups into one.
    """
    order = sorted(indices, key=lambda i: sequences[i])  # texts with a common prefix sit next to each other
    runs: list[tuple[int, list[int]]] = []
    for i in order:
        if runs:
            prefix, members = runs[-1]
            shared = min(prefix, _shared_prefix(sequences[members[-1]], sequences[i]))
            if shared >= min_shared and shared * len(members) >= prefix * (len(members) - 1):
                runs[-1] = (shared, [*members, i])
                continue
        runs.append((len(sequences[i]), [i]))
    return [(prefix if len(members) > 1 else 0, sorted(members)) for prefix, members in runs]


def prompt_groups(
    sequences: list[list[int]],
    prompt_lengths: list[int],
    max_tokens: int = SHARED_UNIT_TOKENS,
    min_shared: int = MIN_SHARED_PREFIX,
):
    """Sequences that share their leading tokens, in groups of at most `max_tokens` with those tokens counted once.

    Sequences with a prompt length group by their prompt tokens; full texts (prompt length 0) by the longest
    prefix neighbours in token order share, when it is `min_shared` tokens or more (the tokens laid out once
    are then whatever every member shares: `data.collator.common_prefix`). -> groups of indices, input order
    within each; a sequence that shares nothing is a group of its own.
    """
    by_prompt: dict[tuple, list[int]] = {}
    full = []
    for i, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        if prompt_length:
            by_prompt.setdefault(tuple(ids[:prompt_length]), []).append(i)
        else:
            full.append(i)
    units = [(len(key), members) for key, members in by_prompt.items()]
    units += _full_text_runs(sequences, full, min_shared) if full else []
    groups = []
    for prompt, members in sorted(units, key=lambda unit: unit[1][0]):
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

    device = next(model.parameters()).device
    heads = {"need_rewards": need_rewards, "need_logps": need_logps}
    groups = prompt_groups(sequences, prompt_lengths) if share_prompts else [[i] for i in range(len(sequences))]
    if not any(len(group) > 1 for group in groups) or not shared_rows_verified(
        model, sequences, prompt_lengths, groups, **heads
    ):
        groups = [[i] for i in range(len(sequences))]
    size = {id(g): unit_tokens([sequences[i] for i in g]) for g in groups}
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
