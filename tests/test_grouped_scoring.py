"""Grouped scoring (issue 28): texts that share their leading tokens run them once, with rewards exact against
scoring each text alone, for the server's passes (`RewardModel.rewards_in_passes`) and the in-process path."""

import pytest

from hafrm import scoring
from hafrm.data.collator import unit_tokens
from hafrm.inference import MIN_SHARED_PREFIX, prompt_groups
from hafrm.scoring import RewardModel

# Every text opens with this, as a chat template's system prompt opens every rollout: it must not merge the groups
PREAMBLE = (
    "System: you are a careful assistant. Answer the user's request exactly as asked, and say nothing else. "
    "Keep to the form the user gives, count what they ask you to count, and never add a greeting or a note. "
)
PROMPTS = [
    PREAMBLE + "User: Write one sentence about the sea, in lower case, without the letter z, ending with a full stop. ",
    PREAMBLE + "User: List three colours that are also fruits; put each on its own line and do not number the lines. ",
]
COMPLETIONS = ["the sea is wide.", "Orange\nLime\nPeach", "blue and grey and green", "x", "the waves come in."]


def rollout_texts() -> list[str]:
    """Two rollout groups of full texts (G = 5 each), shuffled together, and one text that shares nothing."""
    texts = [prompt + completion for completion in COMPLETIONS for prompt in PROMPTS]
    return [*texts, "A lone text with a prompt of its own."]


@pytest.fixture(scope="module")
def grouped_runs(reward_runs, tiny_model, pairs_file, train_run, tmp_path_factory):
    """A full rm run trained packed (reward_runs) and a LoRA haf run trained padded, 2 steps each."""
    root = tmp_path_factory.mktemp("grouped")
    lora = train_run(tiny_model, pairs_file, root / "lora-haf", "--method", "haf", "--finetune", "lora",
                     "--no-packing", "--max-steps", "2", "--val-fraction", "0")  # fmt: skip
    return {"full rm": reward_runs["rm"], "lora haf padded": lora}


def test_full_texts_that_share_a_prefix_are_grouped_and_others_are_not():
    prompt = list(range(100, 100 + MIN_SHARED_PREFIX))
    texts = [prompt + [1, 2], [7] * 30, prompt + [3], prompt[:-1] + [9, 9], prompt + [4, 5, 6]]
    assert prompt_groups(texts, [0] * len(texts)) == [[0, 2, 4], [1], [3]]  # 3 shares only 15 tokens
    assert prompt_groups(texts, [0] * len(texts), min_shared=MIN_SHARED_PREFIX - 1) == [[0, 2, 3, 4], [1]]
    # the token budget splits a group: the prefix once, then 2 + 1 (+ 3: past the budget) own tokens
    assert prompt_groups(texts, [0] * len(texts), max_tokens=MIN_SHARED_PREFIX + 3) == [[0, 2], [4], [1], [3]]
    # items with a prompt length group by their prompt, as before
    assert prompt_groups([[1, 2, 3], [1, 2, 4], [1, 5]], [2, 2, 1]) == [[0, 1], [2]]


def record_cached(monkeypatch) -> list:
    """The groups each call of `prefix_scoring.cached_prefix_rewards` gets, as token-id lists."""
    from hafrm import prefix_scoring

    calls, real = [], prefix_scoring.cached_prefix_rewards

    def recording(model, sequences, groups, pad):
        calls.append([[sequences[i] for i in group] for group in groups])
        return real(model, sequences, groups, pad)

    monkeypatch.setattr(prefix_scoring, "cached_prefix_rewards", recording)
    return calls


@pytest.mark.parametrize("run", ["full rm", "lora haf padded"])
def test_server_passes_score_rollout_groups_once_and_exactly(grouped_runs, run, monkeypatch):
    model = RewardModel(grouped_runs[run], max_length=256)
    ids = [model.encode_one(text, f"text {i}").ids for i, text in enumerate(rollout_texts())]
    alone = [model.rewards_in_passes([one], [0])[0] for one in ids]
    model.rewards_in_passes(ids, [0] * len(ids))  # the first grouped call checks the model once (two texts)
    calls = record_cached(monkeypatch)
    plain = []
    real = scoring.forward_rows
    monkeypatch.setattr(scoring, "forward_rows", lambda net, b, **h: plain.append(1) or real(net, b, **h))
    grouped = model.rewards_in_passes(ids, [0] * len(ids))
    assert grouped == pytest.approx(alone, abs=1e-5, rel=1e-5)
    # one pass for both groups (their prefixes once each), the lone text in a pass of its own
    assert len(calls) == 1 and sorted(len(group) for group in calls[0]) == [5, 5]
    assert all(unit_tokens(group) < sum(len(one) for one in group) - 4 * MIN_SHARED_PREFIX for group in calls[0])
    assert {tuple(one) for group in calls[0] for one in group} == {tuple(one) for one in ids[:-1]}
    preamble = len(model.encode_one(PREAMBLE, "preamble").ids)
    assert preamble > MIN_SHARED_PREFIX  # every text but the lone one shares it, yet the two prompts stay apart
    assert len(plain) == (1 if model.run["packing"] else 0)  # padded passes go through inference.score_sequences


