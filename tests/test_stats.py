"""`hafrm data stats`: Table 1 figures checked by hand on a small file, then on the shared data."""

import json
from collections import Counter

import pytest
from transformers import AutoTokenizer

from hafrm.cli import main
from hafrm.data.stats import data_stats


def test_figures_on_a_small_file(tokenizer_dir, tmp_path):
    rows = [
        {"prompt": "one two three", "chosen": "a b c d", "rejected": "e f"},
        {"prompt": "one two three", "chosen": "a b c d", "rejected": "e f"},  # duplicate pair
        {"prompt": "four five", "chosen": "g", "rejected": "h i j"},
        {"prompt": "six", "chosen": "same", "rejected": "same"},  # bad: identical
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    (stats,) = data_stats([str(path)], tokenizer, max_length=10_000)
    assert stats.pairs == 3 and stats.left_out == {"bad: identical responses": 1}
    assert stats.duplicate_pairs == 1 and stats.duplicate_prompts == 1
    assert stats.prompt_words == pytest.approx((3 + 3 + 2) / 3)
    assert stats.response_words == pytest.approx((4 + 2 + 4 + 2 + 1 + 3) / 6)
    assert stats.longer_chosen_share == pytest.approx(2 / 3)
    assert stats.truncated_share == 0.0
    (short,) = data_stats([str(path)], tokenizer, max_length=stats.tokens_max - 1)
    assert short.truncated_share == pytest.approx(2 / 3)  # the two copies of the longest pair lose a token


def test_cli_prints_table_one_for_the_shared_files(shared_data, tokenizer_dir, tmp_path, capsys):
    hh = shared_data / "hh-harmless" / "train.jsonl.gz"
    pandalm = shared_data / "pandalm" / "testset-v1.json"
    out = tmp_path / "stats.json"
    argv = [
        "data",
        "stats",
        str(hh),
        str(pandalm),
        "--model",
        str(tokenizer_dir),
        "--max-length",
        "256",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train.jsonl.gz" in printed and "testset-v1.json" in printed and ">256" in printed
    figures = {row["source"]: row for row in json.loads(out.read_text())}
    assert figures["train.jsonl.gz"]["pairs"] + sum(figures["train.jsonl.gz"]["left_out"].values()) == 1812
    assert 0 < figures["train.jsonl.gz"]["truncated_share"] < 1
    # PandaLM's rows without a majority of two votes for one response (a tie, 0, or none) are left out
    rows = json.loads(pandalm.read_text())
    votes = [Counter(row[f"annotator{i}"] for i in (1, 2, 3)).most_common(1)[0] for row in rows]
    ties = sum(count < 2 or label == 0 for label, count in votes)
    assert figures["testset-v1.json"]["left_out"]["rule: tie"] == ties == 105
    assert figures["testset-v1.json"]["pairs"] + sum(figures["testset-v1.json"]["left_out"].values()) == len(rows)
