"""Frozen-prefix cache for `--finetune freeze`: the frozen lower blocks run once per sequence, not once per epoch.

    cache = FrozenPrefixCache.build(model, n_frozen=28, datasets=[train_set, eval_set], workdir=output_dir)
    collator.prefix_cache = cache       # batches carry `frozen_states` [R, L, H]: the lower blocks' output
    forward_rows(model, batch, ...)     # runs the embeddings-free top: lower blocks skipped, states fed in

With the embeddings and the lower blocks frozen and dropout off, the output of the last frozen block
for a token depends on nothing but the tokens before it in its own sequence, so it is the same in
every epoch, in any batch and in any layout (padded, packed, shared prompts). The cache computes it
once (a forward pass stopped after the last frozen block) and keeps it per sequence, in RAM, or
memory-mapped on disk when it would take more than a quarter of the memory available. Each batch
then gathers its tokens' states into the batch's own layout, and the trunk runs from the first
trainable block on: the top blocks, the heads and the losses see exactly the inputs they would have
seen (to float rounding; checked on one pair before training, like packing, and turned off with a
note where a model does not give the same results, e.g. one that rescales its input embeddings).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model import forward_rows, position_ids_from_mask, trunk_of, unwrap

CACHE_FILE = "frozen-prefix.f32"
# The cache stays in RAM while it takes at most this share of the memory available, else goes to disk.
RAM_SHARE = 0.25


class _StopAfterLastFrozenBlock(Exception):
    pass


class SkippedBlock(nn.Module):
    """Stands in for a frozen block while the cache feeds its output: hands the hidden states through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def transformer_blocks(causal_lm: nn.Module) -> nn.ModuleList:
    from .finetune import transformer_blocks as find

    return find(trunk_of(causal_lm), causal_lm.config.get_text_config().num_hidden_layers)


@contextlib.contextmanager
def lower_blocks_skipped(model: nn.Module, n_frozen: int):
    """The trunk with its first `n_frozen` blocks handing their input through (their output comes from the cache)."""
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


