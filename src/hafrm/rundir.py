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
    .final-partial/           the final model while it is written; renamed into place file by file, record last
    hafrm.json ...            the final model, its run record written last (present: the run finished)

The directory is hafrm's alone: a directory that holds files but no hafrm run is refused, and so are a
filesystem root, the home directory and the working directory itself (`output_dir_problem`);
`--overwrite` removes only the names hafrm, the Trainer and peft write there (`OURS`). Lock and record
files are never opened through a symbolic link (`hafrm.writes`).

The run record's fields, and its one writer and reader, are `hafrm.runrecord`'s.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .runrecord import RUN_RECORD, has_run_record, read_run_record, write_run_record
from .writes import atomic_write_text, open_no_follow, refuse_link, writing

LOCK_FILE = ".hafrm.lock"
RUN_FILE = "hafrm-run.json"
CHECKPOINT_MANIFEST = "hafrm-checkpoint.json"
DISCARDED = "discarded"
FINAL_PARTIAL = ".final-partial"
# Every name hafrm writes at the top of an output directory (with the Trainer, transformers' save_pretrained
# and peft under it): the only entries --overwrite removes. Anything else there is the user's and stays.
OURS = (
    LOCK_FILE, RUN_FILE, RUN_RECORD, ".*.partial", FINAL_PARTIAL, "checkpoint-*", DISCARDED,
    "skipped-rows.jsonl", "frozen-prefix.f32", "eval-*.json", "runs",  # runs/: Trainer's tensorboard logs
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "training_args.bin",
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md", "LOADING.md",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
# Settings that do not change the numbers a run produces: free to change on --resume.
FREE_ON_RESUME = frozenset(
    {"resume", "overwrite", "output_dir", "report_to", "logging_steps", "eval_batch_size", "save_total_limit"}
    # exact ways to compute the same step (to float rounding), each checked against the plain forward
    | {"prompt_sharing", "prefix_cache", "share_prefix_cache", "attn_implementation"}
)
# Recorded for information, not identity.
NOT_IDENTITY = frozenset({"hafrm_version", "reward_mean", "reward_std", "train_pairs"})  # the data: its fingerprint
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


def is_ours(name: str) -> bool:
    """Whether an entry at the top of an output directory is one hafrm writes (`OURS`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OURS)


def output_dir_problem(path: str | Path) -> str | None:
    """Why `path` cannot be an output directory at all, or None (checked before anything loads).

    Refused: a filesystem root, the home directory, the working directory itself (an --overwrite there
    would clear what the user keeps beside), a file, a path under a file, a directory hafrm cannot write.
    """
    path = Path(path).expanduser()
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "is a filesystem root"
    if resolved == Path.home().resolve():
        return "is the home directory"
    if resolved == Path.cwd().resolve():
        return "is the working directory itself; name a directory inside it (runs/x)"
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        return "is a file, not a directory" if path.exists() else "is a broken symbolic link"
    if not existing.is_dir():
        return f"cannot be made: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} is not writable by this user"
    return None


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


def refused_files_message(checkpoint: Path, error: Exception) -> str:
    """Why --resume stopped at a checkpoint file that torch.load(weights_only=True) refuses, naming the files."""
    import torch

    refused = []
    # training_args.bin is a pickle Trainer writes and never loads
    loaded = [p for p in checkpoint.iterdir() if p.suffix in {".pt", ".pth", ".bin"} and p.name != "training_args.bin"]
    for path in sorted(loaded):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # an unpickling error, or a file that is no torch archive at all
            refused.append(path.name)
    named = ", ".join(refused) or "a file"
    reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"--resume {checkpoint}: torch refuses to load {named} with weights_only=True, which hafrm always asks for "
        f"({reason[:160]}): it holds Python objects besides tensors (written by other code, or changed since); "
        "resume from another checkpoint (--resume PATH) or start over with --overwrite"
    )


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- the lock ---------------------------------------------------------------------------------
    @contextmanager
    def hold(self):
        """Hold the directory's lock for the block; raise RunDirectoryError at once when another run holds it.

        An flock dies with its process, so a run killed with -9 never leaves a stale lock behind. The
        directory is checked first (`check_ours`): nothing is written into a directory that is not hafrm's.
        """
        self.check_ours()
        lock = self.path / LOCK_FILE
        while True:
            with writing(f"the lock file {lock}", self.path, after="; nothing was changed"):
                self.path.mkdir(parents=True, exist_ok=True)
                handle = os.fdopen(open_no_follow(lock, os.O_RDWR | os.O_CREAT), "r+")
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
            # The holder before us removes the file as it lets go: a lock on a file no longer at the path
            # guards nothing, so take the one that is there now.
            try:
                if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        try:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                with writing(f"the lock file {self.path / LOCK_FILE}", self.path, after="; nothing was changed"):
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
                    handle.flush()
            except BaseException:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
                raise
            yield self
        finally:
            if not handle.closed:
                lock.unlink(missing_ok=True)  # while still held: the next run takes a fresh file
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

    def entries(self) -> set[str]:
        """The names in the directory now (none where it does not exist)."""
        return {entry.name for entry in self.path.iterdir()} if self.path.is_dir() else set()

    def undo_unstarted(self, before: set[str]) -> list[str]:
        """After a run failed before it saved anything (no checkpoint, no final model): remove what it added
        since `before`, so that the corrected command is not refused for an unfinished run. -> the names removed.

        `skipped-rows.jsonl` stays: it lists the rows the run left out, which is what a user looks at next.
        """
        if self.checkpoints() or has_run_record(self.path) or not self.path.is_dir():
            return []
        removed = []
        for entry in sorted(self.path.iterdir()):
            if entry.name in before or entry.name in (LOCK_FILE, "skipped-rows.jsonl"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
        return removed

    def check_ours(self) -> None:
        """RunDirectoryError where the path cannot be an output directory (`output_dir_problem`), or where it is
        a directory that holds files but no hafrm run (hafrm does not write into, or clear, what is not its own)."""
        problem = output_dir_problem(self.path)
        if problem:
            raise RunDirectoryError(f"--output-dir {self.path} {problem}")
        for name in (LOCK_FILE, RUN_FILE, RUN_RECORD):
            refuse_link(self.path / name)
        if not self.path.is_dir() or self.recorded_run() is not None:
            return
        traces = (LOCK_FILE, ".*.partial", FINAL_PARTIAL, "skipped-rows.jsonl", "frozen-prefix.f32")  # a run that
        # stopped before its record was written leaves these only
        foreign = sorted(
            entry.name for entry in self.path.iterdir() if not any(fnmatch.fnmatchcase(entry.name, t) for t in traces)
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RunDirectoryError(
                f"--output-dir {self.path} holds files that are not a hafrm run ({shown}); hafrm writes only "
                "into an empty or new directory, or one of its own runs: choose another --output-dir"
            )

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
            kept = self.clear()
            left = f"; left in place, not hafrm's: {', '.join(kept)}" if kept else ""
            return [f"note: --overwrite: cleared {self.path} ({described}){left}"]
        if resume:
            return []
        raise RunDirectoryError(
            f"{self.path} already holds {self.describe()}; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --output-dir"
        )

    def clear(self) -> list[str]:
        """Delete what hafrm wrote (`OURS`) but the lock file (held by this process) -> the names left in place."""
        kept = []
        for entry in sorted(self.path.iterdir()):
            if entry.name == LOCK_FILE:
                continue
            if not is_ours(entry.name):
                kept.append(entry.name)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return kept

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

    def finished_at(self, checkpoint: Path | None) -> int | None:
        """The step count of a run that trained all its steps and saved its final model, resumed from `checkpoint`
        with the length it was started with; None otherwise (a run to continue, or to finish saving)."""
        state = checkpoint / "trainer_state.json" if checkpoint is not None else None
        if state is None or not state.is_file() or not has_run_record(self.path):
            return None
        try:
            values = json.loads(state.read_text())
            step, planned = int(values["global_step"]), int(values["max_steps"])
        except (ValueError, KeyError, TypeError):
            return None
        return step if step >= planned > 0 else None

    def start(self, record: dict) -> None:
        """Write the run record as RUN_FILE; a finished run's final one goes (it is written again at the end)."""
        write_run_record(self.path, record, name=RUN_FILE)
        (self.path / RUN_RECORD).unlink(missing_ok=True)


def move_into_place(partial: Path, directory: Path) -> None:
    """Move a model written in `partial` (a folder inside `directory`) up into `directory`, its run record last:
    each rename replaces one file at once, and the record's presence says the whole model is there."""
    entries = sorted(partial.iterdir(), key=lambda entry: entry.name == RUN_RECORD)
    for entry in entries:
        target = directory / entry.name
        refuse_link(target)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    partial.rmdir()
