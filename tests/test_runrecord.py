"""hafrm.runrecord: the run record's fields, its one writer and its one reader."""

import json
import os

import pytest

from hafrm.config import TrainConfig
from hafrm.losses import DEFAULT_BETA, DEFAULT_POLICY_LOSS, DEFAULT_SIMPO_GAMMA
from hafrm.runrecord import (
    RUN_RECORD,
    atomic_write_text,
    build_run_record,
    has_run_record,
    read_run_record,
    update_run_record,
    write_run_record,
)


def test_a_record_holds_the_config_as_it_ran_and_what_it_read(tmp_path):
    cfg = TrainConfig(model="base", method="rm", data="hh", output_dir=str(tmp_path), resume="last", lr=1e-3)
    record = build_run_record(cfg, reward_head=True, fingerprints={"train_data": "aa"})
    assert record["base_model"] == "base" and record["reward_head"] is True and record["reference"] == "cache"
    assert record["data"] == "hh" and record["lr"] == 1e-3 and record["fingerprints"] == {"train_data": "aa"}
    assert not {"model", "resume", "overwrite", "output_dir"} & set(record)  # where it went, not what ran
    write_run_record(tmp_path, record)
    assert has_run_record(tmp_path) and read_run_record(tmp_path) == record
    assert (tmp_path / RUN_RECORD).read_text().endswith("}\n")


def test_the_reader_fills_in_what_an_old_record_lacks(tmp_path):
    (tmp_path / RUN_RECORD).write_text(json.dumps({"method": "dpo", "base_model": "x", "reward_head": False}))
    run = read_run_record(tmp_path)
    assert (run["policy_loss"], run["beta"], run["simpo_gamma"]) == (
        DEFAULT_POLICY_LOSS,
        DEFAULT_BETA,
        DEFAULT_SIMPO_GAMMA,
    )
    assert run["packing"] is False and run["prompt_sharing"] is False  # a run from before them ran without them
    assert read_run_record(tmp_path, fill_in=False) == {"method": "dpo", "base_model": "x", "reward_head": False}
    (tmp_path / RUN_RECORD).write_text(json.dumps({"beta": 0.3, "simpo_gamma": 1.0}))
    assert (read_run_record(tmp_path)["beta"], read_run_record(tmp_path)["simpo_gamma"]) == (0.3, 1.0)


def test_an_update_adds_fields_to_the_record_as_written(tmp_path):
    write_run_record(tmp_path, {"method": "rm"})
    update_run_record(tmp_path, reward_mean=1.5, reward_std=0.5)
    assert json.loads((tmp_path / RUN_RECORD).read_text()) == {"method": "rm", "reward_mean": 1.5, "reward_std": 0.5}


def test_a_directory_without_a_record_is_no_hafrm_output_directory(tmp_path):
    assert not has_run_record(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"is not a hafrm output directory: {RUN_RECORD} is missing"):
        read_run_record(tmp_path)


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / RUN_RECORD
    atomic_write_text(target, "old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
