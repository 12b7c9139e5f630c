"""TRL preference formats, bad rows named by index, truncation counted, batches masked."""

import json

import pytest
from transformers import AutoTokenizer

from hafrm.data import DataError, PairCollator, read_pairs, split_validation, tokenize_pairs
from hafrm.data.formats import parse_row, read_rows


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_standard_explicit_prompt():
    pair = parse_row({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}, "f", 0)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Hi?", "Hello.", "Go.")


def test_standard_implicit_prompt_splits_at_a_word_boundary():
    # The shared prefix ends inside "sun"; the prompt must stop before that word.
    pair = parse_row({"chosen": "Q: weather? A: sunny", "rejected": "Q: weather? A: sunset"}, "f", 0)
    assert pair.prompt == "Q: weather? A: "
    assert (pair.chosen, pair.rejected) == ("sunny", "sunset")


def test_conversational_explicit_and_implicit():
    user = {"role": "user", "content": "Hi"}
    good, bad = {"role": "assistant", "content": "Hello"}, {"role": "assistant", "content": "Bye"}
    explicit = parse_row({"prompt": [user], "chosen": [good], "rejected": [bad]}, "f", 0)
    implicit = parse_row({"chosen": [user, good], "rejected": [user, bad]}, "f", 0)
    assert explicit.prompt == implicit.prompt == [user]
    assert explicit.chosen == implicit.chosen == [good]


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": "p", "chosen": "a"}, "missing field"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "identical"),
        ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "empty"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "must be a string"),
        ({"chosen": "abc", "rejected": "xyz"}, "share no prompt"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_rows_name_source_row_and_reason(row, reason):
    with pytest.raises(DataError, match=rf"data.jsonl: row 7: .*{reason}"):
        parse_row(row, "data.jsonl", 7)


def test_bad_row_in_a_file_is_reported_not_dropped(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2 + [{"prompt": "p"}])
    with pytest.raises(DataError, match="row 2: missing field"):
        read_pairs(path)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_pairs(str(path))


def test_json_list_gzip_and_parquet(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.json", "d.jsonl.gz", "d.parquet"):
        assert [p.chosen for p in read_pairs(str(tmp_path / name))] == ["a", "c"]


def test_missing_file_and_unreachable_hub_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rows(str(tmp_path / "absent.jsonl"))
    with pytest.raises(DataError, match="local .json/.jsonl/.parquet file"):
        read_rows("no-such-org/no-such-dataset")


def test_chat_template_marks_only_the_response(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}])
    dataset, report = tokenize_pairs(read_pairs(path), tokenizer, max_length=256)
    row = dataset[0]
    response = tokenizer.decode(row["chosen_input_ids"][row["prompt_length"] :])
    assert response.startswith("Hi there!") and "<|im_end|>" in response
    assert "Say hi." in tokenizer.decode(row["chosen_input_ids"][: row["prompt_length"]])
    assert report.prompt_truncated == report.response_truncated == 0


def test_truncation_is_counted_and_no_pair_is_dropped(tokenizer, tmp_path):
    long_prompt = "word " * 300
    rows = [
        {"prompt": long_prompt, "chosen": "short", "rejected": "also short"},
        {"prompt": "p", "chosen": "yes " * 200, "rejected": "no"},
        {"prompt": "p", "chosen": "fits", "rejected": "fine"},
    ]
    dataset, report = tokenize_pairs(read_pairs(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer, max_length=64)
    assert len(dataset) == 3
    assert report.prompt_truncated == 1 and report.response_truncated == 1
    assert report.longest > 300
    assert all(len(ids) <= 64 for ids in list(dataset["chosen_input_ids"]) + list(dataset["rejected_input_ids"]))
    assert "1 pairs" not in report.summary() and "3 pairs" in report.summary()


def test_margin_must_be_all_or_nothing(tokenizer, tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0},
        {"prompt": "p", "chosen": "c", "rejected": "d"},
    ]
    with pytest.raises(DataError, match="row 1: `margin` must be given for every row"):
        tokenize_pairs(read_pairs(write_jsonl(tmp_path / "d.jsonl", rows)), tokenizer, 64)


