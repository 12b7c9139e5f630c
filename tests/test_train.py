"""`hafrm train / eval / score / export` end to end on the tiny model, through the CLI."""

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hafrm.cli import main
from hafrm.config import TrainConfig, parse_config


@pytest.mark.parametrize("finetune", ["full", "lora", "freeze"])
@pytest.mark.parametrize("method", ["rm", "dpo", "haf"])
def test_every_method_and_mode_trains_and_is_read_back(
    method, finetune, tiny_model, pairs_file, tmp_path, capsys, train_run, trainer_state
):
    out = train_run(
        tiny_model,
        pairs_file,
        tmp_path / "run",
        "--method",
        method,
        "--finetune",
        finetune,
        "--trainable-layers",
        "1",
        "--max-steps",
        "3",
        "--eval-steps",
        "3",
    )
    run = json.loads((out / "hafrm.json").read_text())
    assert (run["method"], run["finetune"], run["reward_head"]) == (method, finetune, method != "dpo")
    assert (out / ("adapter_config.json" if finetune == "lora" else "model.safetensors")).is_file()

    history = trainer_state(out)["log_history"]
    train_logs = [entry for entry in history if "reward_loss" in entry or "policy_loss" in entry]
    assert train_logs and all("accuracy" in entry and "rewards/chosen" in entry for entry in train_logs)
    assert ("reward_loss" in train_logs[0]) == (method != "dpo")
    assert ("policy_loss" in train_logs[0]) == (method != "rm")

    report_path = tmp_path / "eval.json"
    assert (
        main(["eval", "--model", str(out), "--data", str(pairs_file), "--max-length", "96", "--json", str(report_path)])
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["pairs"] == 48
    assert ("reward_head" in report) == (method != "dpo")
    assert ("implicit_reward" in report) == (method != "rm")
    printed = capsys.readouterr().out
    for head in ("reward_head", "implicit_reward"):
        if head in report:
            assert f"accuracy {report[head]['accuracy']:.4f} [" in printed

    if method != "dpo":
        assert (
            main(
                [
                    "score",
                    "--model",
                    str(out),
                    "--prompt",
                    "Reply in lower case only.",
                    "--response",
                    "ok.",
                    "--response",
                    "OK.",
                ]
            )
            == 0
        )
        lines = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]
        assert len(lines) == 2


def _weights(directory) -> dict:
    return load_file(str(Path(directory) / "model.safetensors"))


def test_freeze_trains_only_top_blocks_norm_and_score(tiny_model, pairs_file, tmp_path, train_run):
    out = train_run(
        tiny_model,
        pairs_file,
        tmp_path / "run",
        "--method",
        "haf",
        "--finetune",
        "freeze",
        "--trainable-layers",
        "1",
        "--max-steps",
        "3",
        "--val-fraction",
        "0",
    )
    before, after = _weights(tiny_model), _weights(out)
    _check_added_pad_row(before, after)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert all(name.startswith(("model.layers.1.", "model.norm.")) for name in changed), changed
    assert any(name.startswith("model.layers.1.") for name in changed)
    assert "model.norm.weight" in changed
    assert "score.weight" in after and "score.weight" not in before


def test_freeze_trains_an_untied_lm_head(tiny_untied_model, pairs_file, tmp_path, train_run):
    out = train_run(
        tiny_untied_model,
        pairs_file,
        tmp_path / "run",
        "--finetune",
        "freeze",
        "--trainable-layers",
        "1",
        "--max-steps",
        "2",
        "--val-fraction",
        "0",
    )
    before, after = _weights(tiny_untied_model), _weights(out)
    _check_added_pad_row(before, after)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def _check_added_pad_row(before: dict, after: dict) -> None:
    """hafrm gave SmolLM2's tokenizer a `<|pad|>` token: one embedding row more, the mean of the others.

    Compare the rest as it was (the added row is what the base model never had)."""
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in before:
            rows = before[name].shape[0]
            assert after[name].shape[0] == rows + 1
            if name == "model.embed_tokens.weight":  # frozen here: still the mean it was made with
                torch.testing.assert_close(after[name][rows], before[name].mean(dim=0))
            after[name] = after[name][:rows]


