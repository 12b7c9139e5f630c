"""Named sources: rows in each data set's real schema, written into a local copy laid out as its hub repo."""

import gzip
import json
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hafrm.data.formats import BadRow, DataError, FilteredRow, read_rows
from hafrm.data.sources import SOURCES, convert_hh, is_hh_row, load_source


@pytest.fixture(autouse=True)
def isolated_datasets_cache(tmp_path, monkeypatch):
    """datasets writes an Arrow copy of every file it reads; keep the tests' copies out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def outcome(convert, row: dict):
    """The converted row, or the reason it was left out."""
    try:
        return convert(row)
    except (BadRow, FilteredRow) as skipped:
        return f"{type(skipped).__name__}: {skipped.reason}"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- Anthropic HH-RLHF ----------------------------------------------------------------------------------------


def hh(*turns: str) -> str:
    """hh("q", "a", "q2", "a2") -> "\\n\\nHuman: q\\n\\nAssistant: a\\n\\nHuman: q2\\n\\nAssistant: a2"."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {text}" for i, text in enumerate(turns))


HH_ROWS = [
    {
        "chosen": hh("How do I pick a lock?", "I'd rather not help."),
        "rejected": hh("How do I pick a lock?", "Use a pin."),
    },
    {
        "chosen": hh("Hi", "Hello, how can I help?", "Tell me a secret", "  I keep none.  "),
        "rejected": hh("Hi", "Hello, how can I help?", "Tell me a secret", "Here is one."),
    },
    {"chosen": hh("Question A", "Answer"), "rejected": hh("Question B", "Answer 2")},
    {"chosen": hh("Anything?", "Sure.") + "\n\nAssistant:", "rejected": hh("Anything?", "Sure.", "ok", "no")},
    {"chosen": hh("Q", "   "), "rejected": hh("Q", "Reply")},
    {"chosen": hh("Q", "Same"), "rejected": hh("Q", "Same ")},
    {"chosen": "no transcript here", "rejected": hh("Q", "Reply")},
]
HH_EXPECTED = [
    {
        "prompt": user("How do I pick a lock?"),
        "chosen": assistant("I'd rather not help."),
        "rejected": assistant("Use a pin."),
    },
    {
        "prompt": [*user("Hi"), *assistant("Hello, how can I help?"), *user("Tell me a secret")],
        "chosen": assistant("I keep none."),
        "rejected": assistant("Here is one."),
    },
    "BadRow: different prompts",
    "BadRow: different prompts",
    "BadRow: empty response",
    "BadRow: identical responses",
    "BadRow: unparsable transcript",
]


def test_hh_harmless_from_a_local_copy(tmp_path):
    write_jsonl(tmp_path / "Anthropic/hh-rlhf/harmless-base/train.jsonl.gz", HH_ROWS)
    rows, location = load_source("hh-harmless", "train", local_root=str(tmp_path))
    assert location == str(tmp_path / "Anthropic/hh-rlhf/harmless-base/train.jsonl.gz")
    assert rows == HH_ROWS
    assert [outcome(SOURCES["hh-harmless"].convert, row) for row in rows] == HH_EXPECTED


