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
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from .model import forward_rows, position_ids_from_mask, transformer_blocks, unwrap
from .writes import reserve

CACHE_FILE = "frozen-prefix.f32"
STORE_VERSION = 1  # bump when what a stored file holds, or how it is computed, changes
# Config fields that decide what the embeddings and lower blocks compute (beside their weights).
ARCHITECTURE_FIELDS = (
    "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "rope_theta", "rope_scaling", "rms_norm_eps", "layer_norm_eps", "attention_bias", "sliding_window",
)  # fmt: skip
# The cache stays in RAM while it takes at most this share of the memory available, else goes to disk.
RAM_SHARE = 0.25


class _StopAfterLastFrozenBlock(Exception):
    pass


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
    def build(
        cls, model, n_frozen: int, datasets: list, workdir: str | Path, batch_size: int = 8, say=print, shared=False
    ):
        """Run the lower blocks once over every sequence of `datasets` -> (cache, datasets with a `cache_row` column).

        `shared`: read the states from, or leave them in, the hafrm cache (`StoredFrozenStates`), where other
        runs with the same frozen blocks and sequences find them; `close` leaves that file in place.
        """
        hidden = unwrap(model).config.get_text_config().hidden_size
        # row-major over the datasets, numbered on: sequence k is the chosen (k even) or rejected (k odd) of row k // 2
        sequences = [ids for dataset in datasets for pair in zip(*_sides(dataset)) for ids in pair]
        n_rows = len(sequences) // 2
        flat_lengths = torch.tensor([len(ids) for ids in sequences], dtype=torch.long)
        ends = flat_lengths.cumsum(0)
        offsets = (ends - flat_lengths).reshape(n_rows, 2)
        total = int(ends[-1]) if len(ends) else 0
        nbytes = total * hidden * 4
        path = None
        began = time.perf_counter()
        if shared:
            stored = StoredFrozenStates.load_or_build(model, n_frozen, sequences, batch_size, say=say)
            states, seconds = stored.states, time.perf_counter() - began
            if not stored.built:
                say(f"frozen-prefix cache: read from {stored.path} ({len(sequences)} sequences, {total} tokens)")
        elif nbytes > RAM_SHARE * _available_memory():
            path = Path(workdir) / CACHE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            states = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, hidden))
            reserve(
                path,
                f"the frozen-prefix cache {path}",
                "; nothing was trained yet: free space, or pass --no-prefix-cache",
            )
        else:
            states = torch.empty(total, hidden, dtype=torch.float32)
        if not shared:
            run_lower_blocks(model, n_frozen, sequences, states, offsets.view(-1), batch_size)
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
        starts = torch.cat([self.offsets[rows, 0], self.offsets[rows, 1]])  # [2B], where each sequence begins
        return gather_states(self.states, starts, batch)

    def collate(self, batch: dict) -> dict:
        """A collated batch (with `cache_row`) plus the cached states in its layout and the count of blocks they skip."""
        return {**batch, "frozen_states": self.batch_states(batch), "frozen_blocks": torch.tensor(self.n_frozen)}

    def close(self) -> None:
        """Drop the states; the file on disk, if any, goes with them."""
        self.states = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class StoredFrozenStates:
    """The frozen lower blocks' output for a list of sequences, on disk, shared by every run with those blocks.

        frozen = StoredFrozenStates.load_or_build(model, n_frozen=28, sequences=ids)
        score_sequences(model, ids, ..., frozen=frozen)       # only the trained top blocks and the heads run

    Every `--finetune freeze` run of one base model with the same number of frozen blocks keeps that
    base's embeddings and lower blocks, so the states those blocks give a test set are the same for all
    of them: the first evaluation computes them, the others read them. The file is named by a digest of
    the embeddings' and lower blocks' weights, the architecture, the dtype and the token ids
    (`cache_root()/frozen-prefix/KEY.npy`); it is written under a temporary name and renamed when whole.
    """

    def __init__(self, states, starts: torch.Tensor, n_frozen: int, path: Path):
        self.states = states  # numpy memmap [total tokens, H]
        self.starts = starts  # [S]: where each sequence's states begin
        self.n_frozen = n_frozen
        self.path = path
        self.built = False  # computed by this call (else read from the file)

    @classmethod
    def load_or_build(cls, model, n_frozen: int, sequences: list[list[int]], batch_size: int = 8, root=None, say=print):
        from .default_model import cache_root

        lengths = torch.tensor([len(ids) for ids in sequences], dtype=torch.long)
        starts = lengths.cumsum(0) - lengths
        hidden = unwrap(model).config.get_text_config().hidden_size
        shape = (int(lengths.sum()), hidden)
        key = states_key(model, n_frozen, sequences)
        path = Path(root or cache_root()) / "frozen-prefix" / f"{key}.npy"
        if path.is_file():
            try:
                states = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                say(f"note: stored frozen-block states {path} are unreadable ({error}); computing them again")
            else:
                if states.shape == shape and states.dtype == np.float32:
                    return cls(states, starts, n_frozen, path)
                say(
                    f"note: stored frozen-block states {path} have shape {states.shape}, not {shape}; computing them again"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        began = time.perf_counter()
        try:
            states = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
            reserve(
                partial,
                f"the frozen-prefix states {path}",
                "; nothing was trained yet: free space, or pass --no-share-prefix-cache",
            )
            run_lower_blocks(model, n_frozen, sequences, states, starts, batch_size)
            states.flush()
            del states
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        say(
            f"frozen-prefix states: blocks 1-{n_frozen} run over {len(sequences)} sequences ({shape[0]} tokens) in "
            f"{time.perf_counter() - began:.1f} s; {shape[0] * hidden * 4 / 2**20:.0f} MiB kept at {path} for other runs"
        )
        stored = cls(np.load(path, mmap_mode="r"), starts, n_frozen, path)
        stored.built = True
        return stored

    def gather(self, members: list[int], batch: dict) -> dict:
        """`batch` (rows of the sequences `members`, in that order) with the states in its layout added."""
        starts = self.starts[torch.as_tensor(members, dtype=torch.long)]
        return {
            **batch,
            "frozen_states": gather_states(self.states, starts, batch),
            "frozen_blocks": torch.tensor(self.n_frozen),
        }

    @torch.no_grad()
    def error(self, model, sequences: list[list[int]], prompt_lengths: list[int], **heads) -> float:
        """Largest relative difference between the heads' outputs on the first two sequences run whole and from the states."""
        from .data.collator import pad_rows

        members = list(range(min(2, len(sequences))))
        batch = pad_rows(
            [sequences[i] for i in members],
            [prompt_lengths[i] for i in members],
            unwrap(model).config.pad_token_id,
            "right",
        )
        return whole_against_cached(model, batch, self.gather(members, batch), heads)


def states_key(model, n_frozen: int, sequences: list[list[int]]) -> str:
    """Digest of what the lower `n_frozen` blocks' output depends on: their weights (and the embeddings'), the
    architecture, the dtype and the token ids."""
    causal_lm = unwrap(model)
    config = causal_lm.config.get_text_config()
    digest = hashlib.sha256(f"v{STORE_VERSION};{n_frozen};".encode())
    digest.update(repr([(name, getattr(config, name, None)) for name in ARCHITECTURE_FIELDS]).encode())
    modules = [causal_lm.get_input_embeddings(), *list(transformer_blocks(causal_lm))[:n_frozen]]
    with torch.no_grad():
        for index, module in enumerate(modules):
            for name, param in module.named_parameters():
                values = param.detach().float()
                digest.update(
                    f"{index}.{name}{tuple(param.shape)}{param.dtype}"
                    f"{values.sum().item():.8e}{values.abs().sum().item():.8e}{values.square().sum().item():.8e}".encode()
                )
    for ids in sequences:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b";")
    return digest.hexdigest()[:24]


