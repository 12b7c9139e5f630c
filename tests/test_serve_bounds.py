"""`hafrm serve` under hostile load: every request's cost bounded before work, one deadline, dropped work, health.

One `hafrm serve` process (the real command, with an API key) serves the tests that need the command's own log;
the others serve the same loaded model in-process (uvicorn in a thread), each with the settings it tests.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from hafrm.cli import main
from hafrm.config import ServeConfig
from hafrm.data import DataError
from hafrm.scoring import RewardModel, ScoringStopped, encode_item, encode_responses_to
from hafrm.serve import create_app
from template_families import FAMILIES, build_family_tokenizer

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The adversarial request: a prompt of 19,999 messages and 64 responses (1.1 MB, under the 32 MiB body limit)
AMPLIFYING = json.dumps({
    "prompt": [{"role": ("user", "assistant")[i % 2], "content": f"message number {i}"} for i in range(19_999)],
    "responses": ["ok"] * 64,
}).encode()  # fmt: skip
# Allowed, but slow to encode: each of 64 responses is tokenised with the 150k-character prompt (~9.6M characters)
SLOW = json.dumps({"prompt": "word " * 30_000, "responses": [f"reply {i}" for i in range(64)]}).encode()


@pytest.fixture(scope="module")
def run_dir(tiny_model, pairs_file, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("serve-bounds") / "rm"
    argv = ["train", "--model", tiny_model, "--data", str(pairs_file), "--output-dir", str(output_dir),
            "--method", "rm", "--max-length", "96", "--batch-size", "4", "--max-steps", "2", "--eval-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    return output_dir


@pytest.fixture(scope="module")
def head(run_dir):
    reward = RewardModel(run_dir)
    reward.serving = True
    return reward.load()


@pytest.fixture(scope="module")
def in_process(free_port):
    """in_process(head, api_key=None, **settings): the app on uvicorn in a thread on a free port -> its URL."""
    import uvicorn

    @contextmanager
    def serve(head, api_key=None, **settings):
        port = free_port()
        app = create_app(head, ServeConfig(model=str(head.directory), port=port, **settings), api_key)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)

    return serve


@pytest.fixture(scope="module")
def cli_server(run_dir, free_port):
    """A `hafrm serve` process with an API key -> (URL, pid, its output so far); stopped after the module."""
    port = free_port()
    flags = ["--max-request-chars", "20000000", "--max-text-chars", "400000"]  # lets SLOW in: its encoding is dropped
    process = subprocess.Popen(
        [sys.executable, "-m", "hafrm.cli", "serve", "--model", str(run_dir), "--port", str(port), *flags],
        env={**os.environ, "HAFRM_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []

    def read():
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=read, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited: {''.join(output)}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up in 120 s"
            time.sleep(0.1)
        yield url, process.pid, output
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def metric(url: str, name: str, headers=None) -> float:
    """A sample's value from /metrics (0 when absent), e.g. metric(url, 'hafrm_errors_total{kind="bad role"}')."""
    for line in httpx.get(f"{url}/metrics", headers=headers).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def timed(method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    reply = httpx.request(method, url, timeout=60, **kwargs)
    return reply, time.perf_counter() - started


def test_responses_to_one_prompt_encode_as_each_item_alone(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from hafrm.data.templates import ensure_pad_token

    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is a kite?"},
        {"role": "assistant", "content": "A toy."},
        {"role": "user", "content": "And what else?"},
    ]
    responses = ["A frame of sticks and paper.", [{"role": "assistant", "content": "It flies."}], "word " * 40, " ok"]
    for family in FAMILIES:
        tokenizer = AutoTokenizer.from_pretrained(build_family_tokenizer(tokenizer_dir, family, tmp_path / family))
        ensure_pad_token(tokenizer)
        for prompt in ("Describe a kite. " * 8, conversation):
            wheres = [f"responses[{i}]" for i in range(len(responses))]
            for max_length in (24, 512):
                alone = [encode_item(tokenizer, (prompt, r), max_length, w) for r, w in zip(responses, wheres)]
                together = list(encode_responses_to(tokenizer, prompt, responses, max_length, wheres))
                assert together == alone, (family, prompt, max_length)
        if family == "base":  # a plain response with no tokens: refused at the same response, with the same error
            with pytest.raises(DataError) as alone:
                encode_item(tokenizer, ("Q:", ""), 64, "responses[1]")
            with pytest.raises(DataError) as together:
                list(encode_responses_to(tokenizer, "Q:", [" a", ""], 64, ["responses[0]", "responses[1]"]))
            assert str(together.value) == str(alone.value) == "responses[1]: the response has no tokens"


def test_the_amplifying_request_is_refused_at_once_and_a_normal_request_keeps_its_latency(cli_server):
    url, _, _ = cli_server
    normal = {"json": {"query": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"]}}
    solo = statistics.median(timed("POST", f"{url}/get_reward", headers=AUTH, **normal)[1] for _ in range(5))
    with ThreadPoolExecutor(max_workers=5) as pool:
        hostile = [pool.submit(timed, "POST", f"{url}/score", content=AMPLIFYING, headers=AUTH) for _ in range(4)]
        time.sleep(0.01)
        reply, busy = timed("POST", f"{url}/get_reward", headers=AUTH, **normal)
        refused = [future.result() for future in hostile]
    assert reply.status_code == 200
    assert busy < 5 * solo + 1.0, (busy, solo)
    for answer, seconds in refused:
        assert (answer.status_code, answer.json()) == (
            413, {"error": "prompt has 19999 messages; the limit is 256 (--max-messages)"})  # fmt: skip
        assert seconds < 1.0


def test_each_limit_is_refused_before_any_work_naming_its_flag(head, in_process):
    limits = {"max_texts": 4, "max_messages": 4, "max_text_chars": 500, "max_request_chars": 1000,
              "max_request_messages": 12, "max_request_tokens": 100}  # fmt: skip
    with in_process(head, **limits) as url:

        def post(path, body):
            reply = httpx.post(f"{url}{path}", json=body, timeout=60)
            return reply.status_code, reply.json().get("error", reply.json())

        def turns(n, size=1):
            return [{"role": ("user", "assistant")[i % 2], "content": "x" * size} for i in range(n)]

        assert post("/score", {"prompt": "p", "responses": ["a"] * 5}) == (
            413, "5 texts in one request; the limit is 4 (--max-texts)")  # fmt: skip
        assert post("/score", {"prompt": turns(5), "responses": ["a"]}) == (
            413, "prompt has 5 messages; the limit is 4 (--max-messages)")  # fmt: skip
        assert post("/score", {"prompt": "p", "responses": ["a", turns(6)]}) == (
            413, "responses[1] has 6 messages; the limit is 4 (--max-messages)")  # fmt: skip
        assert post("/score", {"prompt": turns(3, 200), "responses": ["a"]}) == (
            413, "prompt has 600 characters; the limit is 500 (--max-text-chars)")  # fmt: skip
        assert post("/score", {"prompt": "p" * 300, "responses": ["a" * 10] * 4}) == (
            413, "the request has 1240 characters to tokenise (the prompt counts once per response); "
            "the limit is 1000 (--max-request-chars)")  # fmt: skip
        assert post("/get_reward", {"query": ["q" * 300] * 4}) == (
            413, "the request has 1200 characters to tokenise; the limit is 1000 (--max-request-chars)")  # fmt: skip
        assert post("/score", {"prompt": turns(3), "responses": [turns(1)] * 4}) == (
            413, "the request has 16 messages to render (the prompt counts once per response); "
            "the limit is 12 (--max-request-messages)")  # fmt: skip
        status, error = post("/score", {"prompt": "Say hi.", "responses": ["hello there " * 10] * 4})
        assert status == 413 and error.startswith("the request has ") and "tokens to score by responses[" in error
        assert error.endswith("(each text cut to max_length); the limit is 100 (--max-request-tokens)")
        assert post("/score", {"prompt": "Say hi.", "responses": ["hi"] * 2})[0] == 200  # under every limit
        for kind, count in (("too many texts", 1), ("too many messages", 2), ("too long", 1), ("request too large", 4)):
            assert metric(url, f'hafrm_errors_total{{kind="{kind}"}}') == count, kind
        assert metric(url, "hafrm_encoded_texts_total") < 4 + 2  # refused before encoding, or stopped at the limit


def test_roles_outside_the_four_are_refused_naming_where(head, in_process):
    with in_process(head) as url:
        robot = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                 {"role": "user", "content": "Go on"}, {"role": "robot", "content": "Beep"}]  # fmt: skip
        reply = httpx.post(f"{url}/score", json={"prompt": robot, "responses": ["ok"]})
        assert (reply.status_code, reply.json()) == (
            422, {"error": "prompt[3].role: 'robot' is not one of system, user, assistant, tool"})  # fmt: skip
        response = [{"role": "Assistant", "content": "ok"}]
        reply = httpx.post(f"{url}/score", json={"prompt": "Hi", "responses": ["a", response]})
        assert (reply.status_code, reply.json()["error"]) == (
            422, "responses[1][0].role: 'Assistant' is not one of system, user, assistant, tool")  # fmt: skip
        tool = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "tool", "content": "T"}]
        assert httpx.post(f"{url}/score", json={"prompt": tool, "responses": ["ok"]}).status_code == 200
        assert metric(url, 'hafrm_errors_total{kind="bad role"}') == 2


