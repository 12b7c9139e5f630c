"""Resume and the disk: a finished run is not trained again, a step count is never exceeded, a full disk is
one line that leaves the last complete state usable, and a checkpoint file torch refuses stops a resume."""

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import transformers
from safetensors.torch import load_file

from hafrm.cli import main
from hafrm.rundir import FINAL_PARTIAL, LOCK_FILE, write_manifest

STEPS = ("--max-steps", "4", "--eval-steps", "2", "--lr-scheduler", "constant")


def error_line(capsys) -> str:
    """The one error line, from where it starts (progress bars share stderr)."""
    err = capsys.readouterr().err
    return "hafrm train: error:" + err.rsplit("hafrm train: error:", 1)[-1].rstrip("\n")


def weights(directory: Path) -> dict:
    return load_file(directory / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


@pytest.fixture(scope="module")
def finished(tiny_model, pairs_file, tmp_path_factory, train_argv) -> tuple[Path, list[str]]:
    """An uninterrupted 4-step run (checkpoints at 2 and 4) and its argv."""
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    argv = train_argv(tiny_model, pairs_file, output_dir, *STEPS)
    assert main(argv) == 0
    return output_dir, argv


def test_resume_of_a_finished_run_says_so_and_trains_nothing(finished, tmp_path, capsys):
    source, argv = finished
    output_dir = tmp_path / "run"
    shutil.copytree(source, output_dir)
    before = {path.name: path.stat().st_mtime_ns for path in output_dir.iterdir() if path.name != LOCK_FILE}
    capsys.readouterr()
    assert main([*[str(output_dir) if a == str(source) else a for a in argv], "--resume"]) == 0
    out = capsys.readouterr().out
    assert (
        f"--resume: {output_dir} is a finished run (step 4 of 4; its final model is saved): nothing to train. "
        "To train longer, pass a larger --max-steps or --epochs with --resume"
    ) in out
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    after = {path.name: path.stat().st_mtime_ns for path in output_dir.iterdir() if path.name != LOCK_FILE}
    assert after == before  # nothing rewritten (the lock is held, as by every run)


def test_a_final_save_on_a_full_disk_is_one_line_and_resume_finishes_without_a_step_more(
    finished, tiny_model, pairs_file, tmp_path, capsys, monkeypatch, train_argv
):
    source, _ = finished
    output_dir = tmp_path / "run"
    argv = train_argv(tiny_model, pairs_file, output_dir, *STEPS)
    real_save = transformers.Trainer._save

    def full_disk(self, output_dir=None, state_dict=None):
        if Path(output_dir).name == FINAL_PARTIAL:  # checkpoints fit; the final model does not
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 82368 vs 82256")
        return real_save(self, output_dir, state_dict)

    monkeypatch.setattr(transformers.Trainer, "_save", full_disk)
    assert main(argv) == 1
    error = error_line(capsys)
    assert error.startswith(
        f"hafrm train: error: the disk is full: could not write the final model {output_dir} (about "
    )
    assert error.endswith("; the checkpoints are untouched: free space and run again with --resume")
    assert not (output_dir / FINAL_PARTIAL).exists() and not (output_dir / "hafrm.json").exists()
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    monkeypatch.setattr(transformers.Trainer, "_save", real_save)  # space freed
    assert main([*argv, "--resume"]) == 0
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert max_difference(weights(output_dir), weights(source)) == 0.0  # as the uninterrupted run


def test_a_checkpoint_on_a_full_disk_is_one_line_removed_and_the_earlier_one_resumes(
    tiny_model, pairs_file, tmp_path, capsys, monkeypatch, train_argv
):
    output_dir = tmp_path / "run"
    argv = train_argv(tiny_model, pairs_file, output_dir, *STEPS)
    real_save = transformers.Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if Path(output_dir).name == "checkpoint-4":
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 82368 vs 82256")
        return real_save(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", full_disk)
    assert main(argv) == 1
    error = error_line(capsys)
    folder = output_dir / "checkpoint-4"
    assert error.startswith(f"hafrm train: error: the disk is full: could not write checkpoint {folder} (about ")
    assert error.endswith("; the earlier checkpoints are untouched: free space and run again with --resume")
    assert not folder.exists()  # half a checkpoint is space the user needs back
    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", real_save)
    assert main([*argv, "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert (output_dir / "hafrm.json").is_file()


def test_resume_on_a_still_full_disk_stops_at_the_lock_with_one_line(finished, tmp_path, capsys, monkeypatch):
    source, argv = finished
    output_dir = tmp_path / "run"
    shutil.copytree(source, output_dir)
    assert not (output_dir / LOCK_FILE).exists()  # the finished run took its lock file with it

    def full_disk(path, flags, mode=0o644):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("hafrm.rundir.open_no_follow", full_disk)
    assert main([*[str(output_dir) if a == str(source) else a for a in argv], "--resume"]) == 1
    error = error_line(capsys)
    assert error.startswith(
        f"hafrm train: error: the disk is full: could not write the lock file {output_dir / LOCK_FILE} ("
    )
    assert error.endswith("; nothing was changed")


class Planted:
    """Not a tensor: torch.load(weights_only=True) refuses to build it."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_checkpoint_file_torch_refuses_stops_the_resume_naming_it(finished, tmp_path, capsys):
    source, argv = finished
    output_dir = tmp_path / "run"
    shutil.copytree(source, output_dir)
    shutil.rmtree(output_dir / "checkpoint-4")
    (output_dir / "hafrm.json").unlink()
    checkpoint = output_dir / "checkpoint-2"
    (checkpoint / "rng_state.pth").write_bytes(pickle.dumps({"python": Planted()}))
    write_manifest(checkpoint)  # complete by its manifest: only the loader can tell
    assert main([*[str(output_dir) if a == str(source) else a for a in argv], "--resume"]) == 1
    error = error_line(capsys)
    assert error.startswith(
        f"hafrm train: error: --resume {checkpoint}: torch refuses to load rng_state.pth with weights_only=True, "
        "which hafrm always asks for ("
    )
    assert error.endswith("resume from another checkpoint (--resume PATH) or start over with --overwrite")