def test_best_checkpoint_is_kept_and_resume_continues(tiny_model, pairs_file, tmp_path, train_run, trainer_state):
    out = train_run(
        tiny_model,
        pairs_file,
        tmp_path / "run",
        "--method",
        "rm",
        "--max-steps",
        "4",
        "--eval-steps",
        "2",
        "--save-total-limit",
        "1",
    )
    state = trainer_state(out)
    assert state["global_step"] == 4
    assert Path(state["best_model_checkpoint"]).is_dir()
    best = max(e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e and e["step"] > 0)
    assert state["best_metric"] == best

    train_run(tiny_model, pairs_file, out, "--method", "rm", "--max-steps", "6", "--eval-steps", "2", "--resume")
    resumed = trainer_state(out)
    assert resumed["global_step"] == 6
    steps = [e["step"] for e in resumed["log_history"] if "loss" in e and "eval_loss" not in e]
    assert steps.count(1) == 1, "resume must continue from step 4, not start again"


def test_gradient_accumulation_and_eval_data(tiny_model, pairs_file, tmp_path, train_run, trainer_state):
    out = train_run(
        tiny_model,
        pairs_file,
        tmp_path / "run",
        "--method",
        "haf",
        "--eval-data",
        str(pairs_file),
        "--grad-accum",
        "2",
        "--max-steps",
        "2",
        "--eval-steps",
        "2",
    )
    history = trainer_state(out)["log_history"]
    # all 48 pairs train (--eval-data holds nothing out): 12 batches of 4 an epoch, two accumulated in each step
    assert [entry["epoch"] for entry in history if "loss" in entry] == pytest.approx([2 / 12, 4 / 12])
    evals = [entry for entry in history if "eval_accuracy" in entry]
    assert [entry["step"] for entry in evals] == [0, 2]
    # validation read the whole --eval-data file: its accuracies are those of the step-2 checkpoint's
    # per-pair scores on the same 48 pairs, as `hafrm eval` gives them
    report_path = tmp_path / "eval.json"
    argv = ["eval", "--model", str(out / "checkpoint-2"), "--data", str(pairs_file), "--json", str(report_path)]
    assert main([*argv, "--save-scores"]) == 0
    scores = json.loads(report_path.read_text())["scores"]
    assert len(scores["implicit_reward"]) == 2 * 48
    assert evals[-1]["eval_accuracy"] == pytest.approx(pair_accuracy(scores["reward_head"]))
    assert evals[-1]["eval_implicit_accuracy"] == pytest.approx(pair_accuracy(scores["implicit_reward"]))


def pair_accuracy(scores: list[float]) -> float:
    """Share of pairs whose chosen response scores strictly above the rejected one; `scores` as an eval
    report's `scores` hold them: every chosen score, then every rejected one, in data order."""
    n = len(scores) // 2
    return sum(chosen > rejected for chosen, rejected in zip(scores[:n], scores[n:])) / n


@pytest.mark.parametrize("finetune", ["full", "lora", "freeze"])
def test_gradient_checkpointing_changes_memory_not_numbers(
    finetune, tiny_model, pairs_file, tmp_path, train_run, logged
):
    """Checkpointed blocks recompute in backward; LoRA and freeze (frozen inputs) still get gradients."""
    histories = []
    for flags in ([], ["--gradient-checkpointing"]):
        out = train_run(
            tiny_model,
            pairs_file,
            tmp_path / f"run{len(flags)}",
            *("--method", "haf", "--finetune", finetune, "--trainable-layers", "1"),
            *("--max-steps", "3", "--val-fraction", "0", "--sampling", "sequential", *flags),
        )
        histories.append(logged(out, "loss", "grad_norm"))
    assert len(histories[0]) == 6 and all(norm > 0 for norm in histories[0][1::2])
    assert histories[1] == pytest.approx(histories[0], rel=1e-4)