@torch.no_grad()
def run_lower_blocks(model, n_frozen: int, sequences: list[list[int]], states, starts: torch.Tensor, batch_size: int):
    """Write the output of block `n_frozen` for every token of `sequences` into `states` [total, H] at `starts` [S].

    Sequences run longest first, 2 x batch_size per pass, padded on the right; the forward is stopped
    by a hook once the last frozen block has run. `states` is a float32 tensor or a numpy memmap.
    """
    from tqdm.auto import tqdm

    from .data.collator import pad_rows

    causal_lm = unwrap(model)
    pad = causal_lm.config.pad_token_id
    device = next(model.parameters()).device
    captured = {}

    def stop(_module, _args, output):
        captured["states"] = output[0] if isinstance(output, tuple) else output
        raise _StopAfterLastFrozenBlock

    hook = transformer_blocks(causal_lm)[n_frozen - 1].register_forward_hook(stop)
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
    on_disk = not isinstance(states, torch.Tensor)
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
                begin, length = int(starts[k]), len(sequences[k])
                states[begin : begin + length] = values[j, :length].numpy() if on_disk else values[j, :length]
    finally:
        hook.remove()
        model.train(was_training)


def gather_states(states, starts: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-sequence states [total, H] laid out as `batch` lays out its tokens -> [R, L, H] (zeros at padding).

    `starts` [S] is where each of the batch's sequences begins in `states`: padded rows are sequences
    0..S-1 in row order; packed or shared rows say each token's sequence and position themselves.
    """
    if "sequence_ends" in batch:
        sequence, position = batch["sequence_ids"], batch["position_ids"]
    else:
        sequence = torch.arange(batch["input_ids"].shape[0])[:, None].expand_as(batch["input_ids"])
        sequence = sequence.masked_fill(batch["attention_mask"] == 0, -1)
        position = position_ids_from_mask(batch["attention_mask"])
    real = sequence >= 0
    index = (starts[sequence.clamp(min=0)] + position)[real]
    out = torch.zeros(*sequence.shape, states.shape[1], dtype=torch.float32)
    if isinstance(states, torch.Tensor):
        out[real] = states[index]
    else:
        out[real] = torch.from_numpy(np.asarray(states[index.numpy()]))
    return out


def _sides(dataset):
    return dataset["chosen_input_ids"], dataset["rejected_input_ids"]


def _available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


@torch.no_grad()
def cache_error(model, cache: FrozenPrefixCache, collator, row: dict, **heads) -> float:
    """Largest relative difference between the heads' outputs on one pair run whole and run from the cache."""
    return whole_against_cached(model, collator([row]), cache.collate(collator([row])), heads)


@torch.no_grad()
def whole_against_cached(model, batch: dict, cached_batch: dict, heads: dict) -> float:
    """Largest relative difference between the heads' outputs on `batch` run whole and on the same rows fed from states."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        whole = forward_rows(model, {key: value.to(device) for key, value in batch.items()}, **heads)
        cached = forward_rows(model, {key: value.to(device) for key, value in cached_batch.items()}, **heads)
    finally:
        model.train(was_training)
    return max(((a - b).abs() / (1 + b.abs())).max().item() for a, b in zip(cached[:2], whole[:2]) if a is not None)
