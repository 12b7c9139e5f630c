"""Load test of `hafrm serve` on loopback: dynamic batching on / off against a one-text-at-a-time classifier loop.

    python benchmarks/serve.py --model runs/rm-default            # a hafrm run with a reward head
    python benchmarks/serve.py --model runs/rm-default --requests 96 --concurrency 1,8,32

Each server is its own process on a free loopback port, started from this script:
  hafrm-batched    `hafrm serve` (requests queued and scored together, length-sorted, one model call)
  hafrm-unbatched  `hafrm serve --no-batching` (one model call per request)
  plain-loop       the same FastAPI app, its model call replaced by a loop of
                   AutoModelForSequenceClassification over one text at a time (the `hafrm export`
                   of the run, or the run itself when it holds full weights)
Clients post `/get_reward` with one query each (a rollout: prompt + response with the chat template,
taken from the shared HH-harmless pairs, chosen then rejected), a fixed number of requests per
concurrency level, after a short warm-up. Printed per server and concurrency: requests/s, texts/s,
p50 / p99 latency, the server's resident memory before and after the run and its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import as_messages, default_data  # noqa: E402

SERVERS = ("hafrm-batched", "hafrm-unbatched", "plain-loop")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=False, help="hafrm run directory with a reward head")
    parser.add_argument("--data", default=None, help="preference file (default: the shared HH-harmless pairs)")
    parser.add_argument("--requests", type=int, default=64, help="requests per server and concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: run one server
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the servers --------------------------------------------------------------------------------------


class ClassifierLoop:
    """`scoring.RewardModel`'s serving interface over AutoModelForSequenceClassification, one text per forward pass."""

    def __init__(self, head):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch, self.head = torch, head
        self.directory, self.run, self.max_length, self.device = head.directory, head.run, head.max_length, head.device
        self.tokenizer = head.tokenizer
        self.model = AutoModelForSequenceClassification.from_pretrained(str(head.directory), num_labels=1).eval()
        head.release()  # one model in memory, as in a real plain server

    def encode_one(self, item, where):
        return self.head.encode_one(item, where)

    def encode_responses(self, prompt, responses, wheres):
        return self.head.encode_responses(prompt, responses, wheres)

    def normalized(self, values):
        return self.head.normalized(values)

    def rewards_in_passes(self, sequences, prompt_lengths=None, pass_tokens=None, stop=None):
        values = []
        with self.torch.no_grad():
            for ids in sequences:
                logits = self.model(input_ids=self.torch.tensor([ids])).logits
                values.append(float(logits[0, 0]))
        return values


def serve(opts) -> None:
    import uvicorn

    from hafrm.config import ServeConfig
    from hafrm.scoring import RewardModel
    from hafrm.serve import create_app

    cfg = ServeConfig(model=opts.model, port=opts.port, max_length=opts.max_length)
    cfg.batching = opts.serve == "hafrm-batched"
    head = RewardModel(opts.model, opts.max_length)
    if opts.serve == "plain-loop":
        head = ClassifierLoop(head)
    uvicorn.run(create_app(head, cfg), host="127.0.0.1", port=opts.port, log_level="warning")


# ---- the clients --------------------------------------------------------------------------------------


def rollout_texts(data: str, model: str, count: int) -> list[str]:
    from transformers import AutoTokenizer

    from hafrm.data import read_pairs

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = []
    for pair in read_pairs(data, skip_bad_rows=True):
        for response in (pair.chosen, pair.rejected):
            messages = as_messages(pair.prompt, "user") + as_messages(response, "assistant")
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        if len(texts) >= count:
            return texts[:count]
    return texts


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def load(url: str, texts: list[str], concurrency: int) -> list[float]:
    import httpx

    latencies, gate = [], asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(text):
            async with gate:
                started = time.perf_counter()
                reply = await client.post("/get_reward", json={"query": [text]})
                reply.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one(text) for text in texts))
    return latencies


def start_server(name: str, opts) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, __file__, "--serve", name, "--model", opts.model, "--port", str(port),
            "--max-length", str(opts.max_length)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.poll() is not None:
            raise SystemExit(f"server {name} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.25)
    process.kill()
    raise SystemExit(f"server {name} did not come up")


def measure(opts) -> list[dict]:
    texts = rollout_texts(opts.data or default_data(), opts.model, opts.requests)
    rows = []
    for name in opts.servers.split(","):
        process, url = start_server(name, opts)
        try:
            asyncio.run(load(url, texts[:8], 8))  # warm-up: first calls allocate
            for concurrency in (int(c) for c in opts.concurrency.split(",")):
                before, _ = memory_mb(process.pid)
                started = time.perf_counter()
                latencies = asyncio.run(load(url, texts, concurrency))
                seconds = time.perf_counter() - started
                after, peak = memory_mb(process.pid)
                cuts = sorted(latencies)
                row = {
                    "server": name, "concurrency": concurrency, "requests": len(texts),
                    "requests_per_s": len(texts) / seconds, "texts_per_s": len(texts) / seconds,
                    "p50_s": statistics.median(cuts), "p99_s": cuts[min(len(cuts) - 1, int(0.99 * len(cuts)))],
                    "rss_before_mb": before, "rss_after_mb": after, "peak_rss_mb": peak,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| server | concurrency | requests/s | texts/s | p50 s | p99 s | RSS before → after MiB | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {row['concurrency']} | {row['requests_per_s']:.2f} | {row['texts_per_s']:.2f} | "
            f"{row['p50_s']:.3f} | {row['p99_s']:.3f} | {row['rss_before_mb']:.0f} → {row['rss_after_mb']:.0f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    opts = parse_args(argv)
    if opts.serve:
        serve(opts)
        return
    from hafrm.runrecord import has_run_record

    if not opts.model or not has_run_record(opts.model):
        raise SystemExit("--model: a hafrm run directory with a reward head (hafrm train --method rm ...)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = measure(opts)
    print("\n" + table(rows))
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
