"""The run record, `hafrm.json`: what a saved hafrm model carries so that it can be loaded, scored and reproduced.

    from hafrm.runrecord import build_run_record, read_run_record, write_run_record
    record = build_run_record(cfg, reward_head=True, fingerprints={...})
    write_run_record("runs/haf", record)     # atomically; last in a final save
    run = read_run_record("runs/haf")        # fields an older record lacks come filled in (FILLED_IN)
    run["policy_loss"], run["beta"], run["simpo_gamma"]

Training writes it beside every checkpoint and, last, beside the final model: a directory that holds
it holds a complete model (`has_run_record`). `hafrm.rundir` writes the same record as hafrm-run.json
when a run starts and compares it on --resume; `hafrm export` copies it with what the export changed.
This module is its one writer and its one reader.

Fields:
    hafrm_version        the hafrm that trained the run
    base_model           the model training started from (TrainConfig.model): π_ref of the implicit reward
    reward_head          whether the model has the score head (rm, haf)
    data                 TrainConfig.data; "builtin" when unset
    fingerprints         sha256 prefixes of the base weights and of the training and validation data, and
                         the tokenizer's pad id: what --resume must find unchanged
    every other TrainConfig field but model, resume, overwrite and output_dir, as the run ran (method,
                         alpha, beta, policy_loss, simpo_gamma, reference: cache or adapters, max_length,
                         finetune, trainable_layers, ...):
                         packing and prompt_sharing are false where the check before training turned them off
    prefix_cache         whether the frozen-prefix cache ran (false where it was asked for and not used)
    reward_mean, reward_std
                         the reward's mean and std over the validation responses (reward-head runs with
                         validation), added when training ends
    exported_from, pad_converted_from
                         written by `hafrm export`, whose finetune is "lora-merged" for a merged LoRA run
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .config import TrainConfig
from .losses import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_POLICY_LOSS, DEFAULT_SIMPO_GAMMA
from .writes import atomic_write_text, refuse_link

RUN_RECORD = "hafrm.json"
# TrainConfig fields that say where a run went and how its directory was treated, not what ran.
NOT_RECORDED = frozenset({"model", "resume", "overwrite", "output_dir"})
# A record that lacks a field (written by hand, or before the field existed) is read as its run ran:
# with the loss defaults, and without the exact ways of computing that came later.
FILLED_IN = {
    "alpha": DEFAULT_ALPHA,
    "beta": DEFAULT_BETA,
    "policy_loss": DEFAULT_POLICY_LOSS,
    "simpo_gamma": DEFAULT_SIMPO_GAMMA,
    "packing": False,
    "prompt_sharing": False,
    "prefix_cache": False,
    "reward_head_type": "linear",
}


def build_run_record(cfg: TrainConfig, reward_head: bool, fingerprints: dict | None = None) -> dict:
    """A training run's record: its config as it ran, whether it has a reward head, what it read (`fingerprints`).

    `cfg` as the run ran: its data named (`hafrm.data.BUILTIN` where --data was not given), packing and
    prompt sharing as the checks before training left them.
    """
    record = {
        "hafrm_version": __version__,
        "base_model": cfg.model,
        "reward_head": reward_head,
        **{key: value for key, value in asdict(cfg).items() if key not in NOT_RECORDED},
    }
    if fingerprints is not None:
        record["fingerprints"] = fingerprints
    return record


def has_run_record(directory: str | Path) -> bool:
    """Whether `directory` holds a complete hafrm model (the record is written last)."""
    return (Path(directory) / RUN_RECORD).is_file()


# The files that hold a model's weights, one of each group being enough: a full model's, then an adapter's.
MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def has_weights(directory: str | Path) -> bool:
    """Whether `directory` holds weights: a run's records restored without them (scripts/study_records.py)
    tabulate, but cannot be loaded again."""
    return any((Path(directory) / name).is_file() for name in MODEL_WEIGHT_FILES + ADAPTER_WEIGHT_FILES)


def read_run_record(directory: str | Path, name: str = RUN_RECORD, fill_in: bool = True) -> dict:
    """The record in `directory`, with FILLED_IN's value for each field it lacks.

    fill_in=False: the record as written (what --resume compares). `name`: hafrm-run.json, the copy
    `hafrm.rundir` writes when a run starts.
    """
    path = Path(directory) / name
    refuse_link(path)  # a record is hafrm's own file: never read or replaced through a link
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a hafrm output directory: {name} is missing")
    record = json.loads(path.read_text())
    return {**FILLED_IN, **record} if fill_in else record


def write_run_record(directory: str | Path, record: dict, name: str = RUN_RECORD) -> None:
    """Written atomically, and last in a final save: its presence says the directory is complete."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(directory) / name, json.dumps(record, indent=2, sort_keys=True) + "\n")


def update_run_record(directory: str | Path, **values) -> None:
    """Add `values` to the record in `directory` (the validation reward moments, known when training ends)."""
    write_run_record(directory, {**read_run_record(directory, fill_in=False), **values})
