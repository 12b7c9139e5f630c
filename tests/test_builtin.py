"""The built-in set: fixed, disjoint splits; every chosen reply passes, every rejected one breaks
exactly its `subset`; the checker is right on hand-written replies; length does not give it away."""

import pytest

from hafrm.data.builtin import (
    KINDS,
    SPLITS,
    Constraint,
    builtin_rows,
    check,
    count_words,
    length_rule_accuracy,
    parse_constraints,
)


@pytest.fixture(scope="module")
def rows_by_split():
    return {split: builtin_rows(split) for split in SPLITS}


def all_rows(rows_by_split):
    return [row for rows in rows_by_split.values() for row in rows]


def test_rows_are_deterministic(rows_by_split):
    assert builtin_rows("validation") == rows_by_split["validation"]
    assert builtin_rows("test") == rows_by_split["test"]


def test_default_split_is_train(rows_by_split):
    assert builtin_rows() == rows_by_split["train"]


def test_split_sizes_match_splits(rows_by_split):
    assert {split: len(rows) for split, rows in rows_by_split.items()} == SPLITS


def test_splits_share_no_prompt_and_repeat_none(rows_by_split):
    prompts = {split: [row["prompt"] for row in rows] for split, rows in rows_by_split.items()}
    for split, split_prompts in prompts.items():
        assert len(set(split_prompts)) == len(split_prompts), split
    assert not set(prompts["train"]) & set(prompts["validation"])
    assert not set(prompts["train"]) & set(prompts["test"])
    assert not set(prompts["validation"]) & set(prompts["test"])


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(ValueError, match="train, validation, test"):
        builtin_rows("dev")


def test_rows_are_well_formed_trl_rows(rows_by_split):
    for row in all_rows(rows_by_split):
        assert set(row) == {"prompt", "chosen", "rejected", "subset"}
        assert all(isinstance(row[key], str) and row[key].strip() for key in ("prompt", "chosen", "rejected"))
        assert row["chosen"] != row["rejected"]
        assert row["subset"] in KINDS


def test_chosen_meets_every_constraint_and_rejected_breaks_only_its_subset(rows_by_split):
    for row in all_rows(rows_by_split):
        constraints = parse_constraints(row["prompt"])
        assert 1 <= len(constraints) <= 2, row["prompt"]
        assert check(row["prompt"], row["chosen"]) == 1.0, row
        assert check(row["prompt"], row["rejected"]) < 1.0, row
        broken = [constraint.kind for constraint in constraints if not constraint.is_met(row["rejected"])]
        assert broken == [row["subset"]], row


def test_every_kind_is_broken_in_every_split(rows_by_split):
    for split, rows in rows_by_split.items():
        assert {row["subset"] for row in rows} == set(KINDS), split


def test_replies_are_short_enough_for_a_small_model(rows_by_split):
    words = [count_words(row[side]) for row in all_rows(rows_by_split) for side in ("chosen", "rejected")]
    assert min(words) >= 5 and max(words) <= 130
    assert sum(count <= 80 for count in words) / len(words) > 0.9


def test_longer_reply_wins_about_half_the_test_pairs(rows_by_split):
    for split, rows in rows_by_split.items():
        assert 0.40 <= length_rule_accuracy(rows) <= 0.60, split


def test_length_rule_accuracy_by_hand():
    rows = [
        {"prompt": "p", "chosen": "one two three", "rejected": "one"},  # longer chosen: 1
        {"prompt": "p", "chosen": "one", "rejected": "one two"},  # longer rejected: 0
        {"prompt": "p", "chosen": "it's fine", "rejected": "so fine"},  # tie, 2 words each: 0.5
        {"prompt": "p", "chosen": "a b c d", "rejected": "a, b, c"},  # punctuation is not a word: 1
    ]
    assert length_rule_accuracy(rows) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError):
        length_rule_accuracy([])


