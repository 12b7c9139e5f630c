"""Preference data: readers and row rules (`formats`, `converters`, `sources`, `builtin`), `--data`
values with mixtures and splits and the bad rows they skip (`load`), tokenisation with truncation
counts (`tokenize`), batching (`collator`), and data-set statistics (`stats`).

    from hafrm.data import load_data, write_skipped_rows
    pairs, reports = load_data("pairs.jsonl", skip_bad_rows=True)
    write_skipped_rows(reports, "run/skipped-rows.jsonl")   # every skipped row: row, line, field, reason
"""

from __future__ import annotations

import random

from .collator import PairCollator
from .formats import BadRow, DataError, FilteredRow, PreferencePair
from .load import BUILTIN, LoadReport, SkippedRow, load_data, read_pairs, write_skipped_rows
from .tokenize import TruncationReport, tokenize_pairs

__all__ = [
    "BUILTIN",
    "BadRow",
    "DataError",
    "FilteredRow",
    "LoadReport",
    "PairCollator",
    "PreferencePair",
    "SkippedRow",
    "TruncationReport",
    "load_data",
    "read_pairs",
    "split_validation",
    "tokenize_pairs",
    "write_skipped_rows",
]


def split_validation(pairs: list[PreferencePair], fraction: float, seed: int):
    """Carve a validation set off `pairs` with a fixed seed -> (train, validation)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_validation = max(1, round(len(pairs) * fraction))
    if n_validation >= len(pairs):
        raise ValueError(f"{len(pairs)} pairs are too few to carve a validation set from")
    held_out = set(order[:n_validation])
    train = [pair for i, pair in enumerate(pairs) if i not in held_out]
    validation = [pair for i, pair in enumerate(pairs) if i in held_out]
    return train, validation
