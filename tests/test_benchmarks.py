"""The benchmark scripts run end to end on the tiny model (their figures are printed, never asserted)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_train_step_measures_hafrm_and_trl_on_the_same_pairs(tiny_model, pairs_file, tmp_path):
    report = tmp_path / "bench.json"
    out = run(
        "train_step.py",
        *("--model", tiny_model, "--data", str(pairs_file), "--modes", "freeze", "--methods", "haf,dpo"),
        *("--trainable-layers", "1", "--batch-size", "4", "--max-length", "96", "--warmup", "1", "--steps", "2"),
        *("--rounds", "1", "--packing", "both", "--prompt-sharing", "both", "--json", str(report)),
    )
    assert "matmul peak" in out
    configs = (
        *("hafrm-haf-freeze", "hafrm-dpo-freeze", "hafrm-haf-freeze-padded", "hafrm-haf-freeze-unshared"),
        *("hafrm-dpo-freeze-padded-unshared", "trl-reward-freeze", "trl-dpo-freeze"),
    )
    for config in configs:
        assert re.search(rf"^{config}\s+[\d.]+ / [\d.]+ / [\d.]+", out, re.MULTILINE), config
    assert re.search(r"^hafrm-haf-freeze / trl-reward-freeze\s+[\d.]+ / ", out, re.MULTILINE)
    assert re.search(r"^hafrm-haf-freeze-padded / trl-reward-freeze\s+[\d.]+ / ", out, re.MULTILINE)
    assert re.search(r"^hafrm-dpo-freeze / trl-dpo-freeze\s+[\d.]+ / ", out, re.MULTILINE)
    assert re.search(r"^hafrm-haf-freeze-unshared / trl-reward-freeze\s+[\d.]+ / ", out, re.MULTILINE)
    measured = json.loads(report.read_text())
    assert measured["pairs"]["kept"] == 4 * 3  # batch x (warm-up + timed steps), the same pairs for all
    (round_results,) = measured["rounds"]
    for result in round_results.values():
        assert len(result["step_seconds"]) == 2 and all(s > 0 for s in result["step_seconds"])
        assert result["peak_gb"] > 0


def test_score_benchmark_loops_agree(tiny_model, pairs_file):
    out = run(
        "score.py",
        *("--model", tiny_model, "--data", str(pairs_file), "--pairs", "12", "--batch-size", "4"),
        *("--max-length", "128", "--rounds", "1", "--bon", "2,4", "--bon-prompts", "3"),
    )
    for loop in ("hafrm", "hafrm-unshared", "fixed", "longest"):
        assert re.search(rf"^{loop}\s+[\d.]+ / ", out, re.MULTILINE), loop
    assert re.search(r"^hafrm / fixed: [\d.]+ / ", out, re.MULTILINE)
    difference = float(re.search(r"difference between the loops: (\S+) \((\d+) untruncated", out).group(1))
    assert difference < 1e-4  # hafrm's scorer gives the sequence classifier's rewards
    for n in (2, 4):
        assert f"best-of-{n}: 3 prompts x {n} responses" in out
        assert re.search(rf"^best-of-{n} hafrm / per-response: [\d.]+ / ", out, re.MULTILINE)
        bon_difference = float(
            re.search(rf"best-of-{n} largest reward difference between the loops: (\S+)", out).group(1)
        )
        assert bon_difference < 1e-4  # shared, unshared and per-response scoring agree


def test_serve_benchmark_loads_every_server(tiny_model, pairs_file, tmp_path):
    from hafrm.cli import main

    run_dir = tmp_path / "rm"
    argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(run_dir), "--method", "rm",
            "--max-length", "96", "--max-steps", "1", "--val-fraction", "0"]  # fmt: skip
    assert main(argv) == 0
    report = tmp_path / "serve.json"
    out = run(
        "serve.py",
        *("--model", str(run_dir), "--data", str(pairs_file), "--requests", "6", "--concurrency", "1,3"),
        *("--group-size", "1,3", "--max-length", "96", "--json", str(report)),
    )
    rows = json.loads(report.read_text())
    assert [(row["server"], row["group_size"], row["concurrency"]) for row in rows] == [
        (server, g, concurrency)
        for server in ("hafrm-batched", "hafrm-unbatched", "hafrm-ungrouped", "plain-loop")
        for g in (1, 3)
        for concurrency in (1, 3)
    ]
    assert all(row["requests"] == 6 and row["texts"] == 6 * row["group_size"] for row in rows)
    assert all(row["texts_per_s"] > 0 and row["p99_s"] >= row["p50_s"] for row in rows)
    singles = {row["grouped_tokens"] - row["plain_tokens"] for row in rows if row["group_size"] == 1}
    assert singles == {0}  # one text per request: nothing to share
    grouped = [row for row in rows if row["group_size"] == 3]
    assert all(row["grouped_tokens"] < row["plain_tokens"] for row in grouped)  # a group's prompt counted once
    assert "| hafrm-batched | 3 | 3 |" in out
    assert re.search(r"^G=3 concurrency 3: batched / unbatched texts/s [\d.]+; batched / ungrouped texts/s [\d.]+ "
                     r"\(token bound of grouping [\d.]+x",
                     out, re.MULTILINE)  # fmt: skip


def test_reward_function_benchmark_times_grouped_and_ungrouped_steps(reward_runs):
    out = run("reward_fn.py", "--model", str(reward_runs["rm"]), "--data", "builtin:test@16",
              "--group-size", "2,4", "--prompts-per-step", "2", "--steps", "2", "--max-length", "256")  # fmt: skip
    lines = re.findall(
        r"^G=(\d), 2 prompts per step: grouped [\d.]+ s/step, ungrouped [\d.]+ s/step, ungrouped / grouped [\d.]+; "
        r"largest reward difference (\S+)$",
        out,
        re.MULTILINE,
    )
    assert [g for g, _ in lines] == ["2", "4"]
    assert all(float(difference) < 1e-4 for _, difference in lines)  # the same rewards either way


def test_gpu_script_runs_end_to_end_at_toy_sizes(tiny_model, pairs_file, tmp_path):
    """`benchmarks/gpu.sh --dry-run`: every step of the GPU run, on the CPU, with the tiny model."""
    out = tmp_path / "gpu"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    command = ["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run", "--model", tiny_model, "--data", str(pairs_file)]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in (out / "tests.txt").read_text()
    step = (out / "train-step.txt").read_text()
    for config in ("hafrm-rm-full", "hafrm-haf-full-unshared", "trl-reward-full", "trl-dpo-full"):
        assert re.search(rf"^{config}\s+[\d.]+ / ", step, re.MULTILINE), config
    assert "best-of-2 hafrm / per-response" in (out / "score.txt").read_text()
    results = (out / "quality-results.md").read_text()
    # the two regime studies, every run of each, on every set of each (toy sizes)
    assert "# study-full-gpu" in results and "# study-lora-gpu" in results
    for run in ("rm-250", "haf-250", "haf+grm-sft-250", "dpo-250", "rm-1000", "haf-1000", "dpo-1000", "haf-zero-1000"):
        assert f"| {run} |" in results, run
    assert "| haf-1000 − rm-1000 |" in results and "## Learning curve" in results
    lora = yaml.safe_load((out / "quality" / "study-lora-gpu.yaml").read_text())
    assert lora["base"]["finetune"] == "lora" and lora["base"]["model"] == tiny_model and lora["seeds"] == [0]


def test_freeze_epochs_benchmark_times_both_runs(tiny_model, pairs_file):
    out = run(
        "freeze_epochs.py",
        *("--model", tiny_model, "--data", str(pairs_file), "--pairs", "8", "--batch-size", "4"),
        *("--max-length", "96", "--epochs", "2", "--trainable-layers", "1"),
    )
    assert re.search(r"^1\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE)
    assert re.search(r"^2\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE)
    assert "cached run: first epoch with the build" in out
    difference = float(re.search(r"two runs' step losses: (\S+)", out).group(1))
    assert difference < 1e-4  # the cache changes the time, not the training


def test_attention_benchmark_runs_every_layout(tiny_model, pairs_file):
    out = run(
        "attention.py",
        *("--model", tiny_model, "--data", str(pairs_file), "--batch-size", "2", "--max-length", "96"),
        *("--repeats", "1", "--implementations", "sdpa,eager"),
    )
    for implementation in ("sdpa", "eager"):
        for layout in ("padded", "packed", "shared", "shared+packed"):
            line = re.search(rf"^{implementation}\s+{re.escape(layout)}\s+\d+\s.*\s(\S+)  \(median", out, re.MULTILINE)
            assert line, (implementation, layout)
            assert float(line.group(1)) < 1e-4  # the layout changes the time, not the rewards


def test_scale_study_rewrites_the_budget_and_keeps_the_design(tmp_path):
    config = BENCHMARKS.parent / "configs" / "experiments" / "study-full.yaml"
    command = [sys.executable, str(BENCHMARKS / "scale_study.py"), str(config), "--out", str(tmp_path),
               "--scale", "4", "--test-scale", "2", "--batch-size", "16", "--max-length", "1024", "--bf16",
               "--seeds", "0,1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path)
    path = Path(result.stdout.strip())
    assert path == tmp_path / "study-full-gpu.yaml"
    original, scaled = yaml.safe_load(config.read_text()), yaml.safe_load(path.read_text())
    assert scaled["output_dir"] == str(tmp_path / "study-full-gpu") and scaled["seeds"] == [0, 1]
    assert scaled["runs"]["rm-250"]["data"] == "builtin:train@1000"
    assert scaled["runs"]["haf-1000"]["data"] == "builtin:train@4000"
    assert scaled["evaluate"] == {"builtin-test": "builtin:test@1000"}  # ../shared is not beside tmp_path
    assert "pandalm" not in scaled["set_runs"] and "left out" in result.stderr
    assert {k: scaled["base"][k] for k in ("batch_size", "max_length", "bf16")} == {
        "batch_size": 16, "max_length": 1024, "bf16": True}  # fmt: skip
    assert scaled["baseline"] == original["baseline"] and scaled["learning_curve"] == original["learning_curve"]
    assert scaled["run_seeds"] == original["run_seeds"]  # seed 0 is kept
    shared = tmp_path / "copies"
    for path in ("pandalm/testset-v1.json", "hh-harmless/train.jsonl.gz"):
        (shared / path).parent.mkdir(parents=True, exist_ok=True)
        (shared / path).write_text("[]")
    command += ["--shared", str(shared)]
    path = Path(subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip())
    assert original["evaluate"]["pandalm"] == "pandalm"  # named sources in the shipped config; local copies here
    assert yaml.safe_load(path.read_text())["evaluate"] == {
        "builtin-test": "builtin:test@1000",
        "pandalm": f"{shared}/pandalm/testset-v1.json",
        "hh-harmless": f"{shared}/hh-harmless/train.jsonl.gz:test",
    }
