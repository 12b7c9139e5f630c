"""Read preference data in TRL's formats into `PreferencePair`s, naming the row of every problem.

    from hafrm.data.formats import read_rows
    rows = read_rows("pairs.jsonl")              # or .json, .jsonl.gz, .parquet, or a hub id[:split]
    # hafrm.data.read_pairs turns rows into PreferencePairs through the converter of their format

Accepted rows (TRL's preference formats; an optional numeric `margin` column is kept):
    standard, explicit prompt      {"prompt": str, "chosen": str, "rejected": str}
    standard, implicit prompt      {"chosen": str, "rejected": str}            shared prefix = prompt
    conversational, explicit       {"prompt": [msg...], "chosen": [msg...], "rejected": [msg...]}
    conversational, implicit       {"chosen": [msg...], "rejected": [msg...]}  shared turns = prompt
where a msg is {"role": str, "content": str}.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
Text = str | Messages


class DataError(ValueError):
    """A row that cannot be used: the message names the source, the row index and the reason."""


class BadRow(ValueError):
    """Raised by a row converter for a row that cannot be used.

    `reason` is a short, stable category ("empty response", "identical responses", "different
    prompts", "non-text field", "unparsable transcript", "missing field", ...) under which skipped
    rows are counted; `detail` says what exactly is wrong in this row.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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


def _read_local(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    inner_suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    if inner_suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {line_number} is not valid JSON ({error.msg})") from None
    return rows


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


def read_rows(spec: str) -> list[dict]:
    """Rows of a local json/jsonl(.gz)/parquet file, or of hub dataset `org/name[:split]`."""
    path = Path(spec)
    if path.is_file():
        return _read_local(path)
    if path.suffix in {".json", ".jsonl", ".gz", ".parquet"} or spec.startswith((".", "/")):
        raise DataError(f"{spec}: no such file")
    return _read_hub(spec)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


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


def _response_problem(value: Text, field: str) -> BadRow | None:
    if isinstance(value, str):
        return None if value.strip() else BadRow("empty response", f"`{field}` is empty")
    if not value:
        return BadRow("empty response", f"`{field}` has no messages")
    if value[-1]["role"] != "assistant":
        return BadRow(
            "no final assistant turn", f"`{field}` must end with an assistant message, not {value[-1]['role']!r}"
        )
    if not value[-1]["content"].strip():
        return BadRow("empty response", f"`{field}` has an empty final assistant message")
    return None


def _check_types(chosen: Any, rejected: Any, prompt: Any) -> bool:
    """-> whether the row is conversational; BadRow for mixed or non-text fields."""
    conversational = _is_messages(chosen)
    for field, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
        if value is None and field == "prompt":
            continue
        if conversational and not _is_messages(value):
            kind = type(value).__name__
            raise BadRow(
                "non-text field", f"`{field}` must be a list of {{role, content}} messages like `chosen`, got {kind}"
            )
        if not conversational and not isinstance(value, str):
            kind = type(value).__name__
            raise BadRow(
                "non-text field", f"`{field}` must be a string or a list of {{role, content}} messages, got {kind}"
            )
    return conversational


def to_pair(row: Any, source: str, index: int) -> PreferencePair:
    """One row in any TRL preference format -> PreferencePair, or BadRow with its reason."""
    if not isinstance(row, dict):
        raise BadRow("not an object", f"expected a JSON object, got {type(row).__name__}")
    missing = [key for key in ("chosen", "rejected") if key not in row]
    if missing:
        raise BadRow("missing field", f"missing field(s) {missing}; preference rows need `chosen` and `rejected`")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    conversational = _check_types(chosen, rejected, prompt)
    if prompt is None:
        split = _split_shared_turns if conversational else _split_shared_text
        prompt, chosen, rejected = split(chosen, rejected)
        if not prompt:
            raise BadRow("no shared prompt", "no `prompt` field and `chosen`/`rejected` share no prompt prefix")
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        problem = _response_problem(value, field)
        if problem:
            raise problem
    if chosen == rejected:
        raise BadRow("identical responses", "`chosen` and `rejected` are identical")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise BadRow("bad margin", f"`margin` must be a number, got {type(margin).__name__}")
    subset = row.get("subset")
    return PreferencePair(
        prompt,
        chosen,
        rejected,
        source,
        index,
        None if margin is None else float(margin),
        None if subset is None else str(subset),
    )


def parse_row(row: Any, source: str, index: int) -> PreferencePair:
    """`to_pair`, with a bad row turned into a DataError that names the source and the row index."""
    try:
        return to_pair(row, source, index)
    except BadRow as error:
        raise DataError(f"{source}: row {index}: {error}") from None
