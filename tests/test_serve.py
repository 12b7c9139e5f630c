"""`hafrm serve` over real HTTP on loopback: both endpoints against `hafrm score`, batching, guards, a fuzz.

Every test starts its own server process on a free port and stops it before it ends.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafrm.cli import main
from hafrm.config import ScoreConfig
from hafrm.evaluate import score

PROMPTS = ["Reply in lower case only.", "Answer in capital letters: what is a kite?", "Say hi."]
RESPONSES = ["ok, a kite flies.", "A KITE IS A TOY THAT FLIES.", "hi there, friend", "No."]


@pytest.fixture(scope="module")
def run_dir(tiny_model, pairs_file, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("serve") / "rm"
    argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(output_dir),
            "--method", "rm", "--max-length", "96", "--batch-size", "4", "--max-steps", "2", "--eval-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    return output_dir


@pytest.fixture(scope="module")
def serving(free_port):
    """serving(run_dir, *flags, env=None): a `hafrm serve` process on a free loopback port -> its URL; stopped after."""

    @contextmanager
    def serve(run_dir, *flags, env: dict | None = None):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "hafrm.cli", "serve", "--model", str(run_dir), "--port", str(port), *flags],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, f"the server exited: {process.stdout.read()}"
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not come up in 120 s"
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

    return serve


def chat_text(run_dir, prompt: str, response: str) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def test_both_endpoints_give_the_rewards_of_hafrm_score(run_dir, capsys, serving):
    expected = score(ScoreConfig(model=str(run_dir), prompt=PROMPTS[0], response=RESPONSES))
    # OpenRLHF decodes its rollouts with special tokens kept; it may or may not end them with the template's newline
    queries = [chat_text(run_dir, PROMPTS[0], response) for response in RESPONSES]
    queries[1] = queries[1].rstrip("\n")
    expected_text = score(ScoreConfig(model=str(run_dir), text=queries))
    capsys.readouterr()
    with serving(run_dir) as url:
        scored = httpx.post(f"{url}/score", json={"prompt": PROMPTS[0], "responses": RESPONSES}).json()
        assert scored["rewards"] == pytest.approx(expected, abs=1e-4)
        assert scored["truncated"] == [0, 0, 0, 0]
        payload = {"query": queries, "prompts": [PROMPTS[0]] * 4, "labels": [None] * 4}
        reply = httpx.post(f"{url}/get_reward", json=payload)
        assert reply.status_code == 200
        body = reply.json()
        assert set(body) == {"rewards", "scores", "extra_logs"}
        assert body["rewards"] == body["scores"] == pytest.approx(expected_text, abs=1e-4)
        assert body["rewards"] == pytest.approx(expected, abs=1e-4)  # one reward, whichever way it is asked
        assert body["extra_logs"] == {"truncated": [0, 0, 0, 0]}
        messages = {
            "prompt": [{"role": "user", "content": PROMPTS[0]}],
            "responses": [[{"role": "assistant", "content": RESPONSES[0]}]],
        }
        assert httpx.post(f"{url}/score", json=messages).json()["rewards"] == pytest.approx(expected[:1], abs=1e-4)
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["method"], health["max_length"], health["device"]) == ("ok", "rm", 96, "cpu")
        metrics = httpx.get(f"{url}/metrics").text
        assert 'hafrm_requests_total{endpoint="/score",status="200"} 2.0' in metrics
        assert 'hafrm_requests_total{endpoint="/get_reward",status="200"} 1.0' in metrics
        assert "hafrm_batch_texts_count" in metrics and "hafrm_queue_depth" in metrics


def test_concurrent_clients_get_their_own_rewards(run_dir, serving):
    requests = [(PROMPTS[i % 3], RESPONSES[: 1 + i % 4]) for i in range(24)]
    with serving(run_dir, "--max-wait-ms", "50") as url:
        alone = [httpx.post(f"{url}/score", json={"prompt": p, "responses": r}).json()["rewards"] for p, r in requests]

        def ask(request):
            with httpx.Client(timeout=60) as client:
                return client.post(f"{url}/score", json={"prompt": request[0], "responses": request[1]}).json()[
                    "rewards"
                ]

        with ThreadPoolExecutor(max_workers=12) as pool:
            together = list(pool.map(ask, requests))
        metrics = httpx.get(f"{url}/metrics").text
    for mine, reference in zip(together, alone):
        assert mine == pytest.approx(reference, abs=1e-4)
    calls = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("hafrm_batch_texts_count")))
    assert calls < len(requests) * 2  # 24 alone + 24 concurrent requests: the concurrent ones shared model calls


def test_the_api_key_and_reject_long(run_dir, serving):
    long_response = "a long answer " * 40
    with serving(run_dir, "--reject-long", env={"HAFRM_API_KEY": "s3cret"}) as url:
        body = {"prompt": PROMPTS[1], "responses": [RESPONSES[0]]}
        refused = httpx.post(f"{url}/score", json=body)
        assert (refused.status_code, refused.json()) == (
            401,
            {"error": "missing or wrong bearer token (Authorization: Bearer KEY)"},
        )
        assert httpx.post(f"{url}/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{url}/score", json=body, headers=key).status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        long = httpx.post(f"{url}/score", json={"prompt": PROMPTS[1], "responses": [long_response]}, headers=key)
        assert long.status_code == 413
        error = long.json()["error"]
        assert error.startswith("responses[0] has ") and error.endswith("the limit is 96 (--max-length)")


def test_guards_answer_4xx_with_what_is_wrong(run_dir, serving):
    flags = ["--max-texts", "4", "--max-body-mb", "0.01", "--max-text-chars", "500", "--max-length", "48"]
    with serving(run_dir, *flags) as url:

        def post(path, **kwargs):
            reply = httpx.post(f"{url}{path}", **kwargs)
            return reply.status_code, reply.json()["error"] if reply.status_code != 200 else reply.json()

        assert post("/score", json={"prompt": "p", "responses": ["a"] * 5}) == (
            413, "5 texts in one request; the limit is 4 (--max-texts)")  # fmt: skip
        status, error = post("/get_reward", content=b'{"query": ["' + b"x" * 20000 + b'"]}')
        assert (status, error) == (413, "the body has 20015 bytes; the limit is 10485 (--max-body-mb)")
        assert post("/score", json={"prompt": "p", "responses": ["y" * 501]}) == (
            413, "responses[0] has 501 characters; the limit is 500 (--max-text-chars)")  # fmt: skip
        assert post("/score", content=b"{not json")[0] == 400
        assert post("/score", content=b'{"prompt": "p", "responses": ["a"], "prompt": "q"}') == (
            400, "the key 'prompt' appears twice in one object; give each field once")  # fmt: skip
        assert post("/score", json={"prompt": "p"}) == (422, "responses: Field required")
        assert post("/score", json={"prompt": "p", "responses": ["a"], "extra": 1}) == (
            422,
            "extra: Extra inputs are not permitted",
        )
        status, error = post("/score", json={"prompt": [{"role": "user"}], "responses": ["a"]})
        assert status == 422 and error.startswith("prompt.")
        assert post("/get_reward", json={"query": "one text"}) == (422, "query: Input should be a valid list")
        assert post("/get_reward", json={"query": [1]}) == (422, "query.0: Input should be a valid string")
        assert post("/get_reward", json={"query": ["a"], "prompts": ["a", "b"]}) == (
            422,
            "prompts: 2 prompts for 1 queries",
        )
        assert post("/get_reward", content=b'{"query": ["\\ud800"]}') == (
            422, "query[0] holds a lone surrogate: it is not valid Unicode text")  # fmt: skip
        assert post("/get_reward", json={"query": [""]})[0] == 200  # scored as `hafrm score --text ""`: its end-of-turn
        assert post("/get_reward", json={"query": []}) == (
            200,
            {"rewards": [], "scores": [], "extra_logs": {"truncated": []}},
        )
        long = post("/score", json={"prompt": PROMPTS[2], "responses": ["a long answer " * 20, "ok"]})
        assert long[0] == 200 and long[1]["truncated"] == [1, 0]
        assert httpx.get(f"{url}/nowhere").status_code == 404
        assert httpx.get(f"{url}/score").status_code == 405
        metrics = httpx.get(f"{url}/metrics").text
        assert "hafrm_truncated_texts_total 1.0" in metrics
        assert 'hafrm_errors_total{kind="too many texts"} 1.0' in metrics


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
near_valid = st.fixed_dictionaries(
    {"query": st.lists(st.text(max_size=40) | st.integers() | st.none(), max_size=3)},
    optional={"prompts": json_values, "labels": json_values, "x": json_values},
) | st.fixed_dictionaries(
    {
        "prompt": st.text(max_size=30) | json_values,
        "responses": st.lists(st.text(max_size=30) | json_values, max_size=3),
    },
    optional={"normalize": json_values},
)
bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),
    near_valid.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
)


def test_fuzz_two_thousand_malformed_requests_never_get_a_5xx(run_dir, serving):
    statuses = []
    with (
        serving(run_dir, "--max-length", "32", "--max-wait-ms", "0") as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):

        @settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(["/get_reward", "/score", "/health", "/metrics", "/", "/get_reward/x"]),
               method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]), body=bodies,
               content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))  # fmt: skip
        def request(path, method, body, content_type):
            reply = client.request(method, path, content=body, headers={"content-type": content_type})
            statuses.append(reply.status_code)
            assert reply.status_code < 500, (path, method, body, reply.text)
            if reply.status_code >= 400 and path in ("/get_reward", "/score"):
                assert set(reply.json()) == {"error"}

        request()
        assert client.get("/health").json()["status"] == "ok"
    assert len(statuses) == 2000
    assert 0 < sum(status == 200 for status in statuses) < 2000  # some requests were valid and scored
