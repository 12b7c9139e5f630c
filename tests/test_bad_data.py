"""Fuzz of malformed preference files: every file ends in pairs, a one-line DataError naming the row
or line, or counted skips; never another exception, never a pair that is not its row's own text.

Each generated row carries the reason it must fail with (None for a valid row), so the test checks
the exact outcome, not just the absence of a traceback: which row stops the load, which rows
`skip_bad_rows` leaves out and why, and that every pair equals its row.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafrm.data import DataError, load_data

SURROGATE = "\ud800"  # JSON's "\ud800" escape without its low half
BLANKS = ["", " ", "\t", " \n "]


@dataclass
class Line:
    """One line of a generated JSON-lines file: a row, a blank line, or bytes that are not a row."""

    row: object = None
    is_row: bool = True
    reason: str | None = None  # the BadRow reason this row must fail with; None = a valid row
    field: str | None = None  # the field the error must name, where the mutation decides it
    raw: bytes | None = None  # a broken line written as is
    broken: str | None = None  # "utf8" or "json": the file-level error the raw line causes


def _plain(text: str) -> bool:
    # Not an HH transcript (auto-detection would read the file as HH) and some text to keep.
    return bool(text.strip()) and not text.lstrip("\n").startswith("Human:")


TEXT = st.text(min_size=1, max_size=12).filter(_plain)
# A reply that an implicit split leaves whole: it starts with a character that is no whitespace.
REPLY = st.builds(
    lambda head, tail: head + tail, st.characters(exclude_categories=["Z", "Cc", "Cs"]), st.text(max_size=8)
)


@st.composite
def explicit_row(draw) -> dict:
    conversational = draw(st.booleans())
    prompt, chosen = draw(TEXT), draw(TEXT)
    rejected = draw(TEXT.filter(lambda text: text != chosen))
    if conversational:
        row = {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    else:
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if draw(st.booleans()):
        row["margin"] = draw(st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False)))
    return row


@st.composite
def implicit_row(draw) -> dict:
    shared = draw(TEXT) + " "  # ends on whitespace, so the split stops right after it
    chosen = draw(REPLY)
    rejected = draw(REPLY.filter(lambda text: text[0] != chosen[0]))
    row = {"chosen": shared + chosen, "rejected": shared + rejected}
    if draw(st.booleans()):
        row["prompt"] = None  # a null prompt in an implicit-prompt file is no prompt
    return row


def _set_text(row: dict, field: str, text) -> None:
    """Put `text` where `field`'s words are: the string itself, or the content of its one message."""
    if isinstance(row[field], list):
        row[field][0]["content"] = text
    else:
        row[field] = text


# mutation -> (how it changes a row's field, the reason it must fail with). Reasons for an explicit row.
FIELD_MUTATIONS = {
    "delete": (lambda row, field: row.pop(field), {"prompt": "missing prompt", None: "missing field"}),
    "null": (lambda row, field: row.__setitem__(field, None), {"prompt": "null prompt", None: "non-text field"}),
    "number": (lambda row, field: row.__setitem__(field, 3), {None: "non-text field"}),
    "blank": (lambda row, field: _set_text(row, field, " "), {"prompt": "empty prompt", None: "empty response"}),
    "surrogate": (lambda row, field: _set_text(row, field, "x" + SURROGATE), {None: "undecodable text"}),
}
BAD_MARGINS = [float("nan"), float("inf"), -float("inf"), "1.5", True, [1], 10**400]


@st.composite
def mutated_row(draw, mode: str) -> Line:
    row = draw(explicit_row() if mode == "explicit" else implicit_row())
    kind = draw(st.sampled_from(["field"] * 4 + ["margin", "identical", "not an object", "subset"]))
    if kind == "not an object":
        return Line(draw(st.sampled_from([[1, 2], 3, "text", None])), reason="not an object")
    if kind == "margin":
        return Line({**row, "margin": draw(st.sampled_from(BAD_MARGINS))}, reason="bad margin", field="margin")
    if kind == "subset":
        return Line({**row, "subset": "kind" + SURROGATE}, reason="undecodable text", field="subset")
    if kind == "identical" and mode == "explicit":
        return Line({**row, "rejected": row["chosen"]}, reason="identical responses")
    fields = ["prompt", "chosen", "rejected"] if mode == "explicit" else ["chosen", "rejected"]
    field = draw(st.sampled_from(fields))
    mutation = draw(st.sampled_from(list(FIELD_MUTATIONS)))
    change, reasons = FIELD_MUTATIONS[mutation]
    change(row, field)
    if mode == "implicit" and mutation == "blank":
        # The replies no longer share the prefix that was their prompt: no column is at fault.
        return Line(row, reason="no shared prompt")
    return Line(row, reason=reasons.get(field, reasons[None]), field=field)


