"""Grouped scoring (issue 28): texts that share their leading tokens run them once, with rewards exact against
scoring each text alone, for the server's passes (`RewardModel.rewards_in_passes`) and the in-process path."""

import pytest

from hafrm import scoring
from hafrm.data.collator import unit_tokens
from hafrm.inference import MIN_SHARED_PREFIX, prompt_groups
from hafrm.scoring import RewardModel

PROMPTS = [
    "Write one sentence about the sea, in lower case, without the letter z, and end it with a full stop. ",
    "List three colours that are also fruits; put each on its own line and do not number the lines. ",
]
COMPLETIONS = ["the sea is wide.", "Orange\nLime\nPeach", "blue and grey and green", "x", "the waves come in."]


def rollout_texts() -> list[str]:
    """Two rollout groups of full texts (G = 5 each), shuffled together, and one text that shares nothing."""
    texts = [prompt + completion for completion in COMPLETIONS for prompt in PROMPTS]
    return [*texts, "A lone text with a prompt of its own."]


@pytest.fixture(scope="module")
def grouped_runs(reward_runs, tiny_model, pairs_file, train_run, tmp_path_factory):
    """A full rm run (reward_runs) and a LoRA haf run trained packed, 2 steps each."""
    root = tmp_path_factory.mktemp("grouped")
    lora = train_run(tiny_model, pairs_file, root / "lora-haf", "--method", "haf", "--finetune", "lora",
                     "--packing", "--max-steps", "2", "--val-fraction", "0")  # fmt: skip
    return {"full rm": reward_runs["rm"], "lora haf packed": lora}


def test_full_texts_that_share_a_prefix_are_grouped_and_others_are_not():
    prompt = list(range(100, 100 + MIN_SHARED_PREFIX))
    texts = [prompt + [1, 2], [7] * 30, prompt + [3], prompt[:-1] + [9, 9], prompt + [4, 5, 6]]
    assert prompt_groups(texts, [0] * len(texts)) == [[0, 2, 4], [1], [3]]  # 3 shares only 15 tokens
    assert prompt_groups(texts, [0] * len(texts), min_shared=MIN_SHARED_PREFIX - 1) == [[0, 2, 3, 4], [1]]
    # the token budget splits a group: prefix 16 once, then 2 + 1 + 3 own tokens
    assert prompt_groups(texts, [0] * len(texts), max_tokens=19) == [[0, 2], [4], [1], [3]]
    # items with a prompt length group by their prompt, as before
    assert prompt_groups([[1, 2, 3], [1, 2, 4], [1, 5]], [2, 2, 1]) == [[0, 1], [2]]


@pytest.mark.parametrize("run", ["full rm", "lora haf packed"])
def test_server_passes_score_rollout_groups_once_and_exactly(grouped_runs, run, monkeypatch):
    model = RewardModel(grouped_runs[run])
    ids = [model.encode_one(text, f"text {i}").ids for i, text in enumerate(rollout_texts())]
    alone = [model.rewards_in_passes([one], [0])[0] for one in ids]
    calls = []
    real = scoring.forward_rows

    def recording(net, batch, **heads):
        calls.append({"tokens": int((batch["sequence_ids"] >= 0).sum()), "grouped": "group_ids" in batch})
        return real(net, batch, **heads)

    monkeypatch.setattr(scoring, "forward_rows", recording)
    grouped = model.rewards_in_passes(ids, [0] * len(ids))
    assert grouped == pytest.approx(alone, abs=1e-5, rel=1e-5)
    assert len(calls) == 1 and calls[0]["grouped"]
    groups = prompt_groups(ids, [0] * len(ids))
    assert sorted(len(group) for group in groups) == [1, 5, 5]
    laid_out = sum(unit_tokens([ids[i] for i in group]) for group in groups)
    assert calls[0]["tokens"] == laid_out  # each group's shared tokens once
    saved = sum(len(one) for one in ids) - laid_out
    assert saved >= 2 * 4 * MIN_SHARED_PREFIX  # two groups of 5: four copies of a 16+ token prompt each


def test_a_model_whose_attention_fails_the_check_is_scored_row_by_row(grouped_runs, monkeypatch):
    model = RewardModel(grouped_runs["full rm"])
    ids = [model.encode_one(text, f"text {i}").ids for i, text in enumerate(rollout_texts())]
    alone = [model.rewards_in_passes([one], [0])[0] for one in ids]
    monkeypatch.setattr(scoring, "shared_rows_verified", lambda *args, **kwargs: False)
    layouts = []
    real = scoring.forward_rows
    monkeypatch.setattr(
        scoring, "forward_rows", lambda net, batch, **h: layouts.append("group_ids" in batch) or real(net, batch, **h)
    )
    assert model.rewards_in_passes(ids, [0] * len(ids)) == pytest.approx(alone, abs=1e-5, rel=1e-5)
    assert layouts == [False]


def test_texts_cut_to_max_length_keep_their_rewards_when_grouped(grouped_runs):
    model = RewardModel(grouped_runs["full rm"], max_length=40)
    texts = [PROMPTS[0] * 3 + completion for completion in COMPLETIONS]  # longer than 40 tokens: every one is cut
    encoded = [model.encode_one(text, "long") for text in texts]
    assert all(item.cut and len(item.ids) == 40 for item in encoded)
    ids = [item.ids for item in encoded]
    alone = [model.rewards_in_passes([one], [0])[0] for one in ids]
    assert model.rewards_in_passes(ids, [0] * len(ids)) == pytest.approx(alone, abs=1e-5, rel=1e-5)


def test_the_in_process_path_groups_prompt_and_response_items(grouped_runs, monkeypatch):
    model = RewardModel(grouped_runs["lora haf packed"])
    items = [(prompt, completion) for prompt in PROMPTS for completion in COMPLETIONS]
    alone = [model.score([item])[0] for item in items]
    batches = []
    from hafrm import inference

    real_forward = inference.forward_rows
    monkeypatch.setattr(
        inference,
        "forward_rows",
        lambda net, b, *a, **k: batches.append("group_ids" in b) or real_forward(net, b, *a, **k),
    )
    assert model.score(items) == pytest.approx(alone, abs=1e-5, rel=1e-5)
    assert batches and all(batches)