@pytest.fixture(scope="module")
def varied_pairs(tmp_path_factory) -> Path:
    """Pairs whose responses run from one to ten sentences, so short sequences can share a packed row."""
    from make_data import make_pairs

    rows = make_pairs(24, seed=3)
    for i, row in enumerate(rows):
        row["chosen"] = " ".join([row["chosen"]] * (1 + i % 10))
        row["rejected"] = " ".join([row["rejected"]] * (1 + (i * 7) % 10))
    path = tmp_path_factory.mktemp("varied") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_packing_trains_like_padding_on_fewer_tokens(
    tiny_model, varied_pairs, tmp_path, train_run, logged, collated_batches
):
    histories, tokens = [], []
    for flags in (["--no-packing"], []):
        collated_batches.clear()
        out = train_run(
            tiny_model,
            varied_pairs,
            tmp_path / f"run{len(flags)}",
            *("--method", "haf", "--max-steps", "3", "--val-fraction", "0", "--sampling", "sequential", *flags),
            "--no-prompt-sharing",
        )
        histories.append(logged(out, "loss", "grad_norm"))
        tokens.append(sum(batch["input_ids"].numel() for batch in collated_batches))
        assert all(("sequence_ids" in batch) == (not flags) for batch in collated_batches)
    assert tokens[1] < 0.8 * tokens[0], tokens
    assert histories[1] == pytest.approx(histories[0], rel=1e-4)


def test_packing_turns_itself_off_for_attention_that_ignores_it(
    tiny_model, varied_pairs, tmp_path, monkeypatch, capsys, train_run, collated_batches
):
    import transformers.masking_utils

    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    train_run(
        tiny_model,
        varied_pairs,
        tmp_path / "run",
        "--method",
        "rm",
        "--max-steps",
        "2",
        "--val-fraction",
        "0",
        "--no-prompt-sharing",
    )
    assert (
        "note: packing off: LlamaForCausalLM scores two sequences packed in one row differently"
        in capsys.readouterr().out
    )
    assert collated_batches
    assert all("attention_mask" in batch and "sequence_ids" not in batch for batch in collated_batches)
    assert json.loads((tmp_path / "run" / "hafrm.json").read_text())["packing"] is False


def test_packing_turns_itself_off_for_a_model_that_cannot_run_packed(
    tiny_model, varied_pairs, tmp_path, monkeypatch, capsys, train_run, collated_batches
):
    import hafrm.train

    def fails(*args, **kwargs):
        raise ValueError("position_ids must be 3-dimensional")

    monkeypatch.setattr(hafrm.train, "packing_error", fails)
    train_run(
        tiny_model,
        varied_pairs,
        tmp_path / "run",
        "--method",
        "rm",
        "--max-steps",
        "1",
        "--val-fraction",
        "0",
        "--no-prompt-sharing",
    )
    out = capsys.readouterr().out
    assert "note: packing off: LlamaForCausalLM failed on packed rows (ValueError: position_ids must be 3" in out
    assert collated_batches and all("sequence_ids" not in batch for batch in collated_batches)


def test_group_by_length_batches_pairs_of_similar_length(tiny_model, pairs_file, tmp_path, monkeypatch, train_run):
    from hafrm.data.collator import PairCollator

    batches = []
    collate = PairCollator.__call__

    def recording(self, rows):
        batches.append([row["length"] for row in rows])
        return collate(self, rows)

    monkeypatch.setattr(PairCollator, "__call__", recording)
    spreads = {}
    for flags in ([], ["--sampling", "group_by_length"]):
        batches.clear()
        train_run(
            tiny_model, pairs_file, tmp_path / f"run{len(flags)}", "--method", "rm", "--val-fraction", "0", *flags
        )
        assert len(batches) == 12 and all(len(b) == 4 for b in batches)  # 48 pairs, batch 4, one epoch
        # padding a batch costs (longest - each row): summed over the epoch
        spreads[bool(flags)] = sum(max(b) * len(b) - sum(b) for b in batches)
    assert spreads[True] < 0.75 * spreads[False], spreads


