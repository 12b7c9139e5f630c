"""Reference-policy log-probs for DPO-style losses, without a second model in memory.

    from hafrm.reference import add_reference_logps
    train_set = add_reference_logps(model, train_set, collator, batch_size=8)

Modes:
  cache     (default) log π_ref(y|x) of every chosen and rejected response is computed once, with
            the model as it is before training (LoRA adapters disabled), and stored under the hafrm
            cache keyed by a fingerprint of the weights and of the token ids, so a second run on the
            same model, data and tokenisation reuses it.
  adapters  LoRA only: computed on the fly each step with the adapters disabled (no disk, costs one
            extra no-grad forward pass per step).
Losses that need no reference (rm, simpo, sft, grm-sft, dpo-noref) compute nothing here, in either mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

import torch
from tqdm.auto import tqdm

from .default_model import cache_root
from .model import SCORE_HEAD, hybrid_forward
from .writes import disk_full_message, is_disk_full

logger = logging.getLogger(__name__)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of every policy parameter's name, shape and value sums: cheap, and changes with any step.

    The reward head is left out: it does not touch log-probs and is freshly initialised per seed.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[0] == SCORE_HEAD:
                continue
            values = param.detach().float()
            digest.update(
                f"{name}{tuple(param.shape)}{values.sum().item():.6e}{values.abs().sum().item():.6e}".encode()
            )
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset) -> str:
    digest = hashlib.sha256()
    for chosen, rejected, prompt_length in zip(
        dataset["chosen_input_ids"], dataset["rejected_input_ids"], dataset["prompt_length"]
    ):
        digest.update(f"{chosen}|{rejected}|{prompt_length};".encode())
    return digest.hexdigest()[:16]


def adapters_disabled(model: torch.nn.Module):
    """Context in which a PeftModel (also inside DDP / FSDP) runs as its base model; a no-op for plain models."""
    from accelerate.utils import extract_model_from_parallel

    disable = getattr(extract_model_from_parallel(model), "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


@torch.no_grad()
def compute_reference_logps(model, dataset, collator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of chosen and rejected, [N] each, under the model as it is now."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    device = next(model.parameters()).device
    with adapters_disabled(model):
        for start in tqdm(range(0, len(dataset), batch_size), desc="reference log-probs", unit="batch"):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(device) for key, value in batch.items()}
            out = hybrid_forward(model, batch, need_rewards=False, need_logps=True)
            chosen.append(out.chosen_logps.cpu())
            rejected.append(out.rejected_logps.cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


CACHE_VERSION = 3  # bump when what a cache file holds, or how it is computed, changes


def sequences_fingerprint(sequences: list[list[int]], prompt_lengths: list[int]) -> str:
    digest = hashlib.sha256()
    for ids, prompt_length in zip(sequences, prompt_lengths):
        digest.update(f"{prompt_length}:{','.join(map(str, ids))};".encode())
    return digest.hexdigest()[:16]


def _tensor_digest(logps: torch.Tensor) -> str:
    return hashlib.sha256(logps.numpy().tobytes()).hexdigest()


def read_cache(path, rows: int, key: str) -> torch.Tensor | None:
    """A cache file's log-probs [rows] when it is whole and what was asked for; a one-line note and None otherwise."""
    try:
        cached = torch.load(path, weights_only=True)
        logps = cached["logps"]
        problem = None
        if cached.get("key") != key:
            problem = "it was written for another model, data or settings"
        elif logps.shape != (rows,):
            problem = f"it holds {tuple(logps.shape)} log-probs for {rows} sequences"
        elif cached.get("sha256") != _tensor_digest(logps):
            problem = "its checksum does not match"
        elif not torch.isfinite(logps).all():
            problem = "it holds non-finite log-probs"
    except Exception as error:  # a truncated or foreign file: torch.load raises many types
        problem = f"it cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    if problem:
        print(f"note: reference cache {path} is unusable ({problem}); recomputing it")
        return None
    return logps


def write_cache(path, logps: torch.Tensor, key: str) -> None:
    """Write through a temporary file and a rename; a failed write (full disk) warns and keeps the values."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"logps": logps, "key": key, "sha256": _tensor_digest(logps)}, partial)
        partial.replace(path)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        partial.unlink(missing_ok=True)
        after = "; going on without caching it"
        size = logps.numel() * logps.element_size()
        reason = (
            disk_full_message(f"the reference cache {path}", path.parent, size, after)
            if is_disk_full(error, path)
            else f"could not write the reference cache {path} ({error}){after}"
        )
        print(f"warning: {reason}")


def reference_key(model, sequences: list[list[int]], prompt_lengths: list[int]) -> str:
    """What the log-probs depend on: the weights, the token ids, the dtype, and how hafrm computes them."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return f"{model_fingerprint(model)}-{sequences_fingerprint(sequences, prompt_lengths)}-{dtype}-v{CACHE_VERSION}"


def cached_reference_logps(model, sequences, prompt_lengths, compute, use_cache: bool = True) -> torch.Tensor:
    """log π_ref of each sequence's response [N], from the one disk cache when it is whole, else `compute()`.

    The one place reference log-probs are kept: training's pairs, `hafrm eval`'s pairs and every
    implicit reward `hafrm.scoring` reads (best-of-N, rlhf, score) go through it, keyed by the weights and
    the token ids, so a second reader of the same base and texts reuses the pass.
    """
    if not use_cache:
        return compute().float().cpu()
    key = reference_key(model, sequences, prompt_lengths)
    path = cache_root() / "reference" / f"{key}.pt"
    cached = read_cache(path, len(sequences), key) if path.is_file() else None
    if cached is not None:
        logger.info("reusing reference log-probs from %s", path)
        return cached
    logps = compute().float().cpu()
    write_cache(path, logps, key)
    return logps


def add_reference_logps(model, dataset, collator, batch_size: int, use_cache: bool = True, compute=None):
    """`dataset` with `ref_chosen_logps` / `ref_rejected_logps` columns, through `cached_reference_logps`.

    `compute(model, dataset)` -> (chosen, rejected) replaces the collator's pass where the caller has a
    cheaper exact one (evaluation from stored frozen-block states).
    """
    from .data.tokenize import pair_sequences

    sequences, prompt_lengths = pair_sequences(dataset)

    def pass_over_pairs():
        if compute is not None:
            return torch.cat(compute(model, dataset))
        return torch.cat(compute_reference_logps(model, dataset, collator, batch_size))

    logps = cached_reference_logps(model, sequences, prompt_lengths, pass_over_pairs, use_cache)
    chosen, rejected = logps[: len(dataset)], logps[len(dataset) :]
    dataset = dataset.remove_columns(
        [c for c in ("ref_chosen_logps", "ref_rejected_logps") if c in dataset.column_names]
    )
    return dataset.add_column("ref_chosen_logps", chosen.tolist()).add_column("ref_rejected_logps", rejected.tolist())
