"""How hafrm writes its own files: never through a symbolic link, atomically, and with one line on a full disk.

    from hafrm.writes import atomic_write_text, open_no_follow, writing
    atomic_write_text("runs/x/hafrm.json", text)              # a link at that name (or its .partial) is refused
    with writing("checkpoint runs/x/checkpoint-4", "runs/x", needed_bytes=2 * 2**30):
        save(...)                                             # ENOSPC -> DiskFullError: the disk is full ...

Why: hafrm often runs as root on shared GPU machines, where a link planted at a lock or record name
would make it truncate whatever file the link points to; and a full disk surfaces from torch or
safetensors as an internal error ("unexpected pos 82368 vs 82256") that names neither the disk nor the path.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

# Errors that mean "no room": the disk, or the user's quota on it.
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# What torch's and safetensors' writers say when a write came up short (they drop the errno).
_FULL_WORDS = ("no space left", "unexpected pos", "quota exceeded", "disk full")
# Below this much free space a failed write is taken to be a full disk even when the error hides it.
_NEARLY_FULL = 64 * 2**20


class DiskFullError(OSError):
    """A write failed because the disk (or the quota) is full; the message says where and how much was needed."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28] " prefix
        return self.strerror or super().__str__()


class LinkRefused(ValueError):
    """hafrm was about to write one of its own files through a symbolic link."""


def mebibytes(n: int | float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk holding `path` (or its nearest existing parent); None where it cannot be asked."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(error: BaseException, path: str | Path | None = None) -> bool:
    """Whether `error` (or what caused it) is a full disk: ENOSPC / EDQUOT, or a short write on a nearly full disk."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        if any(words in str(seen).lower() for words in _FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(path) if path is not None else None
    return free is not None and free < _NEARLY_FULL and isinstance(error, (OSError, RuntimeError))


def disk_full_message(what: str, path: str | Path, needed_bytes: int | None = None, after: str = "") -> str:
    free = free_bytes(path)
    needed = f"about {mebibytes(needed_bytes)} needed, " if needed_bytes else ""
    left = f"{mebibytes(free)} free" if free is not None else "free space unknown"
    return f"the disk is full: could not write {what} ({needed}{left} on the disk of {path}){after}"


@contextmanager
def writing(what: str, path: str | Path, needed_bytes: int | None = None, after: str = ""):
    """Turn a full disk inside the block into a one-line DiskFullError; other errors pass as they are.

    `what` names the file or directory being written, `path` where it goes, `needed_bytes` how much it
    takes (an estimate is fine), `after` what is left usable and what to do.
    """
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError, ValueError) as error:  # torch: RuntimeError; safetensors: SafetensorError
        if not is_disk_full(error, path):
            raise
        raise DiskFullError(errno.ENOSPC, disk_full_message(what, path, needed_bytes, after)) from error


def refuse_link(path: str | Path) -> None:
    """LinkRefused where `path` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise LinkRefused(
            f"{path} is a symbolic link (to {os.readlink(path)}); hafrm writes its own files only, never through "
            "a link: remove the link"
        )


def open_no_follow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symbolic link at `path` (O_NOFOLLOW) with a message naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            refuse_link(path)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a new temporary sibling and a rename: readers see the old or the new file.

    Neither the sibling nor `path` is followed if it is a link: the sibling is made afresh (O_EXCL after an
    unlink, which removes a link, not its target) and the rename replaces `path` itself. How every hafrm
    bookkeeping file is written: run records, checkpoint manifests, the started run's record.
    """
    path = Path(path)
    refuse_link(path)
    partial = path.with_name(f".{path.name}.partial")
    with writing(str(path), path.parent):
        partial.unlink(missing_ok=True)
        handle = open_no_follow(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise


def reserve(path: str | Path, what: str, after: str = "") -> None:
    """Claim the disk blocks of a file made sparse (a numpy memmap) now, so that a full disk is a DiskFullError
    here and not a SIGBUS later, when a page of the mapping is written."""
    size = os.path.getsize(path)
    with writing(what, Path(path).parent, size, after):
        handle = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle, 0, size)
        finally:
            os.close(handle)