def test_lora_export_gives_a_full_directory_with_equal_rewards(tiny_model, pairs_file, tmp_path, capsys, train_run):
    out = train_run(
        tiny_model, pairs_file, tmp_path / "run", "--finetune", "lora", "--max-steps", "2", "--val-fraction", "0"
    )
    merged = tmp_path / "merged"
    assert main(["export", "--model", str(out), "--output-dir", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and "score.weight" in _weights(merged)
    capsys.readouterr()
    scores = []
    for directory in (out, merged):
        main(["score", "--model", str(directory), "--prompt", "Hi", "--response", "Hello there."])
        scores.append(float(capsys.readouterr().out.strip().splitlines()[-1].split("\t")[0]))
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


def test_yaml_config_with_flag_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"method": "rm", "max-length": 64, "lr": 1e-4}))
    cfg = parse_config(TrainConfig, ["--config", str(config), "--lr", "3e-4"])
    assert (cfg.method, cfg.max_length, cfg.lr) == ("rm", 64, 3e-4)
    config.write_text(yaml.safe_dump({"methd": "rm"}))
    with pytest.raises(ValueError, match="unknown field"):
        parse_config(TrainConfig, ["--config", str(config)])


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    cfg = parse_config(TrainConfig, ["--config", str(path)])
    assert cfg.method in {"rm", "dpo", "haf"}


def test_bad_data_is_a_clear_cli_error(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    assert main(["train", "--model", tiny_model, "--data", str(bad), "--output-dir", str(tmp_path / "o")]) == 1
    assert "bad.jsonl: row 1: missing field" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hafrm.cli", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--policy-loss" in result.stdout


def test_eval_reports_per_source_and_subset(tiny_model, pairs_file, tmp_path, capsys, train_run):
    out = train_run(
        tiny_model, pairs_file, tmp_path / "run", "--method", "haf", "--max-steps", "1", "--val-fraction", "0"
    )
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    second = tmp_path / "other.jsonl"
    second.write_text(
        "".join(
            json.dumps({**row, "subset": "caps" if "capital" in row["prompt"] else "lower"}) + "\n" for row in rows[:10]
        )
    )
    report_path = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--data", f"{pairs_file},{second}", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert {name: group["pairs"] for name, group in report["per_source"].items()} == {
        "pairs.jsonl": 48,
        "other.jsonl": 10,
    }
    assert set(report["per_subset"]) == {"(none)", "caps", "lower"}
    overall = report["reward_head"]["accuracy"] * 58
    parts = sum(g["reward_head"]["accuracy"] * g["pairs"] for g in report["per_source"].values())
    assert overall == pytest.approx(parts)
    assert "per source:" in capsys.readouterr().out


