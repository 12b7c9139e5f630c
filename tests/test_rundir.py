"""hafrm.rundir: the lock, refusing another run's directory, complete checkpoints, resume identity."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hafrm.cli import main
from hafrm.config import TrainConfig, parse_config
from hafrm.rundir import (
    CHECKPOINT_MANIFEST,
    LOCK_FILE,
    RUN_FILE,
    RunDirectory,
    RunDirectoryError,
    checkpoint_problem,
    write_manifest,
)
from hafrm.writes import LinkRefused


def fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    checkpoint = root / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (checkpoint / "optimizer.pt").write_bytes(b"state" * 10)
    (checkpoint / "hafrm.json").write_text(json.dumps({"method": "haf", "lr": 0.001}))
    if complete:
        write_manifest(checkpoint)
    return checkpoint


def test_a_checkpoint_is_complete_only_with_its_manifest_and_unchanged_files(tmp_path):
    checkpoint = fake_checkpoint(tmp_path, 4)
    assert checkpoint_problem(checkpoint) is None
    assert sorted(json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())["files"]) == [
        "hafrm.json",
        "model.safetensors",
        "optimizer.pt",
    ]
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100:140] = b"\xff" * 40  # same size, other bytes
    weights.write_bytes(bytes(data))
    assert checkpoint_problem(checkpoint) == "model.safetensors changed after it was written (checksum mismatch)"
    weights.write_bytes(bytes(data[:500]))
    assert checkpoint_problem(checkpoint) == "model.safetensors has 500 bytes, 1024 were written"
    weights.write_bytes(bytes(range(256)) * 4)
    assert checkpoint_problem(checkpoint) is None
    (checkpoint / "optimizer.pt").unlink()
    assert checkpoint_problem(checkpoint) == "optimizer.pt is missing"
    partial = fake_checkpoint(tmp_path, 6, complete=False)
    assert checkpoint_problem(partial).startswith("incomplete (no hafrm-checkpoint.json")


def test_resume_takes_the_newest_complete_checkpoint_and_moves_the_rest_aside(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6, complete=False)
    corrupt = fake_checkpoint(tmp_path, 8)
    (corrupt / "optimizer.pt").write_bytes(b"other" * 10)
    point, notes = RunDirectory(tmp_path).resume_point("last")
    assert point == tmp_path / "checkpoint-4"
    assert notes == [
        f"warning: skipped checkpoint-8: optimizer.pt changed after it was written (checksum mismatch); "
        f"moved to {tmp_path / 'discarded' / 'checkpoint-8'}",
        "warning: skipped checkpoint-6: incomplete (no hafrm-checkpoint.json: the run stopped while writing it, or "
        f"an older hafrm wrote it); moved to {tmp_path / 'discarded' / 'checkpoint-6'}",
        f"resuming from {tmp_path / 'checkpoint-4'} (the newest complete checkpoint)",
    ]
    assert [p.name for p in RunDirectory(tmp_path).checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in (tmp_path / "discarded").iterdir()) == ["checkpoint-6", "checkpoint-8"]
    with pytest.raises(RunDirectoryError, match="cannot resume from it: incomplete"):
        RunDirectory(tmp_path).resume_point(str(tmp_path / "discarded" / "checkpoint-6"))


def test_no_complete_checkpoint_starts_from_step_zero(tmp_path):
    fake_checkpoint(tmp_path, 2, complete=False)
    point, notes = RunDirectory(tmp_path).resume_point("last")
    assert point is None
    assert notes[-1] == f"note: no complete checkpoint in {tmp_path}: training starts from step 0"


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    assert directory.prepare(resume=None, overwrite=False) == []  # nothing there yet
    fake_checkpoint(directory.path, 2)
    (directory.path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError) as refused:
        directory.prepare(resume=None, overwrite=False)
    assert str(refused.value) == (
        f"{directory.path} already holds a haf run (unfinished, 1 checkpoint(s), newest checkpoint-2); pass "
        "--resume to continue it, --overwrite to replace it, or choose another --output-dir"
    )
    assert directory.prepare(resume="last", overwrite=False) == []
    assert directory.prepare(resume=None, overwrite=True) == [
        f"note: --overwrite: cleared {directory.path} (a haf run (unfinished, 1 checkpoint(s), newest checkpoint-2)); "
        "left in place, not hafrm's: notes.txt"
    ]
    assert [entry.name for entry in directory.path.iterdir()] == ["notes.txt"]  # the user's file stays


def test_resume_identity_names_what_changed(tmp_path):
    directory = RunDirectory(tmp_path)
    identity = {"method": "haf", "lr": 0.001, "max_steps": 4, "fingerprints": {"train_data": "aa", "pad_token_id": 7}}
    directory.start(identity)
    assert directory.check_same_run(identity, None) == []
    assert directory.check_same_run({**identity, "max_steps": 8, "logging_steps": 3}, None) == [
        "note: --resume with max_steps 4 -> 8: the learning-rate schedule follows the new length"
    ]
    changed = {**identity, "method": "rm", "fingerprints": {"train_data": "bb", "pad_token_id": 7}}
    with pytest.raises(RunDirectoryError) as refused:
        directory.check_same_run(changed, None)
    assert str(refused.value) == (
        f"--resume: {tmp_path} holds a run with other settings or data (the training data changed; method 'haf' -> "
        "'rm'); resume with the settings it was started with, or pass --overwrite to start over"
    )


HOLDER = """
import sys, time
from hafrm.rundir import RunDirectory
with RunDirectory(sys.argv[1]).hold():
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_into_a_locked_directory_fails_at_once_naming_the_holder(
    tiny_model, pairs_file, tmp_path, capsys, train_argv
):
    output_dir = tmp_path / "run"
    argv = train_argv(tiny_model, pairs_file, output_dir, "--max-steps", "2", "--eval-steps", "2")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(argv) == 1
        error = capsys.readouterr().err.strip()
        assert error.startswith(
            f"hafrm train: error: {output_dir} is in use by another hafrm run (pid {holder.pid} on "
        )
        assert error.endswith("wait for it to end, stop it, or choose another --output-dir")
        assert not (output_dir / RUN_FILE).exists()  # refused before anything was loaded or written
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # the holder died with its lock: the directory is free again, and the run leaves no lock file behind
    assert main(argv) == 0
    assert not (output_dir / LOCK_FILE).exists()


