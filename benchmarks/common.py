"""What the benchmarks share: the pairs, a step timer with a peak-memory sampler, the matmul peak.

Not a test helper: the benchmarks print figures and assert nothing about speed.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
SHARED_HH = REPO.parent / "shared" / "data" / "hh-harmless" / "train.jsonl.gz"


def default_data() -> str:
    if not SHARED_HH.is_file():
        raise SystemExit(f"{SHARED_HH} is absent: pass --data with a preference file hafrm reads")
    return str(SHARED_HH)


def select_pairs(data: str, tokenizer, max_length: int, count: int, skip_bad_rows: bool = True) -> tuple[list, dict]:
    """The first `count` pairs (file order) whose chosen and rejected fit `max_length` untruncated.

    Every trainer then sees the same text and none of them truncates or filters anything (TRL's
    RewardTrainer drops longer pairs; hafrm truncates them): the runs differ in the trainer only.
    -> (pairs, report {read, fitting, kept, real tokens, response tokens}).
    """
    from hafrm.data import load_data, tokenize_pairs

    pairs, _ = load_data(data, skip_bad_rows=skip_bad_rows)
    dataset, _ = tokenize_pairs(pairs, tokenizer, max_length=10**6)
    kept, tokens, response_tokens = [], 0, 0
    for pair, chosen, rejected, prompt_length in zip(
        pairs, dataset["chosen_input_ids"], dataset["rejected_input_ids"], dataset["prompt_length"]
    ):
        if max(len(chosen), len(rejected)) <= max_length:
            kept.append(pair)
            tokens += len(chosen) + len(rejected)
            response_tokens += len(chosen) + len(rejected) - 2 * prompt_length
        if len(kept) == count:
            break
    if len(kept) < count:
        raise SystemExit(f"{data}: only {len(kept)} pairs fit {max_length} tokens, {count} needed")
    fitting = sum(
        max(len(c), len(r)) <= max_length for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"])
    )
    report = {
        "read": len(pairs),
        "fitting": fitting,
        "kept": len(kept),
        "tokens": tokens,
        "response_tokens": response_tokens,
    }
    return kept, report


def as_messages(text, role: str) -> list[dict]:
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


def write_trl_file(pairs: list, path: Path) -> Path:
    """Pairs as TRL's conversational preference rows (prompt / chosen / rejected message lists)."""
    with open(path, "w", encoding="utf-8") as handle:
        for pair in pairs:
            row = {
                "prompt": as_messages(pair.prompt, "user"),
                "chosen": as_messages(pair.chosen, "assistant"),
                "rejected": as_messages(pair.rejected, "assistant"),
            }
            handle.write(json.dumps(row) + "\n")
    return path


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, and peak memory while training runs.

    Peak memory: on a GPU, torch's max allocated bytes since training began; on a CPU, the highest
    resident set size sampled every 5 ms (model, optimizer state and activations together).
    """

    def __init__(self):
        self.step_seconds: list[float] = []
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._started = 0.0

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, resident_bytes())
            time.sleep(0.005)

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_seconds.append(time.perf_counter() - self._started)

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._sampler.join()


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 dense-matmul rate of this machine, FLOP/s (the ceiling achieved rates are read against)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def spread(values: list[float]) -> str:
    """min / median / max, for a table cell."""
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"
