"""hafrm.writes: hafrm's own files are never written through a link; a full disk is one line that says so."""

import errno
import os

import numpy as np
import pytest

from hafrm.writes import (
    DiskFullError,
    LinkRefused,
    atomic_write_text,
    disk_full_message,
    is_disk_full,
    open_no_follow,
    reserve,
    writing,
)


def test_a_record_written_over_a_planted_partial_link_leaves_the_link_target_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".hafrm.json.partial").symlink_to(victim)
    atomic_write_text(tmp_path / "hafrm.json", '{"method": "haf"}\n')
    assert victim.read_text() == "precious"
    assert (tmp_path / "hafrm.json").read_text() == '{"method": "haf"}\n'
    assert not (tmp_path / ".hafrm.json.partial").exists()


def test_a_record_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "hafrm.json").symlink_to(victim)
    with pytest.raises(LinkRefused) as refused:
        atomic_write_text(tmp_path / "hafrm.json", "{}\n")
    assert str(refused.value) == (
        f"{tmp_path / 'hafrm.json'} is a symbolic link (to {victim}); hafrm writes its own files only, never "
        "through a link: remove the link"
    )
    assert victim.read_text() == "precious"


def test_open_no_follow_refuses_a_dangling_link_too(tmp_path):
    (tmp_path / ".hafrm.lock").symlink_to(tmp_path / "nowhere")
    with pytest.raises(LinkRefused):
        open_no_follow(tmp_path / ".hafrm.lock", os.O_RDWR | os.O_CREAT)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    "error, full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 82368 vs 82256"), True),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (RuntimeError("CUDA out of memory"), False),
    ],
)
def test_a_full_disk_is_told_from_other_failures(tmp_path, error, full):
    assert is_disk_full(error, tmp_path) is full


def test_a_full_disk_inside_writing_becomes_one_line_with_what_where_and_how_much(tmp_path, monkeypatch):
    monkeypatch.setattr("hafrm.writes.free_bytes", lambda path: 3 * 2**20)
    with pytest.raises(DiskFullError) as full:
        with writing("checkpoint runs/x/checkpoint-4", tmp_path, needed_bytes=512 * 2**20, after="; try again"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 82368 vs 82256")
    message = full.value.strerror
    assert message == (
        f"the disk is full: could not write checkpoint runs/x/checkpoint-4 (about 512 MiB needed, 3 MiB free on "
        f"the disk of {tmp_path}); try again"
    )
    assert "\n" not in message
    assert (
        disk_full_message("x", tmp_path)
        == f"the disk is full: could not write x (3 MiB free on the disk of {tmp_path})"
    )


def test_other_errors_pass_through_writing_unchanged(tmp_path):
    with pytest.raises(PermissionError):
        with writing("x", tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_reserve_claims_a_memmap_s_blocks_and_says_when_they_do_not_fit(tmp_path, monkeypatch):
    path = tmp_path / "states.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(256, 64))
    reserve(path, "the states")
    assert os.stat(path).st_blocks * 512 >= 256 * 64 * 4  # no longer sparse

    def full(handle, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskFullError) as refused:
        reserve(path, "the states", "; nothing was trained yet")
    assert refused.value.strerror.startswith("the disk is full: could not write the states (about 64 KiB needed, ")
    assert refused.value.strerror.endswith("; nothing was trained yet")
