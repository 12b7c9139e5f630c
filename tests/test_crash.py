"""Crashes and corrupt state: kill -9, a full disk, damaged checkpoints and caches, then --resume.

Every resumed run must end with exactly the weights of the uninterrupted run (max abs diff 0).
"""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from hafrm.cli import main
from hafrm.config import TrainConfig
from hafrm.rundir import checkpoint_problem
from hafrm.train import train
from hafrm.writes import DiskFullError

WORKER = Path(__file__).parent / "crash_worker.py"
STEPS = 8
FLAGS = ("--method", "haf", "--max-steps", str(STEPS), "--eval-steps", "2", "--save-total-limit", "5")


@pytest.fixture(scope="module")
def argv(tiny_model, pairs_file, train_argv):
    """argv(output_dir, *extra): the run every test here interrupts, a fast haf run checkpointed every 2 steps."""
    return lambda output_dir, *extra: train_argv(tiny_model, pairs_file, output_dir, *FLAGS, *extra)


def max_weight_difference(a: Path, b: Path) -> float:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


@pytest.fixture(scope="module")
def uninterrupted(argv, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(argv(output_dir)) == 0
    return output_dir


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    assert max_weight_difference(resumed, uninterrupted) == 0.0  # the kept (best) model
    last = f"checkpoint-{STEPS}"
    assert max_weight_difference(resumed / last, uninterrupted / last) == 0.0  # and the last step's weights


def run_killed(point: str, at: int, args: list[str], env: dict | None = None) -> None:
    process = subprocess.run(
        [sys.executable, str(WORKER), point, str(at), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == -9, (
        f"expected a SIGKILL at {point} {at}: {process.stdout[-2000:]}{process.stderr[-3000:]}"
    )


def test_kill_at_a_random_step_then_resume_is_exact(uninterrupted, tmp_path, capsys, argv):
    step = random.randrange(2, STEPS + 1)
    output_dir = tmp_path / "run"
    run_killed("step", step, argv(output_dir))
    assert main(argv(output_dir, "--resume")) == 0, f"killed at step {step}"
    newest = 2 * ((step - 1) // 2)
    expected = f"resuming from {output_dir / f'checkpoint-{newest}'}" if newest else "training starts from step 0"
    assert expected in capsys.readouterr().out, f"killed at step {step}"
    assert_same_run(output_dir, uninterrupted)


def test_kill_during_a_checkpoint_write_resumes_from_the_one_before(uninterrupted, tmp_path, capsys, argv):
    output_dir = tmp_path / "run"
    run_killed("checkpoint", 6, argv(output_dir))
    assert (output_dir / "checkpoint-6" / "model.safetensors").is_file()  # written, but not the optimizer
    assert checkpoint_problem(output_dir / "checkpoint-6").startswith("incomplete")
    assert main(argv(output_dir, "--resume")) == 0
    out = capsys.readouterr().out
    assert "warning: skipped checkpoint-6: incomplete" in out
    assert f"resuming from {output_dir / 'checkpoint-4'} (the newest complete checkpoint)" in out
    assert_same_run(output_dir, uninterrupted)


def test_kill_during_the_reference_pass_then_resume_is_exact(uninterrupted, tmp_path, monkeypatch, capsys, argv):
    cache = tmp_path / "fresh-cache"  # a cache the uninterrupted run did not fill, so the pass really runs
    monkeypatch.setenv("HAFRM_CACHE", str(cache))
    output_dir = tmp_path / "run"
    run_killed("reference", 2, argv(output_dir), env={"HAFRM_CACHE": str(cache)})
    assert not list(cache.glob("reference/*.pt"))  # killed before the cache was written
    assert main(argv(output_dir)) == 1  # the started run is not silently replaced
    assert "already holds a haf run (unfinished); pass --resume" in capsys.readouterr().err
    assert main(argv(output_dir, "--resume")) == 0
    assert f"no complete checkpoint in {output_dir}: training starts from step 0" in capsys.readouterr().out
    assert_same_run(output_dir, uninterrupted)


def mount_tmpfs(path: Path, size_mb: int) -> bool:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


class FillDisk(transformers.TrainerCallback):
    """At step `at`, fill the file system of `filler` but for `leave` bytes (the next checkpoint fails)."""

    def __init__(self, filler: Path, at: int, leave: int):
        self.filler, self.at, self.leave = filler, at, leave

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            free = os.statvfs(self.filler.parent)
            size = free.f_bavail * free.f_frsize - self.leave
            with open(self.filler, "wb") as handle:
                handle.truncate(0)
                handle.write(b"\0" * max(size, 0))


def test_a_full_disk_stops_with_a_clear_error_and_keeps_the_checkpoint_before(
    tiny_model, pairs_file, uninterrupted, tmp_path, monkeypatch, capsys, argv
):
    disk = tmp_path / "disk"
    output_dir = disk / "out" / "run"
    mounted = mount_tmpfs(disk, 200)
    try:
        cfg = TrainConfig(
            model=tiny_model,
            data=str(pairs_file),
            output_dir=str(output_dir),
            method="haf",
            max_length=96,
            batch_size=4,
            lr=5e-3,
            max_steps=STEPS,
            eval_steps=2,
            logging_steps=1,
            save_total_limit=5,
        )
        if mounted:  # a real full file system: 1 MB left when checkpoint-4 is written
            callbacks = [FillDisk(disk / "filler", at=3, leave=1 << 20)]
        else:  # no permission to mount: the write itself fails as a full disk makes it fail
            original = transformers.Trainer._save_optimizer_and_scheduler

            def full_disk(self, directory):
                if self.state.global_step == 4:
                    raise OSError(28, "No space left on device")
                return original(self, directory)

            monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", full_disk)
            callbacks = []
        output_dir.mkdir(parents=True)
        with pytest.raises(OSError) as stopped:
            train(cfg, callbacks=callbacks)
        assert isinstance(stopped.value, DiskFullError)
        message = str(stopped.value)
        assert message.startswith(f"the disk is full: could not write checkpoint {output_dir}/checkpoint-4 (about ")
        assert re.search(r"\(about [\d,]+ [KM]iB needed, [\d,]+ [KM]iB free on the disk of ", message)
        assert f"free on the disk of {output_dir}/checkpoint-4)" in message
        assert message.endswith("; the earlier checkpoints are untouched: free space and run again with --resume")
        assert not (output_dir / "checkpoint-4").exists()  # the half-written folder is gone
        assert checkpoint_problem(output_dir / "checkpoint-2") is None
        (disk / "filler").unlink(missing_ok=True)
        monkeypatch.undo()
        assert main(argv(output_dir, "--resume")) == 0
        assert f"resuming from {output_dir / 'checkpoint-2'}" in capsys.readouterr().out
        assert_same_run(output_dir, uninterrupted)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("damage", ["bytes", "optimizer"])
def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(damage, uninterrupted, tmp_path, capsys, argv):
    output_dir = tmp_path / "run"
    run_killed("step", 7, argv(output_dir))
    newest = output_dir / "checkpoint-6"
    if damage == "bytes":  # 4000 bytes of 0xFF inside the weights: the size is unchanged
        weights = bytearray((newest / "model.safetensors").read_bytes())
        weights[50_000:54_000] = b"\xff" * 4000
        (newest / "model.safetensors").write_bytes(bytes(weights))
        problem = "model.safetensors changed after it was written (checksum mismatch)"
    else:
        (newest / "optimizer.pt").unlink()
        problem = "optimizer.pt is missing"
    assert main(argv(output_dir, "--resume")) == 0
    out = capsys.readouterr().out
    assert f"warning: skipped checkpoint-6: {problem}; moved to {output_dir / 'discarded' / 'checkpoint-6'}" in out
    assert f"resuming from {output_dir / 'checkpoint-4'}" in out
    assert_same_run(output_dir, uninterrupted)
    assert torch.isfinite(torch.cat([t.flatten() for t in load_file(output_dir / "model.safetensors").values()])).all()