@st.composite
def preference_file(draw) -> tuple[str, bool, list[Line], float | None]:
    """-> (layout, ensure_ascii, lines, gzip cut fraction or None)."""
    layout = draw(st.sampled_from(["jsonl", "json", "jsonl.gz"]))
    mode = draw(st.sampled_from(["explicit", "implicit"]))
    valid = explicit_row() if mode == "explicit" else implicit_row()
    lines = [Line(draw(valid))]  # an untouched row keeps an explicit file explicit wherever the others lose prompts
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(st.one_of(valid.map(Line), mutated_row(mode))))
    if layout != "json":
        broken = [
            Line(is_row=False),
            Line(is_row=False),
            Line(is_row=False, raw=b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', broken="utf8"),
            Line(is_row=False, raw=b'{"prompt": "p", "chosen": ', broken="json"),
        ]
        lines += draw(st.lists(st.sampled_from(broken), max_size=1))
    lines = draw(st.permutations(lines))
    cut = draw(st.floats(0.05, 0.95)) if layout == "jsonl.gz" and draw(st.booleans()) else None
    return layout, draw(st.booleans()), lines, cut


def _encode(line: Line, ensure_ascii: bool) -> bytes:
    if line.raw is not None:
        return line.raw
    if not line.is_row:
        return b""
    # Without ensure_ascii a lone surrogate is written as the bytes no UTF-8 reader accepts.
    return json.dumps(line.row, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def write(directory: Path, layout: str, ensure_ascii: bool, lines: list[Line], cut: float | None) -> tuple[Path, bytes]:
    """Write the file -> (its path, the uncompressed bytes a reader can get out of it)."""
    if layout == "json":
        text = b"[\n" + b",\n".join(_encode(line, ensure_ascii) for line in lines) + b"\n]\n"
    else:
        text = b"".join(_encode(line, ensure_ascii) + b"\n" for line in lines)
    path = directory / f"data.{layout}"
    if layout == "jsonl.gz":
        packed = gzip.compress(text)
        if cut is not None:
            packed = packed[: max(1, int(len(packed) * cut))]
            text = zlib.decompressobj(wbits=31).decompress(packed)  # all a reader can get: one call, no stream end
        path.write_bytes(packed)
    else:
        path.write_bytes(text)
    return path, text


def _line_number(layout: str, position: int) -> int:
    return position + 2 if layout == "json" else position + 1  # a JSON list opens with "[" on line 1


def file_error(layout: str, ensure_ascii: bool, lines: list[Line], cut: float | None, text: bytes) -> str | None:
    """The regex the DataError of a broken file must match, or None where the file itself reads."""
    if cut is not None:
        complete = [n for n, line in enumerate(text.split(b"\n")[:-1], 1) if line.strip()]
        if not complete:
            return "the gzip archive is truncated or corrupt before its first complete line"
        return rf"truncated or corrupt after row {len(complete) - 1} \(line {complete[-1]}\), the last complete one"
    for position, line in enumerate(lines):
        undecodable = line.broken == "utf8" or (
            not ensure_ascii and SURROGATE in json.dumps(line.row, ensure_ascii=False)
        )
        if line.is_row or line.raw is not None:
            if undecodable:
                return rf"line {_line_number(layout, position)} is not valid UTF-8"
    for position, line in enumerate(lines):
        if line.broken == "json":
            return rf"line {_line_number(layout, position)} is not valid JSON"
    rows = [line.row for line in lines if line.is_row]
    if not isinstance(rows[0], dict):
        return "row 0 is a"
    if not {"chosen", "rejected"} <= rows[0].keys():
        return "row 0: cannot tell the format"
    return None


def check_pair(pair, row: dict) -> None:
    """The pair is the row's own text: an explicit row unchanged, an implicit one split without loss."""
    if row.get("prompt") is not None:
        assert (pair.prompt, pair.chosen, pair.rejected) == (row["prompt"], row["chosen"], row["rejected"])
    else:
        assert isinstance(pair.prompt, str) and pair.prompt.strip()
        assert (pair.prompt + pair.chosen, pair.prompt + pair.rejected) == (row["chosen"], row["rejected"])
    margin = row.get("margin")
    assert pair.margin == (None if margin is None else float(margin)) and (margin is None or math.isfinite(margin))


def assert_one_line(error: DataError, path: Path) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(str(path)), message
    message.encode("utf-8")  # printable, even when a row held a lone surrogate
    return message


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(preference_file())
def test_malformed_files_end_in_pairs_a_named_error_or_counted_skips(case):
    layout, ensure_ascii, lines, cut = case
    with tempfile.TemporaryDirectory() as directory:
        path, text = write(Path(directory), layout, ensure_ascii, lines, cut)
        expected_file_error = file_error(layout, ensure_ascii, lines, cut, text)
        row_lines = [(position, line) for position, line in enumerate(lines) if line.is_row]
        bad = [(index, line) for index, (_, line) in enumerate(row_lines) if line.reason]
        for skip in (False, True):
            try:
                pairs, reports = load_data(str(path), skip_bad_rows=skip)
            except DataError as error:
                message = assert_one_line(error, path)
                if expected_file_error:
                    assert re.search(expected_file_error, message), (expected_file_error, message)
                elif not skip:
                    index, line = bad[0]
                    assert message.startswith(f"{path}: row {index}: {line.reason}"), (line, message)
                    if line.field:
                        assert f"field `{line.field}`" in message
                    if layout != "json":
                        position = row_lines[index][0]
                        assert f"line {_line_number(layout, position)};" in message
                else:
                    assert len(bad) == len(row_lines), message  # only a file of nothing but bad rows fails
                    assert message.startswith(f"{path}: no usable pairs (") and "skipped bad rows: " in message
                continue
            assert expected_file_error is None, expected_file_error
            assert not bad or skip, bad
            (report,) = reports
            assert [(s.row, s.reason) for s in report.skipped] == [(index, line.reason) for index, line in bad]
            assert report.pairs + len(report.skipped) + sum(report.filtered.values()) == report.rows == len(row_lines)
            good = [index for index, (_, line) in enumerate(row_lines) if not line.reason]
            assert [pair.index for pair in pairs] == good
            for pair in pairs:
                check_pair(pair, row_lines[pair.index][1].row)


ARENA = {"turn": 1, "conversation_a": [], "conversation_b": []}
PANDALM = {"instruction": "Say hi.", "response1": "Hi.", "response2": "Go.", "annotator2": 1, "annotator3": 1}


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"conversations": [{"from": ["human"], "value": "Hi"}], "chosen": {}, "rejected": {}},
            "row 0: unknown role: `conversations` has a message from ['human']",
        ),
        ({**PANDALM, "annotator1": True}, "row 0: bad label: `annotator1` must be 0, 1 or 2, got True"),
        ({**PANDALM, "annotator1": 1, "input": 3}, "row 0: non-text field: `input` must be a string, got int"),
        ({**ARENA, "winner": ["model_a"]}, "row 0: invalid label: `winner` must be model_a, model_b or a tie"),
    ],
)
def test_wrong_types_in_other_formats_are_bad_rows(tmp_path, row, message):
    """Values of the wrong type (unhashable, bool for int) in the other formats' label and text fields."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as error:
        load_data(str(path))
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


def test_a_message_role_outside_the_four_is_refused_naming_file_row_and_field(tmp_path):
    path = tmp_path / "robot.jsonl"
    good = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}]}
    rows = [
        {**good, "rejected": [{"role": "assistant", "content": "Go"}]},
        {**good, "rejected": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "Beep"}]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError) as refused:
        load_data(str(path))
    assert str(refused.value) == (
        f"{path}: row 1: unknown role: `rejected[1].role` is 'robot'; a message's role is one of assistant, system, "
        "tool, user (field `rejected`; line 2; --skip-bad-rows leaves such rows out)"
    )
    pairs, reports = load_data(str(path), skip_bad_rows=True)
    assert len(pairs) == 1 and [skip.reason for skip in reports[0].skipped] == ["unknown role"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_key_given_twice_in_one_object_is_refused(tmp_path, suffix):
    path = tmp_path / f"twice{suffix}"
    row = '{"prompt": "Hi", "chosen": "Hello", "rejected": "Go", "chosen": "Bye"}'
    path.write_text(
        f"[{row}]" if suffix == ".json" else '{"prompt": "Hi", "chosen": "A", "rejected": "B"}\n' + row + "\n"
    )
    with pytest.raises(DataError) as refused:
        load_data(str(path))
    where = f"{path}: the file" if suffix == ".json" else f"{path}: line 2"
    assert str(refused.value) == (
        f"{where}: the key 'chosen' appears twice in one object (JSON would keep the last silently); give each field once"
    )