def test_skip_bad_rows_trains_and_counts(tiny_model, pairs_file, tmp_path, capsys, train_run):
    bad = tmp_path / "with-bad.jsonl"
    bad.write_text(pairs_file.read_text() + '{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    train_run(tiny_model, bad, tmp_path / "run", "--max-steps", "1", "--skip-bad-rows", "--val-fraction", "0")
    out = capsys.readouterr().out
    assert "skipped bad rows: identical responses 1 (row 48)" in out
    assert f"skipped rows: 1 listed in {tmp_path / 'run' / 'skipped-rows.jsonl'}" in out
    (skipped,) = [json.loads(line) for line in (tmp_path / "run" / "skipped-rows.jsonl").read_text().splitlines()]
    assert skipped == {
        "source": "with-bad.jsonl",
        "location": str(bad),
        "row": 48,
        "reason": "identical responses",
        "field": None,
        "detail": "`chosen` and `rejected` are identical",
        "line": 49,
    }


def test_training_on_mostly_truncated_pairs_is_warned_about(tiny_model, pairs_file, tmp_path, capsys, train_run):
    train_run(tiny_model, pairs_file, tmp_path / "run", "--max-steps", "1", "--max-length", "16", "--val-fraction", "0")
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: all of the 48 pairs are truncated at --max-length 16 (the longest has ")


def _hub_layout_copy(shared_data, root, rows=40):
    """A local copy of Anthropic/hh-rlhf's harmless-base files, laid out as the hub serves them."""
    import gzip

    lines = gzip.open(shared_data / "hh-harmless" / "train.jsonl.gz", "rt").read().splitlines()
    directory = root / "Anthropic" / "hh-rlhf" / "harmless-base"
    directory.mkdir(parents=True)
    for name, part in (("train", lines[:rows]), ("test", lines[rows : rows + 12])):
        with gzip.open(directory / f"{name}.jsonl.gz", "wt") as handle:
            handle.write("\n".join(part) + "\n")
    return root


def test_hh_harmless_by_name_from_a_local_copy_and_from_the_shared_file(
    shared_data, tiny_model, tmp_path, monkeypatch, capsys, train_run
):
    monkeypatch.setenv("HAFRM_DATA_DIR", str(_hub_layout_copy(shared_data, tmp_path / "hub")))
    by_name = train_run(tiny_model, "hh-harmless", tmp_path / "named", "--method", "haf", "--max-steps", "1")
    assert json.loads((by_name / "hafrm.json").read_text())["data"] == "hh-harmless"
    printed = capsys.readouterr().out
    assert "hh-harmless: 40 pairs from 40 rows" in printed

    shared_file = shared_data / "hh-harmless" / "train.jsonl.gz"
    train_run(tiny_model, shared_file, tmp_path / "file", "--method", "rm", "--max-steps", "1", "--skip-bad-rows")
    printed = capsys.readouterr().out
    assert "train.jsonl.gz: 1805 pairs from 1812 rows" in printed
    assert (
        "skipped bad rows: different prompts 5 (rows 974, 1310, 1525, 1527, 1591), empty response 2 (rows 392, 852)"
        in printed
    )

    # Evaluation on the named test split and on PandaLM (out of distribution), reported per source.
    pandalm = shared_data / "pandalm" / "testset-v1.json"
    report_path = tmp_path / "eval.json"
    argv = [
        "eval",
        "--model",
        str(by_name),
        "--data",
        f"hh-harmless,{pandalm}",
        "--skip-bad-rows",
        "--json",
        str(report_path),
        "--save-scores",
    ]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["per_source"]["hh-harmless"]["pairs"] == 12
    # PandaLM's 999 rows less 105 ties and 58 bad rows (52 empty responses, 6 non-text fields; see test_stats)
    assert report["per_source"]["testset-v1.json"]["pairs"] == report["pairs"] - 12 == 836
    # each source's accuracy from the per-pair scores: the hh-harmless pairs come first, then PandaLM's
    scores, n = report["scores"]["reward_head"], report["pairs"]
    for source, part in (("hh-harmless", slice(0, 12)), ("testset-v1.json", slice(12, n))):
        pair_scores = scores[:n][part] + scores[n:][part]
        assert report["per_source"][source]["reward_head"]["accuracy"] == pytest.approx(pair_accuracy(pair_scores))


def test_no_data_trains_on_the_builtin_set_with_its_validation_split(tiny_model, tmp_path, capsys, train_argv):
    assert main(train_argv(tiny_model, None, tmp_path / "run", "--max-steps", "1", "--eval-steps", "1")) == 0
    printed = capsys.readouterr().out
    assert "train data builtin: 1000 pairs" in printed
    assert (
        "validation data builtin:validation: 100 pairs from 100 rows (hafrm built-in set, validation split)" in printed
    )
    assert json.loads((tmp_path / "run" / "hafrm.json").read_text())["data"] == "builtin"


def test_eval_scores_a_rewardbench_file(tiny_model, pairs_file, tmp_path, capsys, train_run):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = train_run(
        tiny_model, pairs_file, tmp_path / "run", "--method", "rm", "--max-steps", "1", "--val-fraction", "0"
    )
    rows = [
        {"prompt": f"Say {word}.", "chosen": f"{word}!", "chosen_model": "a", "rejected": "No.", "rejected_model": "b",
         "subset": subset, "id": i}
        for i, (word, subset) in enumerate([("hi", "alpacaeval-easy"), ("yes", "mt-bench-hard"), ("ok", "hep-python")])
    ]  # fmt: skip
    (tmp_path / "rb" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rb" / "data" / "filtered-00000-of-00001.parquet")
    report_path = tmp_path / "rb.json"
    argv = ["eval", "--model", str(out), "--rewardbench", str(tmp_path / "rb"), "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["version"] == "v1" and report["examples"] == 3
    # each example's credit from `hafrm score` of its two responses: 1 when the chosen one scores higher
    credits = {}
    for row in rows:
        capsys.readouterr()
        responses = ["--response", row["chosen"], "--response", row["rejected"]]
        assert main(["score", "--model", str(out), "--prompt", row["prompt"], *responses]) == 0
        chosen, rejected = (float(line.split("\t")[0]) for line in capsys.readouterr().out.splitlines() if "\t" in line)
        credits[row["subset"]] = float(chosen > rejected)
    assert {subset: figures["accuracy"] for subset, figures in report["per_subset"].items()} == credits
    # one subset in each of three sections (chat, chat hard, reasoning): the score is the mean of the credits
    assert report["score"] == pytest.approx(sum(credits.values()) / 3)


def test_eval_figures_plots_and_reward_moments(tiny_model, pairs_file, tmp_path, train_run, response_logp):
    out = train_run(
        tiny_model, pairs_file, tmp_path / "run", "--method", "haf", "--max-steps", "2", "--eval-steps", "2"
    )
    config, run = (json.loads((out / name).read_text()) for name in ("config.json", "hafrm.json"))
    assert (config["mean"], config["std"]) == (run["reward_mean"], run["reward_std"]) and config["std"] > 0

    report_path, plots = tmp_path / "eval.json", tmp_path / "plots"
    argv = ["eval", "--model", str(out), "--data", str(pairs_file), "--json", str(report_path), "--plots", str(plots)]
    assert main([*argv, "--save-scores"]) == 0
    report = json.loads(report_path.read_text())
    low, high = report["reward_head"]["ci95"]
    assert low <= report["reward_head"]["accuracy"] <= high
    reward, implicit, combined = (report["scores"][head] for head in ("reward_head", "implicit_reward", "combined"))
    assert report["reward_head"]["ece"] == pytest.approx(calibration_error(reward), abs=1e-9)
    assert report["combined_lambda"]["fitted_on"].startswith("5 validation pairs")
    # the combined score is r + λ·implicit pair by pair, and its accuracy is counted from those scores
    lam = report["combined_lambda"]["lambda"]
    assert combined == pytest.approx([r + lam * i for r, i in zip(reward, implicit)], abs=1e-5)
    assert report["combined"]["accuracy"] == pytest.approx(pair_accuracy(combined))
    assert (report["truncation"]["prompt_truncated"], report["truncation"]["response_truncated"]) == (0, 0)
    for side, values in perplexities_by_hand(out, pairs_file, response_logp).items():
        assert report["perplexity"][side]["mean"] == pytest.approx(statistics.fmean(values), rel=1e-3)
        assert report["perplexity"][side]["variance"] == pytest.approx(statistics.variance(values), rel=1e-3)
    assert sorted(p.name for p in plots.glob("*.png")) == ["calibration.png", "margins.png", "perplexity.png"]


def calibration_error(scores: list[float], bins: int = 10) -> float:
    """ECE of p = σ(s_chosen − s_rejected), each pair counted both ways (p with outcome 1, 1 − p with outcome 0),
    over `bins` equal-width bins of p: Σ_b |Σ p − Σ outcome| / (2N)."""
    n = len(scores) // 2
    margins = [chosen - rejected for chosen, rejected in zip(scores[:n], scores[n:])]
    points = [(1 / (1 + math.exp(-m)), 1.0) for m in margins] + [(1 / (1 + math.exp(m)), 0.0) for m in margins]
    gaps = [0.0] * bins
    for predicted, outcome in points:
        gaps[min(int(predicted * bins), bins - 1)] += predicted - outcome
    return sum(abs(gap) for gap in gaps) / len(points)


def perplexities_by_hand(run: Path, pairs_file: Path, response_logp) -> dict[str, list[float]]:
    """Per-token perplexity exp(−log π(y|x) / |y|) of every chosen and rejected response under the run's policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hafrm.data.templates import encode_response

    policy, tokenizer = AutoModelForCausalLM.from_pretrained(run).eval(), AutoTokenizer.from_pretrained(run)
    values = {"chosen": [], "rejected": []}
    for index, line in enumerate(pairs_file.read_text().splitlines()):
        row = json.loads(line)
        for side, side_values in values.items():
            prompt_ids, response_ids = encode_response(tokenizer, row["prompt"], row[side], f"row {index}")
            side_values.append(math.exp(-response_logp(policy, prompt_ids, response_ids) / len(response_ids)))
    return values


def test_a_sharding_config_on_a_cpu_says_it_runs_unsharded(
    tiny_model, pairs_file, tmp_path, monkeypatch, capsys, train_run
):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    train_run(tiny_model, pairs_file, tmp_path / "run", "--method", "rm", "--max-steps", "1", "--val-fraction", "0")
    assert "note: no GPU here: accelerate runs this FSDP config as plain data parallel" in capsys.readouterr().out
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    train_run(tiny_model, pairs_file, tmp_path / "again", "--method", "rm", "--max-steps", "1", "--val-fraction", "0")
    assert "note: no GPU here" not in capsys.readouterr().out


def test_engines_ignored_names_deepspeed_too(monkeypatch):
    # (a whole run needs the deepspeed package: transformers asks for it as soon as the variable is set)
    from hafrm.train import engines_ignored

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert engines_ignored() == ["DeepSpeed"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "True")
    assert engines_ignored() == ["FSDP", "DeepSpeed"]


def test_a_run_prints_none_of_the_messages_a_user_cannot_act_on(tiny_model, pairs_file, tmp_path, capfd):
    """peft's deprecated-property and save_embedding_layers warnings, Trainer's tied lm_head 'missing key'."""
    import warnings

    from hafrm.known_warnings import TIED_HEAD_NOTICE

    common = ["--model", tiny_model, "--data", str(pairs_file), "--max-length", "64", "--batch-size", "4",
              "--max-steps", "2", "--eval-steps", "1"]  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["train", *common, "--finetune", "lora", "--output-dir", str(tmp_path / "lora")]) == 0
        assert main(["train", *common, "--output-dir", str(tmp_path / "full")]) == 0
    texts = [str(warning.message) for warning in seen]
    assert not [text for text in texts if "is_gradient_checkpointing" in text or "save_embedding_layers" in text]
    err = capfd.readouterr().err
    assert TIED_HEAD_NOTICE not in err


def test_a_finished_command_says_how_long_where_and_what_next(tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--max-length", "64", "--batch-size", "4",
            "--max-steps", "2", "--eval-steps", "2", "--finetune", "lora", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    closing = lines[lines.index(next(line for line in lines if line.startswith("hafrm train: done in "))) :]
    assert re.fullmatch(rf"hafrm train: done in \d+ s; the model is in {out} \(its card: {out}/README.md\)", closing[0])
    assert closing[1] == "next:" and closing[2].startswith(f"  hafrm eval --model {out} --data builtin:test")
    assert closing[-1].startswith(f"  hafrm export --model {out} --output-dir {out}-merged")
    assert main(["eval", "--model", str(out), "--data", str(pairs_file), "--json", str(tmp_path / "e.json")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("hafrm eval: done in ")
    assert main([*argv, "--resume"]) == 0  # a finished run: it says so, and nothing else
    assert "hafrm train: done" not in capsys.readouterr().out