def test_hh_multi_turn_prompt_stays_a_conversation_with_its_roles():
    row = convert_hh({"chosen": hh("a", "b", "c", "d", "e", "yes"), "rejected": hh("a", "b", "c", "d", "e", "no")})
    assert [message["role"] for message in row["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert [message["content"] for message in row["prompt"]] == ["a", "b", "c", "d", "e"]
    assert (row["chosen"], row["rejected"]) == (assistant("yes"), assistant("no"))


def test_hh_helpful_reads_its_own_folder_and_split(tmp_path):
    write_jsonl(tmp_path / "Anthropic/hh-rlhf/harmless-base/test.jsonl.gz", HH_ROWS[:1])
    write_jsonl(tmp_path / "Anthropic/hh-rlhf/helpful-base/test.jsonl.gz", HH_ROWS[1:2])
    rows, location = load_source("hh-helpful", "test", local_root=str(tmp_path))
    assert rows == HH_ROWS[1:2] and location.endswith("helpful-base/test.jsonl.gz")


def test_hh_rows_are_recognised_and_a_transcript_may_start_without_newlines():
    assert all(is_hh_row(row) for row in HH_ROWS[:6])
    assert not is_hh_row(HH_ROWS[6])
    assert not is_hh_row({"prompt": "p", "chosen": "a", "rejected": "b"})
    bare = {"chosen": "Human: Hi\n\nAssistant: Hello", "rejected": "Human: Hi\n\nAssistant: Go away"}
    assert is_hh_row(bare)
    assert convert_hh(bare)["prompt"] == user("Hi")


# --- PKU-SafeRLHF ---------------------------------------------------------------------------------------------


def pku_row(prompt: str, safe_0: bool, safe_1: bool, model: str) -> dict:
    """A row of data/<model>/<split>.jsonl in PKU-SafeRLHF's schema."""
    harm = {"Violence": False, "Cybercrime": False, "Privacy Violation": False}
    return {
        "prompt": prompt,
        "response_0": f"first answer to {prompt}",
        "response_1": f"second answer to {prompt}",
        "prompt_source": "Alpaca3-70B",
        "response_0_source": model,
        "response_1_source": model,
        "is_response_0_safe": safe_0,
        "is_response_1_safe": safe_1,
        "response_0_harm_category": {**harm, "Violence": not safe_0},
        "response_1_harm_category": {**harm, "Violence": not safe_1},
        "response_0_severity_level": 0 if safe_0 else 2,
        "response_1_severity_level": 0 if safe_1 else 2,
        "better_response_id": 0,
        "safer_response_id": 0 if safe_0 else 1,
        "response_0_sha256": "0" * 64,
        "response_1_sha256": "1" * 64,
    }


def test_beaver_safe_keeps_pairs_with_exactly_one_safe_response(tmp_path):
    repo = tmp_path / "PKU-Alignment/PKU-SafeRLHF/data"
    write_jsonl(repo / "Alpaca-7B/train.jsonl", [pku_row("q1", True, False, "Alpaca-7B")])
    write_jsonl(repo / "Alpaca2-7B/train.jsonl", [pku_row("q2", False, True, "Alpaca2-7B")])
    write_jsonl(repo / "Alpaca3-8B/train.jsonl", [pku_row("q3", True, True, "Alpaca3-8B")])
    for number, model in enumerate(("Alpaca-7B", "Alpaca2-7B", "Alpaca3-8B")):
        write_jsonl(repo / model / "test.jsonl", [pku_row(f"t{number}", False, False, model)])
    rows, location = load_source("beaver-safe", "train", local_root=str(tmp_path))
    assert [row["prompt"] for row in rows] == ["q1", "q2", "q3"]
    assert location.count("PKU-SafeRLHF/data/") == 3
    converted = [outcome(SOURCES["beaver-safe"].convert, row) for row in rows]
    assert converted == [
        {"prompt": user("q1"), "chosen": assistant("first answer to q1"), "rejected": assistant("second answer to q1")},
        {"prompt": user("q2"), "chosen": assistant("second answer to q2"), "rejected": assistant("first answer to q2")},
        "FilteredRow: not exactly one safe response",
    ]
    test_rows, _ = load_source("beaver-safe", "test", local_root=str(tmp_path))
    assert [row["prompt"] for row in test_rows] == ["t0", "t1", "t2"]
    assert {outcome(SOURCES["beaver-safe"].convert, row) for row in test_rows} == {
        "FilteredRow: not exactly one safe response"
    }


# --- AlpacaFarm human preferences -----------------------------------------------------------------------------


def alpaca_rows(count: int) -> list[dict]:
    """Rows of alpaca_human_preference.json: a JSON list."""
    return [
        {
            "instruction": f"Instruction {i}",
            "input": f"context {i}" if i % 2 else "",
            "output_1": f"output one {i}",
            "output_2": f"output two {i}",
            "preference": 1 + i % 3 // 2,  # 1, 1, 2, 1, 1, 2, ...
            "raw_preference": 1.0 + i % 3 // 2,
        }
        for i in range(count)
    ]


def write_alpaca_farm(root: Path, rows: list[dict]) -> None:
    repo = root / "tatsu-lab/alpaca_farm"
    repo.mkdir(parents=True)
    (repo / "alpaca_human_preference.json").write_text(json.dumps(rows))
    # The real repo ships this loading script; datasets>=4 refuses a repo path holding one.
    (repo / "alpaca_farm.py").write_text("import datasets\n")


def test_alpaca_human_pref_prompt_and_label(tmp_path):
    write_alpaca_farm(tmp_path, alpaca_rows(20))
    rows = [row for split in ("train", "test") for row in load_source("alpaca-human-pref", split, str(tmp_path))[0]]
    by_instruction = {row["instruction"]: SOURCES["alpaca-human-pref"].convert(row) for row in rows}
    assert by_instruction["Instruction 0"]["prompt"] == user("Instruction 0")  # no input: the instruction alone
    assert by_instruction["Instruction 1"]["chosen"] == assistant("output one 1")  # preference 1
    assert by_instruction["Instruction 5"] == {  # input given, preference 2
        "prompt": user("Instruction 5\n\ncontext 5"),
        "chosen": assistant("output two 5"),
        "rejected": assistant("output one 5"),
    }


# --- Chatbot Arena --------------------------------------------------------------------------------------------


def arena_row(i: int, winner: str = "model_a", turn: int = 1) -> dict:
    """A row of data/train-*.parquet in lmsys/chatbot_arena_conversations' schema."""

    def conversation(model: str) -> list[dict]:
        messages = []
        for t in range(turn):
            messages += [
                {"content": f"question {i}.{t}", "role": "user"},
                {"content": f"{model} says {i}.{t}", "role": "assistant"},
            ]
        return messages

    return {
        "question_id": f"{i:032x}",
        "model_a": "vicuna-13b",
        "model_b": "koala-13b",
        "winner": winner,
        "judge": f"arena_user_{i}",
        "conversation_a": conversation("vicuna-13b"),
        "conversation_b": conversation("koala-13b"),
        "turn": turn,
        "anony": True,
        "language": "English",
        "tstamp": 1682351591.0 + i,
        "openai_moderation": {"categories": {"harassment": False, "violence": False}, "flagged": False},
        "toxic_chat_tag": {"roberta-large": {"flagged": False, "probability": 0.01}},
    }


def write_arena(root: Path, rows: list[dict]) -> None:
    data = root / "lmsys/chatbot_arena_conversations/data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00001-cced8514c7ed782a.parquet")


def test_chatbot_arena_keeps_single_turn_decided_battles(tmp_path):
    rows = [arena_row(0, "model_a"), arena_row(1, "model_b"), arena_row(2, "tie"), arena_row(3, "tie (bothbad)")]
    rows.append(arena_row(4, "model_a", turn=2))
    convert = SOURCES["chatbot-arena"].convert
    assert [outcome(convert, row) for row in rows] == [
        {
            "prompt": user("question 0.0"),
            "chosen": assistant("vicuna-13b says 0.0"),
            "rejected": assistant("koala-13b says 0.0"),
        },
        {
            "prompt": user("question 1.0"),
            "chosen": assistant("koala-13b says 1.0"),
            "rejected": assistant("vicuna-13b says 1.0"),
        },
        "FilteredRow: tie",
        "FilteredRow: tie",
        "FilteredRow: multi-turn",
    ]


# --- carved splits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, write, key",
    [
        ("alpaca-human-pref", lambda root: write_alpaca_farm(root, alpaca_rows(40)), "instruction"),
        ("chatbot-arena", lambda root: write_arena(root, [arena_row(i, "model_b") for i in range(40)]), "question_id"),
    ],
)
def test_carved_splits_are_disjoint_deterministic_and_90_10(tmp_path, name, write, key):
    write(tmp_path)
    train, train_location = load_source(name, "train", local_root=str(tmp_path))
    test, test_location = load_source(name, "test", local_root=str(tmp_path))
    train_keys, test_keys = [row[key] for row in train], [row[key] for row in test]
    assert (len(train_keys), len(test_keys)) == (36, 4)
    assert not set(train_keys) & set(test_keys) and len(set(train_keys) | set(test_keys)) == 40
    assert [row[key] for row in load_source(name, "test", local_root=str(tmp_path))[0]] == test_keys
    assert "[train: 90%" in train_location and "[test: 10%" in test_location
    assert all(not isinstance(outcome(SOURCES[name].convert, row), str) for row in train + test)


