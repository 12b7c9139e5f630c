"""The HAF-RM paper's named preference sets, read from the hub or from a local copy of the same files.

    from hafrm.data.sources import SOURCES, load_source
    raw_rows, location = load_source("hh-harmless", "test")   # $HAFRM_DATA_DIR/Anthropic/hh-rlhf/... or the hub
    row = SOURCES["hh-harmless"].convert(raw_rows[0])           # TRL row, or raises BadRow / FilteredRow

A local copy is a directory laid out as the source repo, `{local_root}/{repo_id}/<path in the repo>`, as
`hf download --repo-type dataset Anthropic/hh-rlhf --local-dir $HAFRM_DATA_DIR/Anthropic/hh-rlhf` leaves it.
Both are read by the same call, `datasets.load_dataset("json" | "parquet", data_files=f"{base}/{path in repo}")`,
where `base` is the local directory or the remote one (`hf://datasets/{repo_id}`, or the raw-file URL of a set
published only on GitHub, PandaLM's), so a test against a local copy runs the remote path.
Passing the repo id itself as `path` would not do: datasets>=4 refuses every repo (or local directory) that holds
a loading script, even with `data_files` given, and tatsu-lab/alpaca_farm holds `alpaca_farm.py`.

Every converter returns a conversational TRL row: `prompt` is the messages before the answer, `chosen` and
`rejected` are one assistant message each. Texts are stripped of surrounding whitespace.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .formats import BadRow, DataError, FilteredRow, Messages

HELD_OUT_FRACTION = 0.1  # the test share carved off sources that ship one split
CARVE_SEED = 0  # fixed, so the carved train/test parts are the same on every machine and every run


@dataclass(frozen=True)
class NamedSource:
    """One of the paper's data sets: where its files sit in the hub repo, and the paper's rule for its rows."""

    name: str
    hub_id: str  # the repo: a hub dataset id, or `owner/name` on GitHub where `url_base` is set
    builder: str  # datasets' packaged builder for the files: "json" (.json, .jsonl, .jsonl.gz) or "parquet"
    files: dict[str, tuple[str, ...]]  # hub split -> paths or glob patterns inside the repo
    convert: Callable[[dict], dict]  # raw row -> {"prompt", "chosen", "rejected"}, or BadRow / FilteredRow
    splits: tuple[str, ...]  # splits a user may ask for
    carved_from: str | None = None  # the one hub split that `train` and `test` are carved from, if any
    access_note: str = ""  # what the hub asks before it serves the files
    url_base: str | None = None  # raw-file URL of the repo for a set not on the hub; None: hf://datasets/{hub_id}

    @property
    def on_hub(self) -> bool:
        return self.url_base is None

    @property
    def remote_base(self) -> str:
        return self.url_base or f"hf://datasets/{self.hub_id}"


# --- row helpers ----------------------------------------------------------------------------------------------


def _texts(row: dict, *fields: str) -> list[str]:
    values = []
    for field in fields:
        value = row.get(field)
        if value is None:
            raise BadRow("missing field", f"`{field}`", field)
        if not isinstance(value, str):
            raise BadRow("non-text field", f"`{field}` is {type(value).__name__}", field)
        values.append(value)
    return values


def _text(row: dict, field: str) -> str:
    """A text field of a single-turn format (its whitespace kept; the converters' callers strip)."""
    value = row.get(field)
    if field not in row:
        raise BadRow("missing field", f"missing field `{field}`", field)
    if not isinstance(value, str):
        raise BadRow("non-text field", f"`{field}` must be a string, got {type(value).__name__}", field)
    return value


def _instruction_prompt(instruction: str, extra_input: str | None) -> str:
    """Alpaca-style prompt: the instruction, then its input (when there is one) after a blank line."""
    extra_input = (extra_input or "").strip()
    return f"{instruction.strip()}\n\n{extra_input}" if extra_input else instruction.strip()


def _user(prompt: str, field: str) -> Messages:
    if not prompt.strip():
        raise BadRow("empty prompt", f"`{field}` is empty or only whitespace", field)
    return [{"role": "user", "content": prompt.strip()}]


def _pair(prompt: Messages, chosen: str, rejected: str) -> dict:
    chosen, rejected = chosen.strip(), rejected.strip()
    if not chosen or not rejected:
        raise BadRow("empty response", f"the {'chosen' if not chosen else 'rejected'} reply is empty")
    if chosen == rejected:
        raise BadRow("identical responses")
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


# --- Anthropic HH-RLHF ----------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_hh_row(row: dict) -> bool:
    """True for a raw HH row: `chosen` and `rejected` are whole transcripts starting with a Human turn."""
    return all(
        isinstance(row.get(field), str) and row[field].startswith(("\n\nHuman:", "Human:"))
        for field in ("chosen", "rejected")
    )


def _parse_hh(transcript: str, field: str) -> Messages:
    """A transcript "\\n\\nHuman: a\\n\\nAssistant: b ..." -> [{"role": "user", "content": "a"}, ...].

    Turns are kept as written: 13 transcripts of ../shared/data/hh-harmless hold two assistant turns in a row.
    """
    if transcript.startswith("Human:"):
        transcript = "\n\n" + transcript
    pieces = _HH_TURN.split(transcript)  # ["", role, text, role, text, ...]
    if pieces[0].strip() or len(pieces) < 5:
        raise BadRow("unparsable transcript", f"`{field}` is not a Human/Assistant dialogue", field)
    turns = [{"role": _HH_ROLES[role], "content": text.strip()} for role, text in zip(pieces[1::2], pieces[2::2])]
    if turns[0]["role"] != "user" or turns[-1]["role"] != "assistant":
        detail = f"`{field}` must start with a Human turn and end with an Assistant one"
        raise BadRow("unparsable transcript", detail, field)
    return turns


def convert_hh(row: dict) -> dict:
    """A raw HH row {"chosen": transcript, "rejected": transcript} -> conversational TRL row.

    prompt = every turn before the final assistant reply (multi-turn prompts stay conversations); the two
    transcripts must share that prompt.
    """
    chosen, rejected = _texts(row, "chosen", "rejected")
    chosen_turns, rejected_turns = _parse_hh(chosen, "chosen"), _parse_hh(rejected, "rejected")
    prompt, other_prompt = chosen_turns[:-1], rejected_turns[:-1]
    if prompt != other_prompt:
        shared = next((i for i, (a, b) in enumerate(zip(prompt, other_prompt)) if a != b), None)
        where = f"turn {shared + 1} differs" if shared is not None else f"{len(prompt)} vs {len(other_prompt)} turns"
        raise BadRow("different prompts", f"the transcripts differ before the final reply ({where})")
    return _pair(prompt, chosen_turns[-1]["content"], rejected_turns[-1]["content"])


# --- PKU-SafeRLHF (BeaverTails' successor) --------------------------------------------------------------------


def convert_beaver_safe(row: dict) -> dict:
    """Keep pairs where exactly one response is safe; that one is chosen (the paper's safety rule)."""
    prompt, response_0, response_1 = _texts(row, "prompt", "response_0", "response_1")
    safe = [row.get("is_response_0_safe"), row.get("is_response_1_safe")]
    for index, label in enumerate(safe):
        if not isinstance(label, bool):
            reason = "missing field" if label is None else "invalid label"
            field = f"is_response_{index}_safe"
            raise BadRow(reason, f"`{field}` must be true or false, got {label!r}", field)
    if safe[0] == safe[1]:
        raise FilteredRow("not exactly one safe response")
    chosen, rejected = (response_0, response_1) if safe[0] else (response_1, response_0)
    return _pair(_user(prompt, "prompt"), chosen, rejected)


# --- AlpacaFarm human preferences -----------------------------------------------------------------------------


def convert_alpaca_human_pref(row: dict) -> dict:
    """prompt = instruction, plus the input after a blank line when there is one; `preference` names the winner."""
    instruction, output_1, output_2 = _texts(row, "instruction", "output_1", "output_2")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise BadRow("non-text field", f"`input` is {type(extra).__name__}", "input")
    preference = row.get("preference")
    if isinstance(preference, bool) or preference not in (1, 2):
        raise BadRow("invalid label", f"`preference` must be 1 or 2, got {preference!r}", "preference")
    prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
    chosen, rejected = (output_1, output_2) if preference == 1 else (output_2, output_1)
    return _pair(_user(prompt, "instruction"), chosen, rejected)


# --- Chatbot Arena conversations ------------------------------------------------------------------------------

_ARENA_SIDES = {"model_a": ("conversation_a", "conversation_b"), "model_b": ("conversation_b", "conversation_a")}
_ARENA_TIES = ("tie", "tie (bothbad)")


def _arena_turn(row: dict, field: str) -> tuple[str, str]:
    conversation = row.get(field)
    if conversation is None:
        raise BadRow("missing field", f"`{field}`", field)
    messages = conversation if isinstance(conversation, list) else []
    roles = [message.get("role") if isinstance(message, dict) else None for message in messages]
    if roles != ["user", "assistant"] or not all(isinstance(message.get("content"), str) for message in messages):
        detail = f"`{field}` is not one user message and one assistant reply"
        raise BadRow("unparsable conversation", detail, field)
    return conversation[0]["content"], conversation[1]["content"]


def convert_chatbot_arena(row: dict) -> dict:
    """Single-turn, decided battles only; chosen = the winner's reply (the paper's rule)."""
    if row.get("turn") is None:
        raise BadRow("missing field", "`turn`", "turn")
    if row["turn"] != 1:
        raise FilteredRow("multi-turn")
    winner = row.get("winner")
    if winner in _ARENA_TIES:
        raise FilteredRow("tie")
    if not isinstance(winner, str) or winner not in _ARENA_SIDES:  # str first: a list is unhashable
        raise BadRow("invalid label", f"`winner` must be model_a, model_b or a tie, got {winner!r}", "winner")
    winner_field, loser_field = _ARENA_SIDES[winner]
    prompt, chosen = _arena_turn(row, winner_field)
    other_prompt, rejected = _arena_turn(row, loser_field)
    if prompt.strip() != other_prompt.strip():
        raise BadRow("different prompts", "conversation_a and conversation_b start with different user messages")
    return _pair(_user(prompt, winner_field), chosen, rejected)


# --- PandaLM's human test set ---------------------------------------------------------------------------------


def convert_pandalm(row: dict) -> dict:
    """Three annotators vote 0 (tie), 1 or 2; the response with two or more votes is chosen."""
    votes = Counter()
    for field in ("annotator1", "annotator2", "annotator3"):
        vote = row.get(field)
        if isinstance(vote, bool) or vote not in (0, 1, 2):  # True == 1 would count as a vote for response 1
            raise BadRow("bad label", f"`{field}` must be 0, 1 or 2, got {vote!r}", field)
        votes[vote] += 1
    label, count = votes.most_common(1)[0]
    if count < 2 or label == 0:
        raise FilteredRow("tie")
    responses = [_text(row, "response1"), _text(row, "response2")]
    extra_input = row.get("input")
    if extra_input is not None and not isinstance(extra_input, str):
        raise BadRow("non-text field", f"`input` must be a string, got {type(extra_input).__name__}", "input")
    prompt = _instruction_prompt(_text(row, "instruction"), extra_input)
    return {"prompt": prompt, "chosen": responses[label - 1], "rejected": responses[2 - label]}


# --- the registry ---------------------------------------------------------------------------------------------


def _hh_source(name: str, data_dir: str) -> NamedSource:
    return NamedSource(
        name=name,
        hub_id="Anthropic/hh-rlhf",
        builder="json",
        files={split: (f"{data_dir}/{split}.jsonl.gz",) for split in ("train", "test")},
        convert=convert_hh,
        splits=("train", "test"),
    )


SOURCES: dict[str, NamedSource] = {
    # Anthropic/hh-rlhf: one folder per subset, harmless-base/{train,test}.jsonl.gz and helpful-base/{...},
    # rows {"chosen": transcript, "rejected": transcript}. Confirmed on the hub file tree of its duplicate
    # polinaeterna/hh-rlhf ("Duplicate from Anthropic/hh-rlhf": harmless-base/test.jsonl.gz, train.jsonl.gz), in the
    # maintainers' answer on Anthropic/hh-rlhf discussion #3 (load_dataset(..., data_dir="harmless-base")), and on
    # ../shared/data/hh-harmless/train.jsonl.gz (1,812 rows of the harmless test split).
    "hh-harmless": _hh_source("hh-harmless", "harmless-base"),
    "hh-helpful": _hh_source("hh-helpful", "helpful-base"),
    # PKU-Alignment/PKU-SafeRLHF (main, the 2024 release that succeeds BeaverTails and PKU-SafeRLHF-v0): the dataset
    # card's default config reads data/{Alpaca-7B,Alpaca2-7B,Alpaca3-8B}/{train,test}.jsonl (card YAML "configs",
    # seen via a mirror of the card and in yhc-666/UPS-RM's copy of the repo). Rows (read in that copy's
    # data/Alpaca-7B/test.jsonl): prompt, response_0, response_1, prompt_source, response_{0,1}_source,
    # is_response_{0,1}_safe (bool), response_{0,1}_harm_category (dict of 19 bools), response_{0,1}_severity_level,
    # better_response_id, safer_response_id, response_{0,1}_sha256. The older v0 (tag "v0") kept round0/*.jsonl.xz.
    "beaver-safe": NamedSource(
        name="beaver-safe",
        hub_id="PKU-Alignment/PKU-SafeRLHF",
        builder="json",
        files={
            split: tuple(f"data/{model}/{split}.jsonl" for model in ("Alpaca-7B", "Alpaca2-7B", "Alpaca3-8B"))
            for split in ("train", "test")
        },
        convert=convert_beaver_safe,
        splits=("train", "test"),
    ),
    # tatsu-lab/alpaca_farm: config "alpaca_human_preference" of its loading script alpaca_farm.py is the file
    # alpaca_human_preference.json at the repo root (script's _URLS; hub file tree), a JSON list of
    # {instruction, input, output_1, output_2, preference: 1 | 2, raw_preference} (script features, commit 2dc5ca1;
    # third-party readers json.load it and index output_{preference}). The script's only split is "preference";
    # datasets>=4 will not run the script, so the json file is read directly and 10% carved off as test.
    "alpaca-human-pref": NamedSource(
        name="alpaca-human-pref",
        hub_id="tatsu-lab/alpaca_farm",
        builder="json",
        files={"train": ("alpaca_human_preference.json",)},
        convert=convert_alpaca_human_pref,
        splits=("train", "test"),
        carved_from="train",
    ),
    # lmsys/chatbot_arena_conversations (gated): card YAML "configs" -> data/train-* (one parquet file, 33,000 rows,
    # split train), features question_id, model_a, model_b, winner, judge, conversation_a / conversation_b
    # (lists of {content, role}), turn, anony, language, tstamp, openai_moderation, toxic_chat_tag (card seen via
    # its mirrors d-llm/chatbot_arena_conversations and hf-mirror); winner values model_a, model_b, tie,
    # "tie (bothbad)" (rows shown by BramVanroy/lmsys-20240814-nl's viewer). 10% carved off as test.
    "chatbot-arena": NamedSource(
        name="chatbot-arena",
        hub_id="lmsys/chatbot_arena_conversations",
        builder="parquet",
        files={"train": ("data/train-*",)},
        convert=convert_chatbot_arena,
        splits=("train", "test"),
        carved_from="train",
        access_note="gated: accept its terms at https://huggingface.co/datasets/lmsys/chatbot_arena_conversations "
        "and run `hf auth login` first",
    ),
    # PandaLM's human-annotated test set, the paper's out-of-distribution "Chat" evaluation: published only in the
    # GitHub repo WeOpenML/PandaLM as data/testset-v1.json, a JSON list of 999 rows {idx, motivation_app, cmp_key,
    # instruction, input, response1, response2, annotator1..3} (the same file as ../shared/data/pandalm). One
    # split, `test`: the set is for evaluation only.
    "pandalm": NamedSource(
        name="pandalm",
        hub_id="WeOpenML/PandaLM",
        builder="json",
        files={"test": ("data/testset-v1.json",)},
        convert=convert_pandalm,
        splits=("test",),
        url_base="https://raw.githubusercontent.com/WeOpenML/PandaLM/main",
    ),
}


# --- loading --------------------------------------------------------------------------------------------------


def carve_split(rows: list, split: str) -> list:
    """The deterministic test part (HELD_OUT_FRACTION of rows, at least one, CARVE_SEED) or the rest, in file order."""
    order = list(range(len(rows)))
    random.Random(CARVE_SEED).shuffle(order)
    held_out = set(order[: max(1, round(len(rows) * HELD_OUT_FRACTION))])
    return [row for index, row in enumerate(rows) if (index in held_out) == (split == "test")]


def _download_hint(source: NamedSource, root: str | None) -> str:
    local_dir = f"{root or '$HAFRM_DATA_DIR'}/{source.hub_id}"
    access = f" ({source.access_note})" if source.access_note else ""
    if not source.on_hub:
        paths = [path for patterns in source.files.values() for path in patterns]
        commands = "\n    ".join(
            f"curl -L --create-dirs -o {local_dir}/{path} {source.url_base}/{path}" for path in paths
        )
        return (
            f"Download it where {source.url_base.split('/')[2]} is reachable{access}:\n    {commands}\n"
            f"then point HAFRM_DATA_DIR (or local_root) at the folder that holds {source.hub_id}; or pass the "
            "file itself (a local copy of it anywhere) in place of the source name."
        )
    includes = " ".join(f"--include '{pattern}'" for patterns in source.files.values() for pattern in patterns)
    command = f"hf download --repo-type dataset {source.hub_id} {includes} --local-dir {local_dir}"
    return (
        f"Download it where the hub is reachable{access}:\n    {command}\n"
        "(`huggingface-cli download` with the same arguments on huggingface_hub < 1.0), then point HAFRM_DATA_DIR "
        f"(or local_root) at the folder that holds {source.hub_id}; or pass a local file with --data."
    )


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
DOWNLOAD_TIMEOUT_S = 60


def _downloaded(source: NamedSource, paths: tuple[str, ...]) -> Path:
    """The folder under the hafrm cache that holds a non-hub source's files, each downloaded once.

    datasets would read the URL itself only with fsspec's optional HTTP backend (aiohttp); a plain download into
    the cache also keeps the file for offline runs, as the hub cache does for hub sets. The offline variables
    that stop the hub stop this download too.
    """
    from ..default_model import cache_root

    folder = cache_root() / "data" / source.hub_id
    for path in paths:
        target = folder / path
        if target.is_file():
            continue
        for variable in OFFLINE_VARIABLES:
            if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
                raise OSError(f"not in the cache {folder} and {variable} is set")
        import urllib.request

        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            with urllib.request.urlopen(f"{source.url_base}/{path}", timeout=DOWNLOAD_TIMEOUT_S) as response:
                partial.write_bytes(response.read())
            os.replace(partial, target)  # whole or not at all: a cut download never looks cached
        finally:
            partial.unlink(missing_ok=True)
    return folder


def load_source(name: str, split: str | None = None, local_root: str | None = None) -> tuple[list[dict], str]:
    """Raw (unconverted) rows of a named source's split, and where they were read from.

    The local copy under `local_root` (default: $HAFRM_DATA_DIR) is used when it holds the split's files;
    otherwise the hub (or, for a set not on the hub, a copy downloaded once into the hafrm cache). The split
    defaults to `train`, or to the source's one split. Splits carved from a single hub split are its deterministic 90% / 10% parts.
    """
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; named sources: {', '.join(SOURCES)}")
    source = SOURCES[name]
    split = split or (source.splits[0] if len(source.splits) == 1 else "train")
    if split not in source.splits:
        raise DataError(f"{name}: no split {split!r}; its splits: {', '.join(source.splits)}")
    hub_split = source.carved_from or split
    patterns = source.files[hub_split]
    root = local_root or os.environ.get("HAFRM_DATA_DIR") or None
    local_dir = Path(root, source.hub_id) if root else None
    local = local_dir is not None and all(any(local_dir.glob(pattern)) for pattern in patterns)
    base = str(local_dir) if local else source.remote_base

    import datasets

    try:
        if not local and not source.on_hub:
            base = str(_downloaded(source, patterns))
        table = datasets.load_dataset(
            source.builder, data_files={hub_split: [f"{base}/{pattern}" for pattern in patterns]}, split=hub_split
        )
    except Exception as error:  # datasets raises many types for a missing, gated or offline dataset
        remote = "the hub" if source.on_hub else source.url_base
        if local:
            looked = f"reading the local copy {local_dir} failed"
        elif local_dir is not None:
            looked = f"no local copy of {', '.join(patterns)} under {local_dir}, and {remote} failed"
        else:
            looked = f"HAFRM_DATA_DIR is not set (no local copy), and {remote} failed"
        raise DataError(
            f"{name} ({source.hub_id}, split {split}): {looked} ({type(error).__name__}: {error}).\n"
            + _download_hint(source, root)
        ) from error

    rows = table.to_list()
    if local:
        location = ", ".join(str(path) for pattern in patterns for path in sorted(local_dir.glob(pattern)))
    elif source.on_hub:
        location = f"hub {source.hub_id}: {', '.join(patterns)}"
    else:
        location = ", ".join(f"{source.url_base}/{path} (cached in {base})" for path in patterns)
    if source.carved_from:
        rows = carve_split(rows, split)
        share = HELD_OUT_FRACTION if split == "test" else 1 - HELD_OUT_FRACTION
        location += f" [{split}: {share:.0%} carved with seed {CARVE_SEED}]"
    return rows, location