def test_another_method_into_a_run_directory_is_refused_then_overwritten(
    tiny_model, pairs_file, tmp_path, capsys, train_argv
):
    output_dir = tmp_path / "run"
    two_steps = ("--max-steps", "2", "--eval-steps", "2")
    assert main(train_argv(tiny_model, pairs_file, output_dir, "--method", "haf", *two_steps)) == 0
    capsys.readouterr()
    assert main(train_argv(tiny_model, pairs_file, output_dir, "--method", "rm", *two_steps)) == 1
    assert "already holds a haf run (finished, 1 checkpoint(s), newest checkpoint-2)" in capsys.readouterr().err
    assert main(train_argv(tiny_model, pairs_file, output_dir, "--method", "rm", *two_steps, "--resume")) == 1
    assert "method 'haf' -> 'rm'" in capsys.readouterr().err
    assert main(train_argv(tiny_model, pairs_file, output_dir, "--method", "rm", *two_steps, "--overwrite")) == 0
    assert "--overwrite: cleared" in capsys.readouterr().out
    for recorded in [output_dir / "hafrm.json", output_dir / "checkpoint-2" / "hafrm.json"]:
        assert json.loads(recorded.read_text())["method"] == "rm"


def test_resume_with_other_data_stops_and_says_so(tiny_model, pairs_file, tmp_path, capsys, train_argv):
    output_dir = tmp_path / "run"
    assert main(train_argv(tiny_model, pairs_file, output_dir, "--max-steps", "2", "--eval-steps", "2")) == 0
    changed = tmp_path / pairs_file.name  # the same path name, other content
    rows = pairs_file.read_text().splitlines()
    changed.write_text("\n".join(rows[1:]) + "\n")
    capsys.readouterr()
    assert main(train_argv(tiny_model, changed, output_dir, "--max-steps", "4", "--eval-steps", "2", "--resume")) == 1
    error = capsys.readouterr().err
    assert "the training data changed" in error and "the validation data changed" in error
    assert json.loads((output_dir / "hafrm.json").read_text())["max_steps"] == 2  # the finished run is untouched