def test_the_deadline_covers_encoding(head, in_process):
    with in_process(head, request_timeout_s=0.3, max_request_chars=20_000_000, max_text_chars=400_000) as url:
        reply, seconds = timed("POST", f"{url}/score", content=SLOW)  # ~5 s of encoding on 2 CPU cores
        assert (reply.status_code, reply.json()) == (503, {"error": (
            "no result within 0.3 s of the request's arrival (--request-timeout-s): the server is overloaded")})  # fmt: skip
        assert seconds < 2.0
        time.sleep(0.5)
        encoded = metric(url, "hafrm_encoded_texts_total")
        assert encoded < 64  # the worker thread stopped at the deadline
        time.sleep(0.5)
        assert metric(url, "hafrm_encoded_texts_total") == encoded
        assert metric(url, "hafrm_batch_texts_count") == 0  # and nothing reached the model
        assert metric(url, 'hafrm_errors_total{kind="timeout"}') == 1


def test_a_client_that_leaves_has_its_work_dropped_without_a_traceback(cli_server):
    url, _, output = cli_server
    encoded, scored = metric(url, "hafrm_encoded_texts_total", AUTH), metric(url, "hafrm_batch_texts_sum", AUTH)
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
    # 1. gone in the middle of its body
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
        client.sendall(f"{head}Content-Length: 100000\r\n\r\n".encode() + b'{"prompt": "' + b"a" * 1000)
        time.sleep(0.3)
    # 2. gone while its 64 responses are encoded (~5 s of work on 2 CPU cores)
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
        client.sendall(f"{head}Content-Length: {len(SLOW)}\r\n\r\n".encode() + SLOW)
        time.sleep(0.5)
    time.sleep(1.0)
    assert metric(url, 'hafrm_errors_total{kind="client gone"}', AUTH) == 2
    dropped = metric(url, "hafrm_encoded_texts_total", AUTH) - encoded
    assert dropped < 64  # the encoding thread stopped at the next response
    time.sleep(0.5)
    assert metric(url, "hafrm_encoded_texts_total", AUTH) - encoded == dropped
    assert metric(url, "hafrm_batch_texts_sum", AUTH) == scored  # nothing of it was scored
    log = "".join(output)
    assert "Traceback" not in log and "Exception in ASGI application" not in log and "ERROR" not in log, log


