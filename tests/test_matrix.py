"""Every kind of run through every reader: {full, lora, freeze} x {rm, haf, dpo}, each read by `score`, `eval`,
`serve`, `bon` and `rlhf`'s reward function, all agreeing on the same items (long ones included) with the one
reading, `scoring.RewardModel`.

The items are chosen so that a pair and its two items are cut alike by the training rule (both replies short,
or both longer than half the budget): then `eval`'s pair scores are the items' rewards too.
"""

import json

import pytest
from fastapi.testclient import TestClient

from hafrm import bon
from hafrm.cli import main
from hafrm.config import BonConfig, EvalConfig, ScoreConfig, ServeConfig
from hafrm.evaluate import evaluate, score
from hafrm.rlhf import RewardFunction
from hafrm.scoring import RewardModel
from hafrm.serve import create_app

FINETUNES = ("full", "lora", "freeze")
METHODS = ("rm", "haf", "dpo")
MAX_LENGTH = 64
TOLERANCE = 1e-5

SHORT_PROMPT = "Answer in lower case: what is a kite?"
LONG_PROMPT = "Read this and reply in one line. " + " ".join(f"Clause {i} says the kite is red." for i in range(20))
SHORT = ["a kite is a toy that flies.", "A KITE IS A TOY."]
LONG = [
    "a kite flies high " + " and it dips and rises again" * 12,
    "THE KITE IS RED " + " AND THE WIND IS STRONG TODAY" * 12,
]
PAIRS = [(SHORT_PROMPT, *SHORT), (SHORT_PROMPT, *LONG), (LONG_PROMPT, *LONG)]
RESPONSES = SHORT + LONG  # each prompt's four replies, in this order, wherever a command takes them per prompt
ITEMS = [(prompt, response) for prompt in (SHORT_PROMPT, LONG_PROMPT) for response in RESPONSES]


@pytest.fixture(scope="module")
def runs(tiny_model, pairs_file, tmp_path_factory) -> dict[tuple[str, str], str]:
    root = tmp_path_factory.mktemp("matrix")
    directories = {}
    for finetune in FINETUNES:
        for method in METHODS:
            out = root / f"{finetune}-{method}"
            argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(out),
                    "--method", method, "--finetune", finetune, "--max-length", str(MAX_LENGTH), "--batch-size", "4",
                    "--lr", "5e-3", "--max-steps", "2", "--val-fraction", "0"]  # fmt: skip
            if finetune == "freeze":
                argv += ["--trainable-layers", "1"]
            assert main(argv) == 0, (finetune, method)
            directories[finetune, method] = str(out)
    return directories


@pytest.fixture(scope="module")
def expected(runs) -> dict[tuple[str, str], list[float]]:
    """The one reading of each run: its reward of every item."""
    return {kind: RewardModel(directory).score(ITEMS) for kind, directory in runs.items()}


def by_item(values: list[float]) -> dict[tuple[str, str], float]:
    return dict(zip(ITEMS, values))


KINDS = [(finetune, method) for finetune in FINETUNES for method in METHODS]


def test_the_items_are_long_enough_to_be_cut(runs, expected):
    reward = RewardModel(runs["full", "rm"])
    reward.encode(ITEMS)
    assert reward.truncated == 6  # every item with a long reply or the long prompt
    assert len(set(expected["full", "rm"])) == len(ITEMS)  # and the rewards tell the items apart