EXAMPLES = {
    "case": ("capital", "lowercase"),
    "include_word": ("useful", "lively"),
    "exclude_word": ("simple",),
    "max_words": (40, 5),
    "min_words": (12,),
    "bullets": (3, 5),
    "paragraphs": (2, 4),
    "json": ("summary", "answer"),
    "start_word": ("Overall",),
    "end_phrase": ("Hope this helps.", "Let me know if you have questions."),
    "no_commas": (None,),
    "quotes": (None,),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parse_constraints_round_trips_every_kind(kind):
    assert set(EXAMPLES) == set(KINDS)
    for value in EXAMPLES[kind]:
        constraint = Constraint(kind, value)
        assert parse_constraints(f"Describe a kite. {constraint.instruction()}") == [constraint]


def test_parse_constraints_keeps_prompt_order_and_ignores_other_prompts():
    first, second = Constraint("no_commas"), Constraint("max_words", 30)
    prompt = f"Write a few lines about the tram line. {first.instruction()} {second.instruction()}"
    assert parse_constraints(prompt) == [first, second]
    assert parse_constraints("Write a poem about the sea in capital letters.") == []


CHECKS = [
    # (constraint, response, expected)
    (Constraint("case", "capital"), "HELLO, WORLD 42!", True),
    (Constraint("case", "capital"), "- ITEM ONE\n- ITEM 2: OK?", True),
    (Constraint("case", "capital"), "HELLO World", False),
    (Constraint("case", "capital"), "123 !!!", False),  # no letters: nothing is in capitals
    (Constraint("case", "lowercase"), "hello, world 42!", True),
    (Constraint("case", "lowercase"), "hello World", False),
    (Constraint("case", "lowercase"), "", False),
    (Constraint("include_word", "useful"), "It is Useful here.", True),
    (Constraint("include_word", "useful"), '{"note": "useful"}', True),
    (Constraint("include_word", "useful"), "Its usefulness is clear.", False),  # whole words only
    (Constraint("exclude_word", "simple"), "It is plain and calm.", True),
    (Constraint("exclude_word", "simple"), "Simplest of all, simply put.", True),
    (Constraint("exclude_word", "simple"), "It is SIMPLE.", False),
    (Constraint("max_words", 5), "one two three four five", True),
    (Constraint("max_words", 5), "one two three four five six", False),
    (Constraint("max_words", 4), "It's a dog's life.", True),  # contractions are one word
    (Constraint("min_words", 3), "one, two", False),
    (Constraint("min_words", 3), "one - two - three", True),
    (Constraint("bullets", 3), "- a\n- b\n- c", True),
    (Constraint("bullets", 3), "- a\n\n- b\n\n\n- c\n", True),  # blank lines between bullets
    (Constraint("bullets", 3), "Intro line:\n  - a\n  - b\n  - c\nClosing line.", True),
    (Constraint("bullets", 3), "- a\n- b", False),
    (Constraint("bullets", 3), "- a - b - c", False),  # one line
    (Constraint("bullets", 3), "-a\n-b\n-c", False),  # no space after the dash
    (Constraint("bullets", 3), "* a\n* b\n* c", False),
    (Constraint("bullets", 3), "- a\n- b\n- c\n- d", False),
    (Constraint("paragraphs", 2), "One.\n\nTwo.", True),
    (Constraint("paragraphs", 2), "One.\n \n\n\nTwo.\n\n", True),  # blank lines may hold spaces
    (Constraint("paragraphs", 2), "One.\nTwo.", False),
    (Constraint("paragraphs", 2), "One.\n\nTwo.\n\nThree.", False),
    (Constraint("json", "summary"), '{"summary": "calm"}', True),
    (Constraint("json", "summary"), '  {"summary": "calm", "extra": 1}\n', True),
    (Constraint("json", "summary"), '```json\n{"summary": "calm"}\n```', True),
    (Constraint("json", "summary"), '{"summary": "calm"} Hope this helps.', False),  # trailing text
    (Constraint("json", "summary"), 'Here it is: {"summary": "calm"}', False),
    (Constraint("json", "summary"), '{"answer": "calm"}', False),
    (Constraint("json", "summary"), '["summary"]', False),
    (Constraint("json", "summary"), '{"summary": "calm",}', False),
    (Constraint("start_word", "Overall"), "Overall the sky is clear.", True),
    (Constraint("start_word", "Overall"), '"OVERALL, yes."', True),  # quotes and case do not matter
    (Constraint("start_word", "Overall"), "- overall fine", True),
    (Constraint("start_word", "Overall"), "Overalls are blue.", False),
    (Constraint("start_word", "Overall"), "In overall terms, yes.", False),
    (Constraint("start_word", "Overall"), "", False),
    (Constraint("end_phrase", "Hope this helps."), "Sure. Hope this helps.", True),
    (Constraint("end_phrase", "Hope this helps."), "Sure. Hope this helps.  \n", True),
    (Constraint("end_phrase", "Hope this helps."), "Hope this helps. Bye.", False),
    (Constraint("end_phrase", "Hope this helps."), "Sure. hope this helps.", False),  # exact phrase
    (Constraint("end_phrase", "Hope this helps."), "Sure. Hope this helps", False),
    (Constraint("no_commas"), "No commas here; none at all.", True),
    (Constraint("no_commas"), "One, two.", False),
    (Constraint("quotes"), '"All of it is quoted."', True),
    (Constraint("quotes"), '  "Padded, then quoted."\n', True),
    (Constraint("quotes"), "Not quoted.", False),
    (Constraint("quotes"), '"Only opened.', False),
    (Constraint("quotes"), '"', False),
]


@pytest.mark.parametrize(("constraint", "response", "expected"), CHECKS)
def test_constraint_checks_hand_written_replies(constraint, response, expected):
    assert constraint.is_met(response) is expected


def test_every_kind_has_a_passing_and_a_failing_example():
    assert {(c.kind, expected) for c, _, expected in CHECKS} == {(k, e) for k in KINDS for e in (True, False)}


def test_check_is_the_fraction_of_constraints_met():
    prompt = "Describe a paper kite. Use at most 3 words. Do not use any commas in your reply."
    assert check(prompt, "Red and high.") == 1.0
    assert check(prompt, "Red, high.") == 0.5
    assert check(prompt, "Red, high, and far away.") == 0.0


def test_check_grades_any_reply_to_a_builtin_prompt(rows_by_split):
    odd_replies = ["", " ", "{", '{"a": [1, 2', "```", "\n\n\n", "- ", '"', "😀 ünïcödé", "x" * 5000]
    for row in rows_by_split["validation"]:
        constraints = len(parse_constraints(row["prompt"]))
        for reply in odd_replies:
            met = check(row["prompt"], reply) * constraints  # a fraction of the prompt's constraints: k / n
            assert met == pytest.approx(round(met)) and 0 <= round(met) <= constraints


def test_check_refuses_a_prompt_without_builtin_constraints():
    with pytest.raises(ValueError, match="no built-in constraint"):
        check("Write a poem about the sea.", "The sea.")


def test_any_size_keeps_each_splits_own_topics_and_order(rows_by_split):
    """`builtin:SPLIT@N`: N pairs, the default set as its start, topics (hence prompts) still disjoint."""
    from hafrm.data.builtin import split_topics

    large = {
        split: builtin_rows(split, count) for split, count in (("train", 4000), ("validation", 500), ("test", 2000))
    }
    for split, rows in large.items():
        assert (
            len(rows) == len({row["prompt"] for row in rows}) == {"train": 4000, "validation": 500, "test": 2000}[split]
        )
        assert rows[: SPLITS[split]] == rows_by_split[split]
        assert builtin_rows(split, 7) == rows[:7]
        topics = split_topics(split)
        assert all(any(topic in row["prompt"] for topic in topics) for row in rows[:50])
        for row in rows[::97]:  # the labels stay exact at any size
            assert check(row["prompt"], row["chosen"]) == 1.0
            broken = [c.kind for c in parse_constraints(row["prompt"]) if not c.is_met(row["rejected"])]
            assert broken == [row["subset"]]
    prompts = {split: {row["prompt"] for row in rows} for split, rows in large.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]
    assert {row["subset"] for row in large["test"]} == set(KINDS)


def test_builtin_at_n_through_the_loader_and_its_errors():
    from hafrm.data import load_data
    from hafrm.data.load import DataError
    from hafrm.sampling import read_prompts

    pairs, reports = load_data("builtin:test@300")
    assert len(pairs) == 300 and "test split, 300 pairs" in reports[0].summary()
    assert read_prompts("builtin:validation@5") == [row["prompt"] for row in builtin_rows("validation")[:5]]
    for bad in ("builtin:test@0", "builtin:test@many"):
        with pytest.raises(DataError, match=r"the pair count after @ must be a whole number of at least 1"):
            load_data(bad)