def test_a_model_whose_cache_fails_the_check_is_scored_without_sharing(grouped_runs, monkeypatch, capsys):
    from hafrm import prefix_scoring
    from hafrm.model import unwrap

    model = RewardModel(grouped_runs["full rm"], max_length=256)
    ids = [model.encode_one(text, f"text {i}").ids for i, text in enumerate(rollout_texts())]
    alone = [model.rewards_in_passes([one], [0])[0] for one in ids]
    monkeypatch.setattr(prefix_scoring, "cached_prefix_error", lambda *args: 1.0)  # as a model that ignores it would
    monkeypatch.delattr(unwrap(model.model), "_hafrm_cached_prefix_verified", raising=False)
    calls = record_cached(monkeypatch)
    assert model.rewards_in_passes(ids, [0] * len(ids)) == pytest.approx(alone, abs=1e-5, rel=1e-5)
    assert calls == [] and "note: prefix caching off: LlamaForCausalLM" in capsys.readouterr().out


def test_long_texts_are_grouped_exactly_and_cut_ones_score_as_alone(grouped_runs, monkeypatch):
    model = RewardModel(grouped_runs["full rm"], max_length=480)
    texts = [PROMPTS[0] * 4 + completion * 12 for completion in COMPLETIONS]  # about 250-450 tokens each
    encoded = [model.encode_one(text, "long") for text in texts]
    assert not any(item.cut for item in encoded) and max(len(item.ids) for item in encoded) > 300
    ids = [item.ids for item in encoded]
    alone = [model.rewards_in_passes([one], [0])[0] for one in ids]
    model.rewards_in_passes(ids, [0] * len(ids))  # the check, once per model
    calls = record_cached(monkeypatch)
    assert model.rewards_in_passes(ids, [0] * len(ids)) == pytest.approx(alone, abs=1e-5, rel=1e-5)
    assert [len(group) for group in calls[0]] == [5]
    # cut to 64 tokens, every text loses its start (the prompt's opening): what is left shares nothing
    short = RewardModel(grouped_runs["full rm"], max_length=64)
    cut = [short.encode_one(text, "long") for text in texts]
    assert all(item.cut and len(item.ids) == 64 for item in cut)
    alone = [short.rewards_in_passes([item.ids], [0])[0] for item in cut]
    assert short.rewards_in_passes([item.ids for item in cut], [0] * len(cut)) == pytest.approx(alone, abs=1e-5)
    assert len(calls) == 1


def test_the_in_process_path_groups_prompt_and_response_items(grouped_runs, monkeypatch):
    model = RewardModel(grouped_runs["lora haf padded"], max_length=256)
    items = [(prompt, completion) for prompt in PROMPTS for completion in COMPLETIONS]
    alone = [model.score([item])[0] for item in items]
    model.score(items[:2])  # the check, once per model
    calls = record_cached(monkeypatch)
    assert model.score(items) == pytest.approx(alone, abs=1e-5, rel=1e-5)
    assert len(calls) == 1 and sorted(len(group) for group in calls[0]) == [5, 5]


# --- the server's batcher: waits only for requests on their way -----------------------------------------------


def test_a_batch_runs_at_once_when_nothing_is_coming_and_waits_for_what_is():
    import asyncio

    from hafrm.serve import Batcher, Metrics

    async def scenario(coming_flag: list[bool]) -> list[int]:
        batcher = Batcher(None, max_tokens=10_000, max_wait_s=3600, enabled=True, metrics=Metrics(),
                          coming=lambda: coming_flag[0])  # fmt: skip
        loop = asyncio.get_running_loop()
        await batcher.queue.put(([([1, 2, 3], 0)], loop.create_future(), None))

        async def late_request():
            await asyncio.sleep(0.05)
            await batcher.queue.put(([([4, 5], 0)], loop.create_future(), None))
            coming_flag[0] = False

        late = asyncio.ensure_future(late_request())
        jobs = await asyncio.wait_for(batcher._collect(), timeout=30)  # an hour's wait would fail here
        await late
        return [len(job[0][0][0]) for job in jobs]

    assert asyncio.run(scenario([False])) == [3]  # alone: runs without waiting for the late one
    assert asyncio.run(scenario([True])) == [3, 2]  # one on its way: the batch waits for it


def test_the_server_scores_a_rollout_group_as_each_text_alone(grouped_runs):
    """/get_reward (full texts: the prefix found in token ids) and /score (prompt + responses), batched."""
    from fastapi.testclient import TestClient

    from hafrm.config import ServeConfig
    from hafrm.serve import create_app

    cfg = ServeConfig(model=str(grouped_runs["full rm"]), max_length=256)
    head = RewardModel(cfg.model, cfg.max_length).load()
    texts = rollout_texts()
    with TestClient(create_app(head, cfg)) as client:
        alone = [client.post("/get_reward", json={"query": [text]}).json()["rewards"][0] for text in texts]
        together = client.post("/get_reward", json={"query": texts}).json()["rewards"]
        assert together == pytest.approx(alone, abs=1e-5, rel=1e-5)
        single = [
            client.post("/score", json={"prompt": PROMPTS[0], "responses": [completion]}).json()["rewards"][0]
            for completion in COMPLETIONS
        ]
        grouped = client.post("/score", json={"prompt": PROMPTS[0], "responses": COMPLETIONS}).json()["rewards"]
        assert grouped == pytest.approx(single, abs=1e-5, rel=1e-5)
    assert unwrap_verdict(head) is True  # the server checked the model and shared the prefixes


def unwrap_verdict(head):
    from hafrm.model import unwrap

    return getattr(unwrap(head.model), "_hafrm_cached_prefix_verified", None)
