"""`hafrm bon` end to end on the tiny model: sampling (resumable, exact), scoring by two reward models of two
kinds, the oracle, a gold RM and a fake OpenAI-compatible judge on loopback, every figure of the report."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hafrm.bon import _meta, read_samples, run_bon
from hafrm.checkpoint import load_base_model
from hafrm.cli import main
from hafrm.config import BonConfig, ScoreConfig
from hafrm.data.builtin import builtin_rows
from hafrm.data.templates import encode_response
from hafrm.evaluate import score
from hafrm.scoring import RewardModel

PROMPTS = [row["prompt"] for row in builtin_rows("test")[:2]]
# Prompt 0 asks for lower case and at least 15 words; prompt 1 for double quotes and the word "important".
RESPONSES = [
    [
        "the night sky is wide and dark and full of small bright stars that shine all night long for us",  # 1.0
        "The night sky is dark.",  # 0.0: capitals, 5 words
        "the night sky is dark.",  # 0.5: lower case, 5 words
    ],
    ['"A bicycle is important."', "A bicycle is important.", "A bicycle is fun."],  # 1.0, 0.5, 0.0
]
ORACLE = [[1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]


def fixed_samples(directory: Path, cfg: BonConfig) -> None:
    """A hand-written samples file, with the meta of `cfg`, so run_bon scores it without sampling."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "samples.meta.json").write_text(json.dumps(_meta(cfg)))
    lines = [
        {"index": i, "prompt": p, "responses": r, "finished": [True] * 3}
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))
    ]
    (directory / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def independent_figures(judge: list[list[float]], scores: list[list[float]]) -> tuple[int, int, list[int]]:
    """(top-1 hits, top-2 hits, picks) computed plainly: max score, drawing order on ties."""
    picks, top1, top2 = [], 0, 0
    for j, s in zip(judge, scores):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        best = max(j)
        picks.append(order[0])
        top1 += j[order[0]] == best
        top2 += best in (j[order[0]], j[order[1]])
    return top1, top2, picks


def test_report_on_a_fixed_samples_file_matches_figures_computed_by_hand(
    tmp_path, reward_runs, tiny_model, response_logp
):
    out = tmp_path / "bon"
    cfg = BonConfig(policy=tiny_model, limit=2, n=3, reward=[f"rm={reward_runs['rm']},dpo={reward_runs['dpo']}"],
                    output_dir=str(out), score_batch_size=4)  # fmt: skip
    fixed_samples(out, cfg)
    report = run_bon(cfg)
    assert report["judge"] == "oracle" and report["prompts"] == 2 and report["n"] == 3
    assert report["judge_mean"] == pytest.approx(3.0 / 6)
    for label in ("rm", "dpo"):
        grid = json.loads((out / "scores" / f"{label}.json").read_text())["scores"]
        top1, top2, picks = independent_figures(ORACLE, grid)
        assert report["recall"][label]["top1"]["hits"] == top1
        assert report["recall"][label]["top2"]["hits"] == top2
        assert report["curve"][label][3]["mean"] == pytest.approx(sum(ORACLE[p][k] for p, k in enumerate(picks)) / 2)
        assert report["curve"][label][1]["mean"] == pytest.approx(1.0)  # the first sample of each prompt
    assert report["random_recall"]["top1"]["recall"] == pytest.approx(1 / 3)  # one best of three, twice
    assert report["random_recall"]["top2"]["recall"] == pytest.approx(2 / 3)
    assert report["curve"]["random"][2]["mean"] == pytest.approx((0.5 + 0.75) / 2)
    assert report["curve"]["judge's best"][3]["mean"] == 1.0
    match = report["head_to_head"]["rm vs random (first sample)"]
    assert match["wins"] == 0 and match["ties"] + match["losses"] == 2  # sample 0 is the best of both prompts
    assert {"report.json", "report.md", "bon-curve.png"} <= {p.name for p in out.iterdir()}
    assert "| random | 0.333" in (out / "report.md").read_text()

    # The reward head scores as `hafrm score` does; dpo's implicit reward is β·(log π − log π_ref) by hand.
    rm_grid = json.loads((out / "scores" / "rm.json").read_text())["scores"]
    assert rm_grid[1] == pytest.approx(
        score(ScoreConfig(model=str(reward_runs["rm"]), prompt=PROMPTS[1], response=RESPONSES[1])), abs=1e-5
    )
    dpo_grid = json.loads((out / "scores" / "dpo.json").read_text())["scores"]
    assert dpo_grid[0] == pytest.approx(
        implicit_by_hand(reward_runs["dpo"], tiny_model, PROMPTS[0], RESPONSES[0], response_logp), abs=1e-4
    )


def implicit_by_hand(run: Path, base: str, prompt: str, responses: list[str], response_logp) -> list[float]:
    policy = AutoModelForCausalLM.from_pretrained(run).eval()
    reference, _ = load_base_model(base, with_score_head=False)
    tokenizer = AutoTokenizer.from_pretrained(run)
    beta = json.loads((run / "hafrm.json").read_text())["beta"]
    values = []
    for response in responses:
        prompt_ids, response_ids = encode_response(tokenizer, prompt, response, "test")
        values.append(
            beta
            * (
                response_logp(policy, prompt_ids, response_ids)
                - response_logp(reference.eval(), prompt_ids, response_ids)
            )
        )
    return values


def test_a_plain_sequence_classifier_scores_like_the_hafrm_run(reward_runs, tmp_path):
    classifier = tmp_path / "classifier"
    shutil.copytree(reward_runs["rm"], classifier)
    (classifier / "hafrm.json").unlink()
    items = [(PROMPTS[0], response) for response in RESPONSES[0]]
    plain = RewardModel(classifier)
    assert plain.kind == "classifier" and RewardModel(reward_runs["rm"]).kind == "reward head"
    assert plain.score(items) == pytest.approx(RewardModel(reward_runs["rm"]).score(items), abs=1e-4)


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that prefers the longer answer and cannot split equal lengths."""

    calls: list[tuple[str, str]] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        a = text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)[0]
        b = text.split("\n\nAnswer B:\n", 1)[1].split("\n\nWhich answer", 1)[0]
        FakeJudge.calls.append((a, b))
        answer = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "They are equally good."
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeJudge.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_endpoint_judge_compares_every_pair_in_random_order_and_resumes(tmp_path, reward_runs, tiny_model, judge_url):
    out = tmp_path / "bon"
    cfg = BonConfig(policy=tiny_model, limit=2, n=3, reward=[str(reward_runs["rm"])], judge=judge_url,
                    judge_model="fake", output_dir=str(out))  # fmt: skip
    fixed_samples(out, cfg)
    report = run_bon(cfg)
    assert len(FakeJudge.calls) == 6  # 3 pairs per prompt
    shown_first = {a for a, _ in FakeJudge.calls}
    assert shown_first & {RESPONSES[0][0], RESPONSES[1][0]} and shown_first - {RESPONSES[0][0], RESPONSES[1][0]}
    records = [json.loads(line) for line in (out / "judge-endpoint.jsonl").read_text().splitlines()]
    # prompt 0: the long reply beats both; the two 22-character ones tie (half a win each) -> wins / 2
    assert [r["scores"] for r in records] == [[1.0, 0.25, 0.25], [1.0, 0.5, 0.0]]
    assert report["judge"].startswith("endpoint fake")
    run_bon(cfg)
    assert len(FakeJudge.calls) == 6  # every prompt was judged already


def test_a_gold_reward_model_judges(tmp_path, reward_runs, tiny_model):
    out = tmp_path / "bon"
    cfg = BonConfig(policy=tiny_model, limit=2, n=3, reward=[str(reward_runs["dpo"])], judge=str(reward_runs["rm"]),
                    output_dir=str(out))  # fmt: skip
    fixed_samples(out, cfg)
    report = run_bon(cfg)
    gold = RewardModel(reward_runs["rm"]).score([(p, r) for p, rs in zip(PROMPTS, RESPONSES) for r in rs])
    assert report["judge"] == "gold rm"
    assert report["curve"]["judge's best"][3]["mean"] == pytest.approx((max(gold[:3]) + max(gold[3:])) / 2, abs=1e-5)


def bon_argv(tiny_model, reward_runs, out, *extra) -> list[str]:
    return ["bon", "--policy", tiny_model, "--n", "2", "--batch-size", "2", "--max-new-tokens", "6",
            "--reward", str(reward_runs["rm"]), "--output-dir", str(out), *extra]  # fmt: skip


def test_sampling_resumes_exactly_after_a_crash_and_refuses_other_settings(tmp_path, reward_runs, tiny_model, capsys):
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    assert main(bon_argv(tiny_model, reward_runs, resumed, "--limit", "3")) == 0
    with (resumed / "samples.jsonl").open("a") as handle:
        handle.write('{"index": 3, "prompt": "Wri')  # a crash in the middle of a line
    assert main(bon_argv(tiny_model, reward_runs, resumed, "--limit", "5")) == 0
    assert main(bon_argv(tiny_model, reward_runs, fresh, "--limit", "5")) == 0
    ours, theirs = read_samples(resumed), read_samples(fresh)
    assert len(ours) == 5 and [line["responses"] for line in ours] == [line["responses"] for line in theirs]
    assert all(len(line["responses"]) == 2 for line in ours)
    capsys.readouterr()
    assert main(bon_argv(tiny_model, reward_runs, resumed, "--limit", "5", "--temperature", "0.7")) == 1
    assert "drawn with other settings (temperature 1.0 -> 0.7)" in capsys.readouterr().err


def test_bad_input_is_one_line_naming_the_file_row_flag_or_url(tmp_path, reward_runs, tiny_model, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n{"question": "no prompt here"}\n')
    cases = [  # (flags, message, exit status: 2 a usage error found before anything runs, 1 one while running)
        (["--prompts", str(prompts)], f"{prompts}: line 2: field `prompt` must be non-empty text", 1),
        (["--n", "0"], "--n must be at least 1", 2),
        (["--reward", str(tmp_path / "nowhere")], f"reward model {tmp_path / 'nowhere'}: no such directory", 2),
        (["--judge", "http://127.0.0.1:9/v1", "--judge-model", "x", "--limit", "1"], "judge http://127.0.0.1:9/v1/chat/completions does not answer", 1),
    ]  # fmt: skip
    for extra, message, status in cases:
        assert main(bon_argv(tiny_model, reward_runs, tmp_path / "out", *extra)) == status, message
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error
    plain = tmp_path / "plain-policy"
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": [{"role": "user", "content": "Say hi."}]}) + "\n")
    argv = bon_argv(
        str(plain), reward_runs, tmp_path / "chat-out", "--prompts", str(chat), "--judge", str(reward_runs["rm"])
    )
    assert main(argv) == 1
    assert "prompt 0 is chat messages, but --policy" in capsys.readouterr().err


def test_dpo_runs_of_one_base_share_one_reference_pass(reward_runs, monkeypatch):
    import hafrm.reference

    items = [(PROMPTS[1], response) for response in RESPONSES[1]]
    first = RewardModel(reward_runs["dpo"]).score(items)
    passes = []
    write_cache = hafrm.reference.write_cache
    monkeypatch.setattr(hafrm.reference, "write_cache", lambda *args: passes.append(1) or write_cache(*args))
    assert RewardModel(reward_runs["dpo"]).score(items) == first
    assert passes == []  # the reference log-probs came from the one reference cache
    RewardModel(reward_runs["dpo"]).score(items[:2])
    assert passes == [1]  # other token ids: a pass of their own