def test_health_is_degraded_while_work_runs_past_the_timeout(head, in_process):
    release = threading.Event()

    class StuckHead:  # the loaded model, whose model call hangs until released
        def __getattr__(self, name):
            return getattr(head, name)

        def rewards_in_passes(self, *args, **kwargs):
            release.wait(timeout=30)
            return head.rewards_in_passes(*args, **kwargs)

    with in_process(StuckHead(), request_timeout_s=0.5) as url:
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(timed, "POST", f"{url}/get_reward", json={"query": ["hello"]})
            reply, seconds = pending.result()
            assert reply.status_code == 503 and seconds < 2.0  # answered at its deadline; the model call goes on
            time.sleep(0.1)
            health = httpx.get(f"{url}/health")
            assert health.status_code == 503
            assert health.json()["status"] == "degraded" and health.json()["oldest_request_s"] > 0.5
            release.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline, "still degraded after the model call ended"
            time.sleep(0.05)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_a_model_call_nobody_waits_for_stops_between_passes(head):
    items = [head.encode_one(("Say hi.", f"reply {i} " * 10), "x") for i in range(8)]
    sequences, prompt_lengths = [item.ids for item in items], [item.prompt_length for item in items]
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 2

    with pytest.raises(ScoringStopped):
        head.rewards_in_passes(sequences, prompt_lengths, 16, stop=stop)
    assert len(asked) == 3  # asked before each pass: two ran, the third did not
    kept_on = head.rewards_in_passes(sequences, prompt_lengths, 16, stop=lambda: False)
    assert kept_on == head.rewards_in_passes(sequences, prompt_lengths, 16)


def test_with_an_api_key_only_health_answers_strangers_and_only_with_its_status(cli_server):
    url, _, _ = cli_server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # no model path, method or device
    full = httpx.get(f"{url}/health", headers=AUTH).json()
    assert full["status"] == "ok" and full["method"] == "rm" and full["model"].endswith("rm")
    assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ok"}
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.post(f"{url}/score", json={"prompt": "p", "responses": ["a"]}).status_code == 401
    assert httpx.post(f"{url}/get_reward", json={"query": ["a"]}).status_code == 401


def test_memory_returns_after_a_burst(cli_server):
    url, pid, _ = cli_server
    statm = Path(f"/proc/{pid}/statm")
    if not statm.is_file():
        pytest.skip("no /proc here")

    def resident_mib() -> float:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    large = json.dumps({"prompt": "word " * 6000, "responses": [f"reply {i} " * 50 for i in range(32)]}).encode()
    bodies = [AMPLIFYING] * 8 + [large] * 4
    for body in (large, AMPLIFYING):  # warm: first-use allocations are not the burst's
        timed("POST", f"{url}/score", content=body, headers=AUTH)
    before = resident_mib()
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        replies = list(pool.map(lambda body: timed("POST", f"{url}/score", content=body, headers=AUTH)[0], bodies))
    assert [reply.status_code for reply in replies] == [413] * 8 + [200] * 4
    time.sleep(0.5)
    assert resident_mib() - before < 100  # unbounded, this burst took ~900 MiB and kept it