# What a finished full run writes at the top of its directory (listed from a tiny run).
FINISHED_RUN = [
    "chat_template.jinja", "config.json", "generation_config.json", "hafrm-run.json", "hafrm.json",
    "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.bin", "skipped-rows.jsonl",
    "LOADING.md", "README.md", "adapter_config.json", "adapter_model.safetensors", "eval-test.json",
]  # fmt: skip


def test_overwrite_removes_only_what_hafrm_writes(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    fake_checkpoint(directory.path, 2)
    (directory.path / "discarded" / "checkpoint-1").mkdir(parents=True)
    for name in FINISHED_RUN:
        (directory.path / name).write_text("{}" if name.endswith(".json") else "x")
    (directory.path / "hafrm.json").write_text(json.dumps({"method": "rm"}))
    (directory.path / "notes.txt").write_text("mine")
    (directory.path / "sub").mkdir()
    (directory.path / "sub" / "data.jsonl").write_text("mine too")
    with directory.hold():
        notes = directory.prepare(resume=None, overwrite=True)
    assert notes == [
        f"note: --overwrite: cleared {directory.path} (a rm run (finished, 1 checkpoint(s), newest checkpoint-2)); "
        "left in place, not hafrm's: notes.txt, sub"
    ]
    assert sorted(entry.name for entry in directory.path.iterdir()) == ["notes.txt", "sub"]  # the lock went too
    assert (directory.path / "sub" / "data.jsonl").read_text() == "mine too"


def test_the_lock_file_goes_when_the_run_ends_and_a_removed_file_is_never_held(tmp_path, monkeypatch):
    directory = RunDirectory(tmp_path / "run")
    with directory.hold():
        first = (directory.path / LOCK_FILE).stat().st_ino
        assert (directory.path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    assert not (directory.path / LOCK_FILE).exists()
    # a run that opened the file just before its holder removed it (and a third run made a fresh one) retries
    # on the file now at the path: it must hold that one, or two runs would each hold "the" lock
    import fcntl

    import hafrm.rundir

    real_flock, calls = fcntl.flock, []

    def flock_after_a_swap(handle, operation):
        if operation & fcntl.LOCK_EX and not calls:
            (directory.path / LOCK_FILE).unlink()
            (directory.path / LOCK_FILE).write_text("")
        calls.append(operation)
        return real_flock(handle, operation)

    monkeypatch.setattr(hafrm.rundir.fcntl, "flock", flock_after_a_swap)
    with directory.hold():
        assert sum(1 for op in calls if op & fcntl.LOCK_EX) == 2  # the first lock was on a removed file
        with open(directory.path / LOCK_FILE) as live, pytest.raises(BlockingIOError):
            real_flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the live file is held
    assert first > 0 and not (directory.path / LOCK_FILE).exists()


def test_a_run_that_fails_before_saving_anything_leaves_the_directory_as_it_found_it(
    tiny_model, pairs_file, tmp_path, capsys, monkeypatch, train_argv
):
    import hafrm.train

    output_dir = tmp_path / "new" / "run"
    argv = train_argv(tiny_model, pairs_file, output_dir, "--max-steps", "2", "--eval-steps", "2")

    def fail(*args, **kwargs):
        raise RuntimeError("the reference pass ran out of memory")

    monkeypatch.setattr(hafrm.train, "add_reference_logps", fail)
    with pytest.raises(RuntimeError, match="ran out of memory"):
        hafrm.train.train(parse_config(TrainConfig, argv[1:]))
    assert not output_dir.exists() and (tmp_path / "new").is_dir()  # made for the run, removed with it
    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        hafrm.train.train(parse_config(TrainConfig, train_argv(tiny_model, pairs_file, existing)[1:]))
    assert existing.is_dir() and list(existing.iterdir()) == []
    monkeypatch.undo()
    assert main(argv) == 0  # the corrected command is not refused for an unfinished run
    assert (output_dir / "hafrm.json").is_file()


def test_trainable_layers_beyond_the_model_are_refused_before_anything_loads(
    tiny_model, pairs_file, tmp_path, capsys, train_argv
):
    output_dir = tmp_path / "run"
    argv = train_argv(tiny_model, pairs_file, output_dir, "--finetune", "freeze", "--trainable-layers", "4")
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"hafrm train: error: --trainable-layers must be in 1..2 for {tiny_model} (2 blocks), got 4"
    )
    assert not output_dir.exists()


def test_a_directory_of_someone_else_s_files_is_refused_by_name_and_left_untouched(tmp_path):
    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (foreign / "sub").mkdir()
    with pytest.raises(RunDirectoryError) as refused:
        with RunDirectory(foreign).hold():
            pass
    assert str(refused.value) == (
        f"--output-dir {foreign} holds files that are not a hafrm run (notes.txt, sub); hafrm writes only into an "
        "empty or new directory, or one of its own runs: choose another --output-dir"
    )
    assert sorted(entry.name for entry in foreign.iterdir()) == ["notes.txt", "sub"]  # no lock file left there
    # a run that stopped before its record was written left only hafrm's traces: that directory is taken
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / LOCK_FILE).write_text("")
    (stopped / "skipped-rows.jsonl").write_text("{}\n")
    with RunDirectory(stopped).hold():
        pass