def test_collator_stacks_chosen_then_rejected_and_masks_responses():
    rows = [
        {"chosen_input_ids": [5, 6, 7], "rejected_input_ids": [5, 8], "prompt_length": 1, "margin": 0.5},
        {"chosen_input_ids": [9, 1], "rejected_input_ids": [9, 2, 3, 4], "prompt_length": 1, "margin": 1.0},
    ]
    right = PairCollator(pad_token_id=0)(rows)
    assert right["input_ids"].tolist() == [[5, 6, 7, 0], [9, 1, 0, 0], [5, 8, 0, 0], [9, 2, 3, 4]]
    assert right["response_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]]
    assert right["margin"].tolist() == [0.5, 1.0]
    left = PairCollator(pad_token_id=0, padding_side="left")(rows)
    assert left["input_ids"][0].tolist() == [0, 5, 6, 7]
    assert left["response_mask"][0].tolist() == [0, 0, 1, 1]


def test_packing_lays_sequences_end_to_end_with_restarting_positions():
    rows = [
        {"chosen_input_ids": [5, 6, 7], "rejected_input_ids": [5, 8], "prompt_length": 1, "margin": 0.5},
        {"chosen_input_ids": [9, 1], "rejected_input_ids": [9, 2, 3, 4], "prompt_length": 1, "margin": 1.0},
    ]
    packed = PairCollator(pad_token_id=0, packing=True)(rows)
    # sequences 0..3 = chosen 0, chosen 1, rejected 0, rejected 1; width 4 = the longest; longest first
    assert packed["input_ids"].tolist() == [[9, 2, 3, 4], [5, 6, 7, 0], [9, 1, 5, 8]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    assert packed["sequence_ids"].tolist() == [[3, 3, 3, 3], [0, 0, 0, -1], [1, 1, 2, 2]]
    assert packed["response_mask"].tolist() == [[0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 0, 1]]
    flat = packed["input_ids"].flatten()
    assert flat[packed["sequence_ends"]].tolist() == [7, 1, 8, 4]
    assert packed["margin"].tolist() == [0.5, 1.0]
    assert "attention_mask" not in packed  # the restarting positions are the mask


def test_packing_never_scores_a_sequences_first_token():
    """With no prompt, the first token of a packed sequence would be predicted from another sequence."""
    from hafrm.data.collator import pack_rows

    packed = pack_rows([[1, 2], [3, 4]], [0, 0], pad_token_id=0, width=4)
    assert packed["response_mask"].tolist() == [[0, 1, 0, 1]]
    with pytest.raises(ValueError, match="longer than the packed row width 3"):
        pack_rows([[1, 2, 3, 4]], [1], pad_token_id=0, width=3)


def test_validation_split_is_seeded_and_disjoint(pairs_file):
    pairs = read_pairs(str(pairs_file))
    train, validation = split_validation(pairs, 0.25, seed=3)
    again, _ = split_validation(pairs, 0.25, seed=3)
    assert [p.index for p in train] == [p.index for p in again]
    assert len(validation) == 12 and not {p.index for p in train} & {p.index for p in validation}


def test_real_hh_transcripts_read_as_implicit_prompt_pairs(shared_data):
    """The shared HH-harmless file (raw transcripts) read as TRL implicit-prompt rows (`--format trl`):
    every row parses but the few whose final replies leave nothing after the shared prefix, and the
    first of those stops the read by index instead of being dropped. (Auto-detection picks the HH
    transcript parser instead: tests/test_sources.py.)"""
    path = shared_data / "hh-harmless" / "train.jsonl.gz"
    rows = read_rows(str(path))
    assert len(rows) == 1812
    parsed = [parse_row(row, "hh", i) for i, row in enumerate(rows[:300])]
    assert all("\n\nHuman: " in pair.prompt for pair in parsed)
    with pytest.raises(DataError, match=r"train.jsonl.gz: row 392: empty response: `chosen` is empty"):
        read_pairs(str(path), fmt="trl")
