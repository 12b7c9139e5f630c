"""Row converters from the preference formats users bring to TRL rows, and format detection.

    from hafrm.data.converters import converter_for, detect_format
    convert = converter_for(detect_format(rows[0]))      # or converter_for("pandalm")
    trl_row = convert(row)                               # or BadRow / FilteredRow

| format | fields | rule |
|---|---|---|
| trl | prompt?, chosen, rejected (+ margin, subset) | TRL's four preference formats; RewardBench files are this with `subset` |
| hh | chosen, rejected as "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts | final replies differ, the turns before are the prompt |
| sharegpt | conversations, chosen, rejected ({from, value} or {role, content} messages) | LLaMA-Factory's preference layout |
| pandalm | instruction, input, response1, response2, annotator1..3 | majority of three votes; a tie (0) or no majority is left out |
| llmbar | input, output_1, output_2, label (1 or 2) | LLMBar / RewardBench-style pairwise rows |
| beaver-safe, alpaca-human-pref, chatbot-arena | their published schemas | see `hafrm.data.sources` |
"""

from __future__ import annotations

from collections.abc import Callable

from .formats import BadRow, DataError
from .sources import SOURCES, _text, convert_hh, convert_pandalm, is_hh_row

Converter = Callable[[dict], dict]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def from_trl(row: dict) -> dict:
    return row


def _sharegpt_message(message, field: str) -> dict:
    if not isinstance(message, dict):
        raise BadRow("non-text field", f"`{field}` must hold messages, got {type(message).__name__}", field)
    role = message.get("from", message.get("role"))
    content = message.get("value", message.get("content"))
    if not isinstance(role, str) or role not in SHAREGPT_ROLES:  # str first: a list role is unhashable
        raise BadRow("unknown role", f"`{field}` has a message from {role!r}; known: {sorted(SHAREGPT_ROLES)}", field)
    if not isinstance(content, str):
        raise BadRow("non-text field", f"`{field}` has a message whose text is {type(content).__name__}", field)
    return {"role": SHAREGPT_ROLES[role], "content": content}


def from_sharegpt(row: dict) -> dict:
    """{conversations: [msg...], chosen: msg, rejected: msg} -> conversational TRL row."""
    conversations = row.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise BadRow("missing field", "`conversations` must be a non-empty list of messages", "conversations")
    prompt = [_sharegpt_message(m, "conversations") for m in conversations]
    responses = {}
    for field in ("chosen", "rejected"):
        if field not in row:
            raise BadRow("missing field", f"missing field `{field}`", field)
        message = _sharegpt_message(row[field], field)
        if message["role"] != "assistant":
            raise BadRow("no final assistant turn", f"`{field}` must be an assistant (gpt) message", field)
        responses[field] = [message]
    return {"prompt": prompt, **responses}


def from_llmbar(row: dict) -> dict:
    """{input, output_1, output_2, label}: label 1 or 2 names the better output."""
    label = row.get("label")
    if isinstance(label, bool) or label not in (1, 2):
        raise BadRow("bad label", f"`label` must be 1 or 2, got {label!r}", "label")
    outputs = [_text(row, "output_1"), _text(row, "output_2")]
    pair = {"prompt": _text(row, "input"), "chosen": outputs[label - 1], "rejected": outputs[2 - label]}
    if "subset" in row:
        pair["subset"] = row["subset"]
    return pair


CONVERTERS: dict[str, Converter] = {
    "trl": from_trl,
    "hh": convert_hh,
    "sharegpt": from_sharegpt,
    "pandalm": convert_pandalm,
    "llmbar": from_llmbar,
}
# Every named source is a format too (`--format beaver-safe` reads a file in PKU-SafeRLHF's schema).
SOURCE_FORMATS = tuple(name for name in SOURCES if name not in CONVERTERS)  # `pandalm` is both
FORMATS = ("auto", *CONVERTERS, *SOURCE_FORMATS)

# Fields that identify a format, checked in this order (the first whose fields are all present wins).
SIGNATURES: list[tuple[str, set[str]]] = [
    ("sharegpt", {"conversations", "chosen", "rejected"}),
    ("pandalm", {"response1", "response2", "annotator1"}),
    ("llmbar", {"output_1", "output_2", "label"}),
    ("alpaca-human-pref", {"output_1", "output_2", "preference"}),
    ("beaver-safe", {"response_0", "response_1", "is_response_0_safe", "is_response_1_safe"}),
    ("chatbot-arena", {"conversation_a", "conversation_b", "winner"}),
]


def detect_format(row: dict, location: str = "data") -> str:
    """The format of a data set from its first row's fields."""
    if not isinstance(row, dict):
        raise DataError(f"{location}: row 0 is a {type(row).__name__}, not an object with preference fields")
    for name, fields in SIGNATURES:
        if fields <= row.keys():
            return name
    if {"chosen", "rejected"} <= row.keys():
        return "hh" if is_hh_row(row) else "trl"
    raise DataError(
        f"{location}: row 0: cannot tell the format from the fields {sorted(row)}; "
        f"pass --format (one of {', '.join(FORMATS[1:])}); see docs/data.md"
    )


def converter_for(name: str) -> Converter:
    """The row converter of a format name (one of FORMATS but `auto`)."""
    if name in CONVERTERS:
        return CONVERTERS[name]
    if name in SOURCES:
        return SOURCES[name].convert
    raise DataError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