@pytest.mark.parametrize(
    "where, problem",
    [
        ("root", "is a filesystem root"),
        ("home", "is the home directory"),
        ("cwd", "is the working directory itself; name a directory inside it (runs/x)"),
    ],
)
def test_roots_home_and_the_working_directory_are_refused(tmp_path, monkeypatch, where, problem):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    path = {"root": Path("/"), "home": tmp_path / "home", "cwd": Path(".")}[where]
    with pytest.raises(RunDirectoryError) as refused:
        with RunDirectory(path).hold():
            pass
    assert str(refused.value) == f"--output-dir {path} {problem}"
    assert not (path / LOCK_FILE).exists()


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_is_not_truncated(tmp_path):
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(victim)
    with pytest.raises(LinkRefused) as refused:
        with RunDirectory(run).hold():
            pass
    assert str(refused.value).startswith(f"{run / LOCK_FILE} is a symbolic link (to {victim}); ")
    assert victim.read_text() == "root:x:0:0\n"


def test_a_run_record_that_is_a_link_is_refused(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text('{"method": "haf"}')
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_FILE).symlink_to(victim)
    with pytest.raises(LinkRefused):
        with RunDirectory(run).hold():
            pass
    assert victim.read_text() == '{"method": "haf"}'


@pytest.mark.parametrize("case", ["file", "under a file", "read-only"])
def test_an_output_directory_that_cannot_be_one_is_a_one_line_error(tiny_model, tmp_path, capsys, monkeypatch, case):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    output_dir, problem = {
        "file": (a_file, "is a file, not a directory"),
        "under a file": (a_file / "run", f"cannot be made: {a_file} is a file, not a directory"),
        "read-only": (read_only / "run", f"cannot be written: {read_only} is not writable by this user"),
    }[case]
    if case == "read-only":  # root writes through mode bits: ask access(2) as an unprivileged user would be answered
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode: False if Path(path) == read_only else real_access(path, mode)
        )
    assert main(["train", "--model", tiny_model, "--output-dir", str(output_dir), "--max-steps", "1"]) == 2
    assert capsys.readouterr().err == f"hafrm train: error: --output-dir {output_dir} {problem}\n"
