"""`--data` values: grammar, file splits, mixtures with weights, bad rows counted or named."""

import json

import pytest

from hafrm.data import DataError, SkippedRow, load_data, write_skipped_rows
from hafrm.data.load import DataItem, parse_spec


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def rows(n, tag="x"):
    return [{"prompt": f"{tag} prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def test_spec_grammar():
    assert parse_spec("a:train:0.5, b") == [DataItem("a", "train", 0.5), DataItem("b")]
    assert parse_spec("org/name:test") == [DataItem("org/name", "test")]
    assert parse_spec("a:2") == [DataItem("a", None, 2.0)]
    with pytest.raises(DataError, match="positive"):
        parse_spec("a:-1")
    with pytest.raises(DataError, match="TARGET"):
        parse_spec("a:b:c:d")


def test_file_split_carves_a_fixed_held_out_tenth(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(50))
    train, _ = load_data(f"{path}:train")
    test, _ = load_data(f"{path}:test")
    again, _ = load_data(f"{path}:test")
    assert (len(train), len(test)) == (45, 5)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in test})
    assert [p.prompt for p in test] == [p.prompt for p in again]
    assert test[0].source == "d.jsonl:test"
    with pytest.raises(DataError, match="`train` \\(90%\\) or `test`"):
        load_data(f"{path}:validation")


def test_bad_rows_stop_with_location_or_are_counted(tmp_path):
    data = rows(4) + [
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": " ", "rejected": "b"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", data)
    with pytest.raises(DataError, match=r"d.jsonl: row 4: identical responses.*--skip-bad-rows"):
        load_data(path)
    pairs, (report,) = load_data(path, skip_bad_rows=True)
    assert len(pairs) == 4
    assert dict(report.bad) == {"identical responses": 1, "empty response": 1}
    assert report.summary() == (
        f"d.jsonl: 4 pairs from 6 rows ({path}); "
        "skipped bad rows: identical responses 1 (row 4), empty response 1 (row 5)"
    )


def test_skipped_rows_are_listed_per_reason_and_written_in_full(tmp_path):
    data = rows(12)
    for index in (1, 3, 4, 6, 8, 10, 11):
        data[index] = {**data[index], "margin": float("nan")}
    data[5] = {"prompt": None, "chosen": "c", "rejected": "d"}
    path = write_jsonl(tmp_path / "d.jsonl", data)
    pairs, (report,) = load_data(path, skip_bad_rows=True)
    assert [pair.index for pair in pairs] == [0, 2, 7, 9]
    assert report.summary() == (
        f"d.jsonl: 4 pairs from 12 rows ({path}); skipped bad rows: "
        "bad margin 7 (rows 1, 3, 4, 6, 8, ...), null prompt 1 (row 5)"
    )
    nan_detail = "`margin` is nan; a margin must be finite (one non-finite margin makes every weight NaN)"
    assert report.skipped[:2] == [
        SkippedRow(1, "bad margin", "margin", nan_detail, line=2),
        SkippedRow(3, "bad margin", "margin", nan_detail, line=4),
    ]
    other = write_jsonl(tmp_path / "e.jsonl", rows(2) + [{"prompt": "p", "chosen": "same", "rejected": "same"}])
    _, reports = load_data(f"{path},{other}", skip_bad_rows=True)
    out = tmp_path / "run" / "skipped-rows.jsonl"
    assert write_skipped_rows(reports, out) == 9
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["source"], r["row"], r["line"], r["reason"]) for r in written] == [
        ("d.jsonl", 1, 2, "bad margin"),
        ("d.jsonl", 3, 4, "bad margin"),
        ("d.jsonl", 4, 5, "bad margin"),
        ("d.jsonl", 5, 6, "null prompt"),
        ("d.jsonl", 6, 7, "bad margin"),
        ("d.jsonl", 8, 9, "bad margin"),
        ("d.jsonl", 10, 11, "bad margin"),
        ("d.jsonl", 11, 12, "bad margin"),
        ("e.jsonl", 2, 3, "identical responses"),
    ]
    assert written[3] == {
        "source": "d.jsonl",
        "location": path,
        "row": 5,
        "line": 6,
        "field": "prompt",
        "reason": "null prompt",
        "detail": "`prompt` is null, though other rows of this file give theirs",
    }
    assert written[8]["field"] is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["skipped-rows.jsonl"]  # no temporary file left


def test_write_skipped_rows_with_nothing_skipped_writes_an_empty_file(tmp_path):
    _, reports = load_data(write_jsonl(tmp_path / "d.jsonl", rows(3)), skip_bad_rows=True)
    out = tmp_path / "skipped-rows.jsonl"
    assert write_skipped_rows(reports, out) == 0
    assert out.read_text() == ""


def test_every_row_bad_is_an_error_that_lists_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "  ", "chosen": "a", "rejected": "b"}] * 2)
    with pytest.raises(DataError) as error:
        load_data(path, skip_bad_rows=True)
    assert str(error.value) == (
        f"{path}: no usable pairs (d.jsonl: 0 pairs from 2 rows ({path}); skipped bad rows: empty prompt 2 (rows 0, 1))"
    )


def test_mixture_weights_and_even_mixing(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows(40, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", rows(10, "b"))
    pairs, reports = load_data(f"{a}:0.5,{b}:2", seed=1)
    by_source = {r.source: r.used for r in reports}
    assert by_source == {"a.jsonl": 20, "b.jsonl": 20}
    assert sum(p.source == "a.jsonl" for p in pairs) == 20
    assert len({p.prompt for p in pairs if p.source == "b.jsonl"}) == 10  # every b pair kept, then repeated
    even, _ = load_data(f"{a},{b}", mixture="even")
    assert sum(p.source == "a.jsonl" for p in even) == sum(p.source == "b.jsonl" for p in even) == 10


def test_builtin_is_a_source_with_three_splits():
    train, (report,) = load_data("builtin")
    test, _ = load_data("builtin:test")
    assert report.source == "builtin" and (len(train), len(test)) == (1000, 200)  # the default sizes of the splits
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in test})
    assert all(p.subset for p in test)