class FrozenPrefixCache:
    """Per-sequence output of the last frozen block for every chosen and rejected sequence of some datasets.

    Rows of the datasets are numbered on from one set to the next (`cache_row` column); a batch's
    `cache_row` [B] and layout give each token's place in the cache.
    """

    def __init__(self, states, offsets: torch.Tensor, n_frozen: int, path: Path | None):
        self.states = states  # [total tokens, H]: a float32 tensor, or a numpy memmap on disk
        self.offsets = offsets  # [rows, 2]: where the chosen / rejected sequence of each row starts
        self.n_frozen = n_frozen
        self.path = path
        self.build_seconds = 0.0

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    @classmethod
    @torch.no_grad()
    def build(cls, model, n_frozen: int, datasets: list, workdir: str | Path, batch_size: int = 8, say=print):
        """Run the lower blocks once over every sequence of `datasets` -> (cache, datasets with a `cache_row` column)."""
        from tqdm.auto import tqdm

        from .data.collator import pad_rows

        causal_lm = unwrap(model)
        hidden = causal_lm.config.get_text_config().hidden_size
        pad = causal_lm.config.pad_token_id
        # row-major over the datasets, numbered on: sequence k is the chosen (k even) or rejected (k odd) of row k // 2
        sequences = [ids for dataset in datasets for pair in zip(*_sides(dataset)) for ids in pair]
        n_rows = len(sequences) // 2
        flat_lengths = torch.tensor([len(ids) for ids in sequences], dtype=torch.long)
        ends = flat_lengths.cumsum(0)
        offsets = (ends - flat_lengths).reshape(n_rows, 2)
        total = int(ends[-1]) if len(ends) else 0
        nbytes = total * hidden * 4
        path = None
        if nbytes > RAM_SHARE * _available_memory():
            path = Path(workdir) / CACHE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            states = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, hidden))
        else:
            states = torch.empty(total, hidden, dtype=torch.float32)
        device = next(model.parameters()).device
        captured = {}

        def stop(_module, _args, output):
            captured["states"] = output[0] if isinstance(output, tuple) else output
            raise _StopAfterLastFrozenBlock

        blocks = transformer_blocks(causal_lm)
        hook = blocks[n_frozen - 1].register_forward_hook(stop)
        was_training = model.training
        model.eval()
        began = time.perf_counter()
        order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
        try:
            for first in tqdm(range(0, len(order), 2 * batch_size), desc="frozen-prefix cache", unit="batch"):
                members = order[first : first + 2 * batch_size]
                batch = pad_rows([sequences[k] for k in members], [0] * len(members), pad, "right")
                mask = batch["attention_mask"].to(device)
                with contextlib.suppress(_StopAfterLastFrozenBlock):
                    model(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=mask,
                        position_ids=position_ids_from_mask(mask),
                        use_cache=False,
                    )
                values = captured.pop("states").float().cpu()
                for j, k in enumerate(members):
                    begin = int(offsets.view(-1)[k])
                    length = len(sequences[k])
                    if path is None:
                        states[begin : begin + length] = values[j, :length]
                    else:
                        states[begin : begin + length] = values[j, :length].numpy()
        finally:
            hook.remove()
            model.train(was_training)
        if path is not None:
            states.flush()
        where = f"memory-mapped at {path}" if path else "in RAM"
        seconds = time.perf_counter() - began
        say(
            f"frozen-prefix cache: blocks 1-{n_frozen} run once over {len(sequences)} sequences ({total} tokens) in "
            f"{seconds:.1f} s; {nbytes / 2**20:.0f} MiB {where}"
        )
        numbered, row_base = [], 0
        for dataset in datasets:
            numbered.append(dataset.add_column("cache_row", list(range(row_base, row_base + len(dataset)))))
            row_base += len(dataset)
        cache = cls(states, offsets, n_frozen, path)
        cache.build_seconds = seconds
        return cache, numbered

    def batch_states(self, batch: dict) -> torch.Tensor:
        """The cached states laid out as `batch` lays out its tokens -> [R, L, H] (zeros at padding)."""
        rows = batch["cache_row"]  # [B] pairs; sequence s is chosen of pair s (s < B) or rejected of pair s - B
        n_pairs = rows.shape[0]
        if "sequence_ends" in batch:  # packed or shared rows: each token's sequence and position are given
            sequence, position = batch["sequence_ids"], batch["position_ids"]
        else:  # padded: row s is sequence s; positions counted over real tokens
            sequence = torch.arange(batch["input_ids"].shape[0])[:, None].expand_as(batch["input_ids"])
            sequence = sequence.masked_fill(batch["attention_mask"] == 0, -1)
            position = position_ids_from_mask(batch["attention_mask"])
        real = sequence >= 0
        seq = sequence.clamp(min=0)
        starts = self.offsets[rows[seq % n_pairs], (seq >= n_pairs).long()]  # [R, L]
        index = (starts + position)[real]
        hidden = self.states.shape[1]
        out = torch.zeros(*sequence.shape, hidden, dtype=torch.float32)
        if self.path is None:
            out[real] = self.states[index]
        else:
            out[real] = torch.from_numpy(np.asarray(self.states[index.numpy()]))
        return out

    def collate(self, batch: dict) -> dict:
        """A collated batch (with `cache_row`) plus the cached states in its layout and the count of blocks they skip."""
        return {**batch, "frozen_states": self.batch_states(batch), "frozen_blocks": torch.tensor(self.n_frozen)}

    def close(self) -> None:
        """Drop the states; the file on disk, if any, goes with them."""
        self.states = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _sides(dataset):
    return dataset["chosen_input_ids"], dataset["rejected_input_ids"]


def _available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


@torch.no_grad()
def cache_error(model, cache: FrozenPrefixCache, collator, row: dict, **heads) -> float:
    """Largest relative difference between the heads' outputs on one pair run whole and run from the cache."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        batch = {key: value.to(device) for key, value in collator([row]).items()}
        whole = forward_rows(model, batch, **heads)
        cached_batch = {key: value.to(device) for key, value in cache.collate(collator([row])).items()}
        cached = forward_rows(model, cached_batch, **heads)
    finally:
        model.train(was_training)
    return max(((a - b).abs() / (1 + b.abs())).max().item() for a, b in zip(cached[:2], whole[:2]) if a is not None)
