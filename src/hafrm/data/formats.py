"""Read preference data in TRL's formats into `PreferencePair`s, naming the row of every problem.

    from hafrm.data.formats import read_rows
    rows = read_rows("pairs.jsonl")              # or .json, .jsonl.gz, .parquet, or a hub id[:split]
    # hafrm.data.read_pairs turns rows into PreferencePairs through the converter of their format

Accepted rows (TRL's preference formats; an optional numeric `margin` column is kept):
    standard, explicit prompt      {"prompt": str, "chosen": str, "rejected": str}
    standard, implicit prompt      {"chosen": str, "rejected": str}            shared prefix = prompt
    conversational, explicit       {"prompt": [msg...], "chosen": [msg...], "rejected": [msg...]}
    conversational, implicit       {"chosen": [msg...], "rejected": [msg...]}  shared turns = prompt
where a msg is {"role": str, "content": str}. A file whose rows give a prompt must give one on every
row: a missing, null or blank prompt there is a bad row, never a prompt split off the responses.
"""

from __future__ import annotations

import codecs
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
Text = str | Messages
GZIP_PIECE = 1 << 16  # compressed bytes fed to zlib at a time


class DataError(ValueError):
    """Data that cannot be used: the one-line message names the file (or source), the row or line, and the reason."""