# --- errors and defaults --------------------------------------------------------------------------------------


def test_unknown_source_or_split_lists_the_valid_ones():
    with pytest.raises(DataError, match="hh-harmless, hh-helpful, beaver-safe, alpaca-human-pref, chatbot-arena"):
        load_source("hh-harmful")
    with pytest.raises(DataError, match="no split 'validation'; its splits: train, test"):
        load_source("chatbot-arena", "validation")


def test_missing_data_says_what_to_download_and_where(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1, so the hub fails at once
    with pytest.raises(DataError) as caught:
        load_source("hh-harmless", "test", local_root=str(tmp_path))
    message = str(caught.value)
    assert f"no local copy of harmless-base/test.jsonl.gz under {tmp_path}/Anthropic/hh-rlhf" in message
    assert "hf download --repo-type dataset Anthropic/hh-rlhf --include 'harmless-base/train.jsonl.gz'" in message
    assert f"--local-dir {tmp_path}/Anthropic/hh-rlhf" in message
    assert "--data" in message
    with pytest.raises(DataError, match="(?s)accept its terms.*--local-dir .*/lmsys/chatbot_arena_conversations"):
        load_source("chatbot-arena", local_root=str(tmp_path))


def test_local_root_defaults_to_hafrm_data_dir(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "Anthropic/hh-rlhf/harmless-base/test.jsonl.gz", HH_ROWS[:2])
    monkeypatch.setenv("HAFRM_DATA_DIR", str(tmp_path))
    rows, location = load_source("hh-harmless", "test")
    assert rows == HH_ROWS[:2] and location.startswith(str(tmp_path))


def test_the_hub_and_a_local_copy_take_the_same_call(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(builder, data_files, split):
        calls.append((builder, data_files, split))
        return datasets.Dataset.from_list(HH_ROWS[:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("HAFRM_DATA_DIR", raising=False)
    _, hub_location = load_source("hh-harmless", "test")
    write_jsonl(tmp_path / "Anthropic/hh-rlhf/harmless-base/test.jsonl.gz", HH_ROWS[:1])
    load_source("hh-harmless", "test", local_root=str(tmp_path))
    assert calls == [
        ("json", {"test": ["hf://datasets/Anthropic/hh-rlhf/harmless-base/test.jsonl.gz"]}, "test"),
        ("json", {"test": [f"{tmp_path}/Anthropic/hh-rlhf/harmless-base/test.jsonl.gz"]}, "test"),
    ]
    assert hub_location == "hub Anthropic/hh-rlhf: harmless-base/test.jsonl.gz"


@pytest.mark.parametrize(
    "name, row, reason",
    [
        ("hh-harmless", {"chosen": hh("q", "a")}, "missing field"),
        ("hh-harmless", {"chosen": hh("q", "a"), "rejected": ["a"]}, "non-text field"),
        ("hh-harmless", {"chosen": "\n\nAssistant: hi\n\nHuman: q", "rejected": hh("q", "a")}, "unparsable transcript"),
        ("beaver-safe", {**pku_row("q", True, False, "Alpaca-7B"), "is_response_1_safe": None}, "missing field"),
        ("beaver-safe", {**pku_row("  ", True, False, "Alpaca-7B")}, "empty prompt"),
        ("alpaca-human-pref", {**alpaca_rows(1)[0], "preference": 0}, "invalid label"),
        ("alpaca-human-pref", {**alpaca_rows(1)[0], "output_2": "output one 0"}, "identical responses"),
        ("chatbot-arena", {**arena_row(0), "winner": "model_c"}, "invalid label"),
        ("chatbot-arena", {**arena_row(0), "conversation_b": arena_row(1)["conversation_b"]}, "different prompts"),
        (
            "chatbot-arena",
            {**arena_row(0), "conversation_a": arena_row(0)["conversation_a"][:1]},
            "unparsable conversation",
        ),
    ],
)
def test_bad_rows_raise_badrow_with_a_stable_reason(name, row, reason):
    with pytest.raises(BadRow) as caught:
        SOURCES[name].convert(row)
    assert caught.value.reason == reason


# --- the real HH file -----------------------------------------------------------------------------------------


def test_real_hh_harmless_file_converts(shared_data):
    """../shared/data/hh-harmless: 1,812 real rows of HH harmless-base's test split."""
    rows = read_rows(str(shared_data / "hh-harmless" / "train.jsonl.gz"))
    assert len(rows) == 1812 and all(is_hh_row(row) for row in rows)
    skipped, converted = Counter(), []
    for row in rows:
        try:
            converted.append(convert_hh(row))
        except BadRow as bad:
            skipped[bad.reason] += 1
    assert len(converted) >= 1800, f"{len(converted)} converted; skipped per reason: {dict(skipped)}"
    assert len(converted) + sum(skipped.values()) == len(rows)
    assert all(pair["prompt"][0]["role"] == "user" and len(pair["chosen"]) == 1 for pair in converted)


# --- PandaLM: a named source published on GitHub, not the hub -------------------------------------------------


def panda(idx: int, votes: tuple[int, int, int]) -> dict:
    return {
        "idx": idx,
        "instruction": f"Question {idx}?",
        "input": "",
        "response1": f"first {idx}",
        "response2": f"second {idx}",
        **{f"annotator{i + 1}": vote for i, vote in enumerate(votes)},
    }


PANDA_ROWS = [panda(i, (1, 1, 2) if i % 3 else (2, 2, 0)) for i in range(9)] + [panda(9, (0, 0, 1))]


@pytest.fixture
def panda_server(tmp_path, monkeypatch):
    """PandaLM's file served from loopback in place of raw.githubusercontent.com; yields the request log."""
    import dataclasses
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    (served / "data").mkdir(parents=True)
    (served / "data/testset-v1.json").write_text(json.dumps(PANDA_ROWS))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setitem(SOURCES, "pandalm", dataclasses.replace(SOURCES["pandalm"], url_base=url))
    monkeypatch.setenv("HAFRM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HAFRM_DATA_DIR", raising=False)
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    yield url, requests
    server.shutdown()
    server.server_close()


def test_pandalm_is_downloaded_once_into_the_cache_and_read_from_it_offline(panda_server, tmp_path, monkeypatch):
    url, requests = panda_server
    rows, location = load_source("pandalm", "test")
    assert rows == PANDA_ROWS
    assert requests == ["/data/testset-v1.json"]
    cached = tmp_path / "cache/data/WeOpenML/PandaLM"
    assert location == f"{url}/data/testset-v1.json (cached in {cached})"
    assert json.loads((cached / "data/testset-v1.json").read_text()) == PANDA_ROWS
    assert not [path.name for path in cached.rglob(".*.part")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_source("pandalm", "test")[0] == PANDA_ROWS
    assert len(requests) == 1


def test_pandalm_offline_without_a_copy_says_what_to_download(panda_server, monkeypatch):
    url, requests = panda_server
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as caught:
        load_source("pandalm")
    message = str(caught.value)
    assert message.startswith(f"pandalm (WeOpenML/PandaLM, split test): HAFRM_DATA_DIR is not set (no local copy), "
                              f"and {url} failed (OSError: not in the cache ")  # fmt: skip
    assert "HF_DATASETS_OFFLINE is set" in message
    assert (
        f"curl -L --create-dirs -o $HAFRM_DATA_DIR/WeOpenML/PandaLM/data/testset-v1.json {url}/data/testset-v1.json"
        in message
    )
    assert requests == []


def test_pandalm_from_a_local_copy_gives_the_majority_pairs_with_its_one_split_as_default(tmp_path, monkeypatch):
    from hafrm.data.load import load_data

    (tmp_path / "WeOpenML/PandaLM/data").mkdir(parents=True)
    (tmp_path / "WeOpenML/PandaLM/data/testset-v1.json").write_text(json.dumps(PANDA_ROWS))
    monkeypatch.setenv("HAFRM_DATA_DIR", str(tmp_path))
    pairs, (report,) = load_data("pandalm")
    assert [pair.chosen for pair in pairs] == [f"second {i}" if i % 3 == 0 else f"first {i}" for i in range(9)]
    assert (report.rows, report.pairs, dict(report.filtered)) == (10, 9, {"tie": 1})
    with pytest.raises(DataError, match="pandalm: no split 'train'; its splits: test"):
        load_source("pandalm", "train")


def test_an_at_count_keeps_a_fixed_subset_in_order_for_sources_and_files(tmp_path, monkeypatch):
    from hafrm.data.load import load_data

    (tmp_path / "WeOpenML/PandaLM/data").mkdir(parents=True)
    (tmp_path / "WeOpenML/PandaLM/data/testset-v1.json").write_text(json.dumps(PANDA_ROWS))
    monkeypatch.setenv("HAFRM_DATA_DIR", str(tmp_path))
    subsets = [[pair.prompt for pair in load_data("pandalm:test@4", seed=seed)[0]] for seed in (0, 1)]
    assert subsets[0] == subsets[1]  # fixed: the run seed does not move it
    order = [f"Question {i}?" for i in range(9)]
    assert len(subsets[0]) == 4 and sorted(subsets[0], key=order.index) == subsets[0]
    _, (report,) = load_data("pandalm:test@4")
    assert report.summary().startswith("pandalm:test@4: 9 pairs from 10 rows") and report.used == 4
    with pytest.raises(DataError, match="@10 asks for more pairs than its 9"):
        load_data("pandalm:test@10")
    with pytest.raises(DataError, match="pandalm:test@0: the pair count after @ must be a whole number"):
        load_data("pandalm:test@0")
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(30)])
    train = [pair.prompt for pair in load_data(f"{data}:train")[0]]
    subset = [pair.prompt for pair in load_data(f"{data}:train@5")[0]]
    assert len(subset) == 5 and set(subset) < set(train) and sorted(subset, key=train.index) == subset


def test_preflight_reads_the_split_before_an_at_count():
    from hafrm.config import ConfigError
    from hafrm.preflight import check_data

    check_data("--data", "hh-harmless:train@1631,pandalm:test@100")
    with pytest.raises(ConfigError, match="hh-harmless has no split 'valid'; its splits: train, test"):
        check_data("--data", "hh-harmless:valid@10")
    with pytest.raises(ConfigError, match="--data: hh-harmless:train@x: the pair count after @ must be a whole"):
        check_data("--data", "hh-harmless:train@x")


def test_the_model_card_lists_only_hub_datasets():
    from hafrm.modelcard import _hub_datasets

    assert _hub_datasets("pandalm,hh-harmless:train@100,builtin") == ["Anthropic/hh-rlhf"]
