"""One output directory, one run: the lock, the run's record, and which checkpoints are complete.

    from hafrm.rundir import RunDirectory
    with RunDirectory(cfg.output_dir).hold():                    # a second run there fails at once
        run_dir.prepare(resume=cfg.resume, overwrite=cfg.overwrite)
        start = run_dir.resume_point(cfg.resume)                 # newest complete checkpoint, or None
        run_dir.check_same_run(record, start)                    # --resume with changed data or flags stops

Layout of an output directory:
    .hafrm.lock               flock-ed while a run trains (holds the holder's pid, host and start time)
    hafrm-run.json            written when a run starts: its run record (settings and data fingerprints)
    checkpoint-N/             Trainer checkpoints with their run record; `hafrm-checkpoint.json` inside,
                              written last, lists every file's size and sha256: without it, incomplete
    discarded/checkpoint-N/   incomplete or corrupt checkpoints moved aside by --resume
    hafrm.json ...            the final model, its run record written last (present: the run finished)

The run record's fields, and its one writer and reader, are `hafrm.runrecord`'s.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .runrecord import RUN_RECORD, atomic_write_text, has_run_record, read_run_record, write_run_record

LOCK_FILE = ".hafrm.lock"
RUN_FILE = "hafrm-run.json"
CHECKPOINT_MANIFEST = "hafrm-checkpoint.json"
DISCARDED = "discarded"
# Settings that do not change the numbers a run produces: free to change on --resume.
FREE_ON_RESUME = frozenset(
    {"resume", "overwrite", "output_dir", "report_to", "logging_steps", "eval_batch_size", "save_total_limit"}
    # exact ways to compute the same step (to float rounding), each checked against the plain forward
    | {"prompt_sharing", "prefix_cache", "share_prefix_cache", "attn_implementation"}
)
# Recorded for information, not identity.
NOT_IDENTITY = frozenset({"hafrm_version", "reward_mean", "reward_std"})
# Extending (or shortening) a run on --resume is allowed: the steps already taken stay as they were,
# the learning-rate schedule is recomputed for the new length (said in a note).
LENGTH = ("max_steps", "epochs")


FINGERPRINTS = {
    "fingerprints.base_weights": "the base model's weights",
    "fingerprints.pad_token_id": "the tokenizer's pad token",
    "fingerprints.train_data": "the training data",
    "fingerprints.validation_data": "the validation data",
}


def _flat(record: dict) -> dict:
    """{"fingerprints": {"train_data": x}} -> {"fingerprints.train_data": x}; other values as they are."""
    flat = {}
    for key, value in record.items():
        if key == "fingerprints" and isinstance(value, dict):
            flat.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            flat[key] = value
    return flat


class RunDirectoryError(ValueError):
    """The output directory cannot take this run (in use, holds another run, or a changed resume)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost mount); the earlier ones are untouched."""


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def write_manifest(checkpoint: str | Path) -> None:
    """Mark a checkpoint complete: every file's size and sha256, written atomically after all of them."""
    checkpoint = Path(checkpoint)
    files = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != CHECKPOINT_MANIFEST):
        if path.name.startswith(".") and path.name.endswith(".partial"):
            continue
        files[str(path.relative_to(checkpoint))] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    atomic_write_text(checkpoint / CHECKPOINT_MANIFEST, json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why a checkpoint cannot be resumed from (incomplete, a file missing, changed or truncated), or None."""
    checkpoint = Path(checkpoint)
    manifest = checkpoint / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return f"incomplete (no {CHECKPOINT_MANIFEST}: the run stopped while writing it, or an older hafrm wrote it)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"its {CHECKPOINT_MANIFEST} is unreadable ({error})"
    for name, expected in sorted(files.items()):
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} changed after it was written (checksum mismatch)"
    return None


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- the lock ---------------------------------------------------------------------------------
    @contextmanager
    def hold(self):
        """Hold the directory's lock for the block; raise RunDirectoryError at once when another run holds it.

        An flock dies with its process, so a run killed with -9 never leaves a stale lock behind.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirectoryError(
                f"{self.path} is in use by another hafrm run ({holder}); wait for it to end, stop it, "
                "or choose another --output-dir"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
            handle.flush()
            yield self
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # --- what the directory holds -----------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """checkpoint-N directories, oldest first."""
        found = [p for p in self.path.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
        return sorted(found, key=checkpoint_step)

    def recorded_run(self) -> dict | None:
        """The run record of the run this directory holds (final, started or checkpointed), or None."""
        places = [(self.path, RUN_RECORD), (self.path, RUN_FILE)] + [(c, RUN_RECORD) for c in self.checkpoints()[::-1]]
        for directory, name in places:
            if (directory / name).is_file():
                try:
                    return read_run_record(directory, name, fill_in=False)
                except ValueError:
                    continue
        return {} if self.checkpoints() else None

    def describe(self) -> str:
        run = self.recorded_run() or {}
        what = f"a {run['method']} run" if "method" in run else "a run"
        checkpoints = self.checkpoints()
        state = "finished" if has_run_record(self.path) else "unfinished"
        if checkpoints:
            state += f", {len(checkpoints)} checkpoint(s), newest {checkpoints[-1].name}"
        return f"{what} ({state})"

    def prepare(self, resume: str | None, overwrite: bool) -> list[str]:
        """Refuse a directory holding another run unless resuming or overwriting -> notes to print."""
        if self.recorded_run() is None:
            return []
        if overwrite:
            described = self.describe()
            self.clear()
            return [f"note: --overwrite: cleared {self.path} ({described})"]
        if resume:
            return []
        raise RunDirectoryError(
            f"{self.path} already holds {self.describe()}; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --output-dir"
        )

    def clear(self) -> None:
        """Delete everything but the lock file (held by this process)."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # --- resuming ---------------------------------------------------------------------------------
    def resume_point(self, resume: str | None, main_process: bool = True) -> tuple[Path | None, list[str]]:
        """-> (the checkpoint to resume from or None for step 0, notes to print).

        `last` takes the newest complete checkpoint; incomplete or corrupt newer ones are moved to
        discarded/ (by the main process) with a warning naming what is wrong. An explicit checkpoint
        path must itself be complete.
        """
        if not resume:
            return None, []
        if resume not in {"last", "true", "True"}:
            problem = checkpoint_problem(resume) if Path(resume).is_dir() else "no such directory"
            if problem:
                raise RunDirectoryError(f"--resume {resume}: cannot resume from it: {problem}")
            return Path(resume), [f"resuming from {resume}"]
        notes = []
        for checkpoint in self.checkpoints()[::-1]:
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                return checkpoint, notes + [f"resuming from {checkpoint} (the newest complete checkpoint)"]
            target = self.path / DISCARDED / checkpoint.name
            if main_process:
                target.parent.mkdir(exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(checkpoint), str(target))
            notes.append(f"warning: skipped {checkpoint.name}: {problem}; moved to {target}")
        return None, notes + [f"note: no complete checkpoint in {self.path}: training starts from step 0"]

    def check_same_run(self, record: dict, checkpoint: Path | None) -> list[str]:
        """Stop a --resume whose run record (settings, data) differs from the checkpoint's or the started run's.

        -> notes: a changed run length is allowed and said.
        """
        directory, name = (checkpoint, RUN_RECORD) if checkpoint is not None else (self.path, RUN_FILE)
        if not (directory / name).is_file():
            return []
        recorded, wanted = _flat(read_run_record(directory, name, fill_in=False)), _flat(record)
        changed = {
            key: FINGERPRINTS[key] + " changed"
            if key in FINGERPRINTS
            else f"{key} {recorded[key]!r} -> {wanted[key]!r}"
            for key in sorted(set(recorded) & set(wanted))
            if key not in FREE_ON_RESUME | NOT_IDENTITY and recorded[key] != wanted[key]
        }
        refused = [text for key, text in changed.items() if key not in LENGTH]
        if refused:
            raise RunDirectoryError(
                f"--resume: {self.path} holds a run with other settings or data ({'; '.join(refused)}); "
                "resume with the settings it was started with, or pass --overwrite to start over"
            )
        return [
            f"note: --resume with {text}: the learning-rate schedule follows the new length"
            for text in changed.values()
        ]

    def start(self, record: dict) -> None:
        """Write the run record as RUN_FILE; a finished run's final one goes (it is written again at the end)."""
        write_run_record(self.path, record, name=RUN_FILE)
        (self.path / RUN_RECORD).unlink(missing_ok=True)