class BadRow(ValueError):
    """Raised by a row converter for a row that cannot be used.

    `reason` is a short, stable category ("empty response", "identical responses", "different
    prompts", "non-text field", "missing field", "empty prompt", "null prompt", "bad margin",
    "undecodable text", ...) under which skipped rows are counted; `field` is the column at fault
    (None when the row as a whole is); `detail` says what exactly is wrong in this row.

        raise BadRow("bad margin", "`margin` is nan; margins must be finite", field="margin")
    """

    def __init__(self, reason: str, detail: str = "", field: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.field = field


class FilteredRow(Exception):
    """Raised by a row converter for a row its source's documented rule leaves out (a tie, a pair
    where both responses are safe, a multi-turn battle...). Always left out, always counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class PreferencePair:
    prompt: Text  # str, or the conversation before the response
    chosen: Text  # str, or the assistant message(s) that answer it
    rejected: Text
    source: str  # where the row came from: a named source, a file, a hub id; reports group by it
    index: int  # row index in that source
    margin: float | None = None
    subset: str | None = None  # finer grouping inside a source (RewardBench subsets, built-in constraint kinds)


def one_line(text: str) -> str:
    """`text` as one printable line: a message that quotes row text must neither wrap nor fail to print.

    one_line("a\\nb \\ud800")  # 'a b \\\\ud800'
    """
    text = " ".join(text.splitlines())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates -> \\udXXX


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or a DataError naming the line and byte that is not."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)  # 1-based byte in its line
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[error.start]:02x} at byte {column} of the line); "
            "save the file as UTF-8 (it may be latin-1 or cp1252)"
        ) from None


def _last_complete_line(data: bytes) -> tuple[int, int]:
    """-> (line number, 0-based row index) of the last complete non-blank line of `data`; (0, -1) if none."""
    line, row = 0, -1
    for number, text in enumerate(data.split(b"\n")[:-1], start=1):  # the piece after the last newline is cut
        if text.strip():
            line, row = number, row + 1
    return line, row


def _inflate_member(inflater, data: bytes) -> tuple[list[bytes], zlib.error | None]:
    """Feed one gzip member to `inflater` -> (what it decompressed, the zlib error that stopped it or None).

    Fed in pieces, and a piece that fails is fed again byte by byte from a copy taken before it, so
    everything decompressed up to the broken byte is kept (a failed call returns nothing).
    """
    out = []
    for start in range(0, len(data), GZIP_PIECE):
        before = inflater.copy()
        try:
            out.append(inflater.decompress(data[start : start + GZIP_PIECE]))
        except zlib.error as error:
            for offset in range(start, min(start + GZIP_PIECE, len(data))):
                try:
                    out.append(before.decompress(data[offset : offset + 1]))
                except zlib.error:
                    break
            return out, error
        if inflater.eof:
            break
    return out, None


def _gunzip(path: Path, jsonl: bool) -> bytes:
    """The decompressed bytes of `path` (every member), or a DataError naming the last complete row read
    before the archive broke: a truncated download or a corrupt byte."""
    data, chunks, error = path.read_bytes(), [], None
    while data and error is None:
        inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer (CRC checked)
        out, error = _inflate_member(inflater, data)
        chunks += out
        if error is None and not inflater.eof:
            error = EOFError("the archive ends before its end-of-stream marker")
        data = inflater.unused_data.lstrip(b"\0")  # gzip allows zero padding between and after members
    if error is None:
        return b"".join(chunks)
    line, row = _last_complete_line(b"".join(chunks))
    if line == 0:
        where = "before its first complete line"
    else:
        where = f"after row {row} (line {line})" if jsonl else f"after line {line}"
        where += ", the last complete one read"
    raise DataError(one_line(f"{path}: the gzip archive is truncated or corrupt {where} ({error})"))


class DuplicateKey(ValueError):
    """A JSON object gave one key twice (json.loads would keep the last silently)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object's (key, value) pairs -> dict; a key given twice is an error (json.loads would keep the last)."""
    value = {}
    for key, item in pairs:
        if key in value:
            raise DuplicateKey(key)
        value[key] = item
    return value


def _parse_json(text: str, where: str) -> Any:
    """json.loads, or a DataError naming `where` and the line and column of the fault, or the key given twice."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as error:
        raise DataError(
            one_line(f"{where}: the key {error.args[0]!r} appears twice in one object (JSON would keep the last "
                     "silently); give each field once")
        ) from None  # fmt: skip
    except json.JSONDecodeError as error:
        at = f"line {error.lineno}, column {error.colno}" if error.lineno > 1 else f"column {error.colno}"
        raise DataError(f"{where} is not valid JSON at {at} ({error.msg})") from None
    except (ValueError, RecursionError) as error:  # an int of over 4300 digits; nesting deeper than the stack
        raise DataError(one_line(f"{where} is not usable JSON ({type(error).__name__}: {error})")) from None


def _parse_jsonl(text: str, path: Path) -> tuple[list, list[int]]:
    rows, lines = [], []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines breaks at.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            rows.append(_parse_json(line, f"{path}: line {line_number}"))
            lines.append(line_number)
    return rows, lines


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError, ValueError) as error:  # not parquet, cut short, or undecodable strings
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(one_line(f"{path}: cannot read it as parquet ({type(error).__name__}: {first_line})")) from None


def _read_local(path: Path) -> tuple[list, list[int] | None]:
    if path.suffix == ".parquet":
        return _read_parquet(path), None
    inner_suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    try:
        data = _gunzip(path, inner_suffix != ".json") if path.suffix == ".gz" else path.read_bytes()
    except OSError as error:  # permissions, a directory, a disk error: name the file, not a traceback
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    text = _decode(data, path)
    if inner_suffix == ".json" and text.lstrip().startswith("["):
        return _parse_json(text, f"{path}: the file"), None
    return _parse_jsonl(text, path)


def _read_hub(spec: str) -> list[dict]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        return list(datasets.load_dataset(name, split=split or "train"))
    except Exception as error:  # datasets raises many types for a missing or offline dataset
        raise DataError(
            f"could not load {spec!r} as a local file or a hub dataset ({type(error).__name__}: {error}). "
            "Pass a local .json/.jsonl/.parquet file, or download the dataset where the hub is reachable."
        ) from error


def read_rows_and_lines(spec: str) -> tuple[list, list[int] | None]:
    """`read_rows`, with the 1-based line of each row for JSON-lines files (None for other layouts).

    rows, lines = read_rows_and_lines("pairs.jsonl")   # lines[i]: where rows[i] sits, blank lines counted
    """
    path = Path(spec)
    if path.is_file():
        return _read_local(path)
    if path.suffix in {".json", ".jsonl", ".gz", ".parquet"} or spec.startswith((".", "/")):
        raise DataError(f"{spec}: no such file")
    return _read_hub(spec), None


def read_rows(spec: str) -> list:
    """Rows of a local json/jsonl(.gz)/parquet file, or of hub dataset `org/name[:split]`.

    A file that cannot be read (not UTF-8, a broken gzip archive, a line that is not JSON, not parquet)
    is a DataError naming the file and the line.
    """
    return read_rows_and_lines(spec)[0]


# The roles of the chat messages TRL's conversational formats and the chat templates know.
ROLES = ("assistant", "system", "tool", "user")


def _role_problem(value: list, field: str) -> BadRow | None:
    """A message whose role is not one of ROLES (a template may render `robot` as anything), as a BadRow."""
    for i, message in enumerate(value):
        if message["role"] not in ROLES:
            return BadRow(
                "unknown role",
                f"`{field}[{i}].role` is {one_line(message['role'][:40])!r}; a message's role is one of {', '.join(ROLES)}",
                field,
            )
    return None


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def _is_blank(value: Text) -> bool:
    """No text at all: an empty or whitespace-only string, or messages none of which says anything."""
    if isinstance(value, str):
        return not value.strip()
    return not any(message["content"].strip() for message in value)


def undecodable_text(row: dict) -> BadRow | None:
    """The first string of `row` (keys and nested values too) that UTF-8 cannot encode, as a BadRow.

    undecodable_text({"chosen": "ok \\ud800"}).field  # 'chosen'
    Only a lone surrogate is such a string: JSON's "\\ud800" escape without its pair, which every later
    step (tokenizer, report, log) would choke on.
    """
    for key, value in row.items():
        stack = [key, value]  # a stack, not recursion: JSON may nest deeper than Python's recursion limit
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if item.isascii():
                    continue
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as error:
                    field = one_line(str(key))
                    character = item[error.start]
                    return BadRow(
                        "undecodable text",
                        f"`{field}` holds the lone surrogate {character!r} at character {error.start}, which is not "
                        "text UTF-8 can encode (a JSON \\u escape without its pair?)",
                        field,
                    )
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
    return None


def _split_shared_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit-prompt strings: the longest shared prefix, backed off to a whitespace boundary."""
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    while shared > 0 and not chosen[shared - 1].isspace():
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _split_shared_turns(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _split_implicit(chosen: Text, rejected: Text, conversational: bool) -> tuple[Text, Text, Text]:
    """(prompt, chosen, rejected) of an implicit-prompt row; a prompt of nothing but whitespace is no prompt."""
    split = _split_shared_turns if conversational else _split_shared_text
    prompt, chosen, rejected = split(chosen, rejected)
    if _is_blank(prompt):
        blank = " but whitespace" if prompt else ""
        raise BadRow("no shared prompt", f"no `prompt` field and `chosen`/`rejected` share no prompt prefix{blank}")
    return prompt, chosen, rejected


def _response_problem(value: Text, field: str) -> BadRow | None:
    if isinstance(value, str):
        return None if value.strip() else BadRow("empty response", f"`{field}` is empty", field)
    if not value:
        return BadRow("empty response", f"`{field}` has no messages", field)
    if value[-1]["role"] != "assistant":
        return BadRow(
            "no final assistant turn",
            f"`{field}` must end with an assistant message, not {value[-1]['role']!r}",
            field,
        )
    if not value[-1]["content"].strip():
        return BadRow("empty response", f"`{field}` has an empty final assistant message", field)
    return None


def _check_types(chosen: Any, rejected: Any, prompt: Any) -> bool:
    """-> whether the row is conversational; BadRow for mixed or non-text fields."""
    conversational = _is_messages(chosen)
    for field, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
        if value is None and field == "prompt":
            continue
        kind = "null" if value is None else type(value).__name__
        if conversational and not _is_messages(value):
            detail = f"`{field}` must be a list of {{role, content}} messages like `chosen`, got {kind}"
            raise BadRow("non-text field", detail, field)
        if not conversational and not isinstance(value, str):
            detail = f"`{field}` must be a string or a list of {{role, content}} messages, got {kind}"
            raise BadRow("non-text field", detail, field)
        problem = _role_problem(value, field) if conversational else None
        if problem:
            raise problem
    return conversational


def _given_prompt(row: dict, explicit_prompt: bool) -> Any:
    """The row's own prompt, or None where the prompt is to be split off the responses (implicit-prompt data)."""
    if row.get("prompt") is not None or not explicit_prompt:
        return row.get("prompt")
    # Splitting here would silently turn the shared start of the two responses (often " ") into the prompt.
    if "prompt" not in row:
        raise BadRow("missing prompt", "the row has no `prompt`, though other rows of this file give theirs", "prompt")
    raise BadRow("null prompt", "`prompt` is null, though other rows of this file give theirs", "prompt")


def _margin(row: dict) -> float | None:
    margin = row.get("margin")
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise BadRow("bad margin", f"`margin` must be a number, got {type(margin).__name__}", "margin")
    try:
        value = float(margin)
    except OverflowError:  # an integer beyond float range
        value = math.inf
    if not math.isfinite(value):
        shown = margin if isinstance(margin, float) else "an integer too large for a float"
        raise BadRow(
            "bad margin",
            f"`margin` is {shown}; a margin must be finite (one non-finite margin makes every weight NaN)",
            "margin",
        )
    return value


def to_pair(row: Any, source: str, index: int, explicit_prompt: bool = False) -> PreferencePair:
    """One row in any TRL preference format -> PreferencePair, or BadRow with its reason and field.

    to_pair({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}, "f.jsonl", 0)
    `explicit_prompt`: the row's data set gives prompts (some row has one), so this row must give its own
    (a non-blank string or messages); otherwise a row without one is split into a shared prompt and replies.
    """
    if not isinstance(row, dict):
        raise BadRow("not an object", f"expected a JSON object, got {type(row).__name__}")
    undecodable = undecodable_text(row)
    if undecodable:
        raise undecodable
    missing = [key for key in ("chosen", "rejected") if key not in row]
    if missing:
        detail = f"missing field(s) {missing}; preference rows need `chosen` and `rejected`"
        raise BadRow("missing field", detail, missing[0])
    chosen, rejected, prompt = row["chosen"], row["rejected"], _given_prompt(row, explicit_prompt)
    conversational = _check_types(chosen, rejected, prompt)
    if prompt is None:
        prompt, chosen, rejected = _split_implicit(chosen, rejected, conversational)
    elif _is_blank(prompt):
        raise BadRow("empty prompt", "`prompt` is empty or only whitespace", "prompt")
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        problem = _response_problem(value, field)
        if problem:
            raise problem
    if chosen == rejected:
        raise BadRow("identical responses", "`chosen` and `rejected` are identical")
    subset = row.get("subset")
    return PreferencePair(
        prompt, chosen, rejected, source, index, _margin(row), None if subset is None else str(subset)
    )


def bad_row_message(location: str, index: int, error: BadRow, line: int | None = None, hint: str = "") -> str:
    """The one-line DataError text for a bad row: location, row, reason, detail, then field, line and `hint`.

    bad_row_message("d.jsonl", 3, BadRow("bad margin", "`margin` is nan", "margin"), line=4)
    # 'd.jsonl: row 3: bad margin: `margin` is nan (field `margin`, line 4)'
    """
    notes = [f"field `{error.field}`"] if error.field else []
    notes += [f"line {line}"] if line is not None else []
    notes += [hint] if hint else []
    return one_line(f"{location}: row {index}: {error}" + (f" ({'; '.join(notes)})" if notes else ""))


def parse_row(row: Any, source: str, index: int) -> PreferencePair:
    """`to_pair`, with a bad row turned into a DataError that names the source, the row index and the field."""
    try:
        return to_pair(row, source, index)
    except BadRow as error:
        raise DataError(bad_row_message(source, index, error)) from None