@pytest.mark.parametrize("kind", KINDS, ids=["-".join(kind) for kind in KINDS])
def test_every_reader_gives_the_one_reward(kind, runs, expected, tmp_path, capsys):
    directory, want = runs[kind], by_item(expected[kind])
    # hafrm score, one prompt at a time, with the count of cut items
    for prompt in (SHORT_PROMPT, LONG_PROMPT):
        got = score(ScoreConfig(model=directory, prompt=prompt, response=RESPONSES))
        assert got == pytest.approx([want[prompt, r] for r in RESPONSES], abs=TOLERANCE)
    cut_notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert cut_notes == [
        f"note: 2 of 4 items exceed {MAX_LENGTH} tokens and were cut as training cuts them",
        f"note: 4 of 4 items exceed {MAX_LENGTH} tokens and were cut as training cuts them",
    ]
    # hafrm eval: the pairs' per-side scores (the reward head, or dpo's implicit reward)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    report = evaluate(EvalConfig(model=directory, data=str(data), save_scores=True, implicit=False, combine=False))
    head = "implicit_reward" if kind[1] == "dpo" else "reward_head"
    chosen_then_rejected = [want[p, c] for p, c, _ in PAIRS] + [want[p, r] for p, _, r in PAIRS]
    assert report["scores"][head] == pytest.approx(chosen_then_rejected, abs=TOLERANCE)
    # the two pairs with long replies lose their ends and their (system-prompted) prompts' starts
    assert report["truncation"]["response_truncated"] == 2 and report["truncation"]["prompt_truncated"] == 2
    # hafrm serve: /score per prompt; /get_reward of full texts equals `hafrm score --text`
    reward = RewardModel(directory).load()
    with TestClient(create_app(reward, ServeConfig(model=directory))) as client:
        for prompt in (SHORT_PROMPT, LONG_PROMPT):
            body = client.post("/score", json={"prompt": prompt, "responses": RESPONSES}).json()
            assert body["rewards"] == pytest.approx([want[prompt, r] for r in RESPONSES], abs=TOLERANCE)
            assert sum(body["truncated"]) == (4 if prompt == LONG_PROMPT else 2)
        texts = [LONG_PROMPT + " " + LONG[0], SHORT_PROMPT]
        served = client.post("/get_reward", json={"query": texts}).json()
    assert served["rewards"] == pytest.approx(score(ScoreConfig(model=directory, text=texts)), abs=TOLERANCE)
    assert served["extra_logs"]["truncated"] == [1, 0]
    # hafrm rlhf: TRL's reward function
    prompts, completions = zip(*ITEMS)
    rewards = RewardFunction(directory, normalize=False)(list(prompts), list(completions))
    assert rewards == pytest.approx([want[item] for item in ITEMS], abs=TOLERANCE)


@pytest.mark.parametrize("finetune", FINETUNES)
def test_bon_scores_its_samples_with_the_one_reward(finetune, runs, expected, tiny_model, tmp_path, capsys):
    """`hafrm bon` over written samples (the items), every method of one fine-tuning mode at once."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (SHORT_PROMPT, LONG_PROMPT)))
    labelled = [f"{method}={runs[finetune, method]}" for method in METHODS]
    cfg = BonConfig(policy=tiny_model, prompts=str(prompts), n=4, batch_size=2, reward=labelled,
                    judge=runs["full", "rm"], output_dir=str(tmp_path / "bon"))  # fmt: skip
    (tmp_path / "bon").mkdir()
    (tmp_path / "bon" / bon.META).write_text(json.dumps(bon._meta(cfg)))
    lines = [
        {"index": i, "prompt": prompt, "responses": RESPONSES, "finished": [True] * 4}
        for i, prompt in enumerate((SHORT_PROMPT, LONG_PROMPT))
    ]
    (tmp_path / "bon" / bon.SAMPLES).write_text("".join(json.dumps(line) + "\n" for line in lines))
    bon.run_bon(cfg)
    for method in METHODS:
        grid = json.loads((tmp_path / "bon" / "scores" / f"{method}.json").read_text())["scores"]
        assert [value for row in grid for value in row] == pytest.approx(expected[finetune, method], abs=TOLERANCE)
    notes = [line for line in capsys.readouterr().out.splitlines() if "were cut as training cuts them" in line]
    assert notes[0] == f"note: rm: 6 of 8 samples exceed {MAX_LENGTH} tokens and were cut as training cuts them"
