"""Load test of `hafrm serve` on loopback: dynamic batching on / off against a one-text-at-a-time classifier loop.

    python benchmarks/serve.py --model runs/rm-default            # a hafrm run with a reward head
    python benchmarks/serve.py --model runs/rm-default --requests 96 --concurrency 1,8,32

Each server is its own process on a free loopback port, started from this script:
  hafrm-batched    `hafrm serve` (requests queued and scored together, length-sorted, one model call)
  hafrm-unbatched  `hafrm serve --no-batching` (one model call per request)
  hafrm-ungrouped  `hafrm serve --no-batching --no-share-prompts` (one call per request, every text in full: how
                   the server scored a rollout group before grouping)
  plain-loop       the same FastAPI app, its model call replaced by a loop of
                   AutoModelForSequenceClassification over one text at a time (the `hafrm export`
                   of the run, or the run itself when it holds full weights)
Clients post `/get_reward` with G queries each (`--group-size`, default 1,4,8): a rollout group, the G full
texts (prompt + response with the chat template) of one prompt, as GRPO / RLOO send them; G = 1 is one text per
request. Prompts and responses come from the preference pairs (default: the shared HH-harmless pairs;
`--data builtin:test` for the built-in set's lengths): each request takes the next prompt and the next G responses of the
pool. A fixed number of requests per group size and concurrency level, after a short warm-up. Printed per
server, group size and concurrency: requests/s, texts/s, p50 / p99 latency, the server's resident memory
before and after the run and its peak; per group size, the token bound of grouping, (P + G·R) / (G·(P + R))
summed over the traffic (P a group's shared tokens, R a text's own); and the batched server's texts/s over the
unbatched one's. A tiny model (`--model` a run of one: tests/conftest's, or any small run) times the server's
own path, where the model costs almost nothing.
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

SERVERS = ("hafrm-batched", "hafrm-unbatched", "hafrm-ungrouped", "plain-loop")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=False, help="hafrm run directory with a reward head")
    parser.add_argument("--data", default=None, help="preference file (default: the shared HH-harmless pairs)")
    parser.add_argument("--requests", type=int, default=64, help="requests per server and concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--group-size", default="1,4,8", help="texts per request: one prompt's G completions")
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
    cfg.share_prompts = opts.serve != "hafrm-ungrouped"
    head = RewardModel(opts.model, opts.max_length, share_prompts=cfg.share_prompts)
    if opts.serve == "plain-loop":
        head = ClassifierLoop(head)
    uvicorn.run(create_app(head, cfg), host="127.0.0.1", port=opts.port, log_level="warning")


# ---- the clients --------------------------------------------------------------------------------------


def rollout_requests(data: str, model: str, count: int, group_size: int) -> list[list[str]]:
    """`count` requests of `group_size` full texts each: one prompt of the pairs with the pool's next responses."""
    from transformers import AutoTokenizer

    from hafrm.data import read_pairs

    tokenizer = AutoTokenizer.from_pretrained(model)
    pairs = read_pairs(data, skip_bad_rows=True)
    responses = [response for pair in pairs for response in (pair.chosen, pair.rejected)]
    requests = []
    for index in range(count):
        prompt = pairs[index % len(pairs)].prompt
        texts = []
        for member in range(group_size):
            response = responses[(index * group_size + member) % len(responses)]
            messages = as_messages(prompt, "user") + as_messages(response, "assistant")
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        requests.append(texts)
    return requests


def token_bound(requests: list[list[str]], model: str, max_length: int) -> tuple[int, int]:
    """(tokens with each request's shared prefix once, tokens of every text in full), as the server tokenises."""
    from hafrm.data.collator import unit_tokens
    from hafrm.scoring import RewardModel

    head = RewardModel(model, max_length)
    grouped = plain = 0
    for texts in requests:
        ids = [head.encode_one(text, "text").ids for text in texts]
        grouped += unit_tokens(ids)
        plain += sum(len(one) for one in ids)
    return grouped, plain


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def load(url: str, requests: list[list[str]], concurrency: int) -> list[float]:
    import httpx

    latencies, gate = [], asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(texts):
            async with gate:
                started = time.perf_counter()
                reply = await client.post("/get_reward", json={"query": texts})
                reply.raise_for_status()
                if len(reply.json()["rewards"]) != len(texts):
                    raise SystemExit(f"{url}: {len(texts)} texts sent, {len(reply.json()['rewards'])} rewards back")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one(texts) for texts in requests))
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
    data = opts.data or default_data()
    sizes = [int(g) for g in opts.group_size.split(",")]
    traffic = {g: rollout_requests(data, opts.model, opts.requests, g) for g in sizes}
    bounds = {g: token_bound(traffic[g], opts.model, opts.max_length) for g in sizes}
    rows = []
    for name in opts.servers.split(","):
        process, url = start_server(name, opts)
        try:
            asyncio.run(load(url, traffic[sizes[0]][:8], 8))  # warm-up: first calls allocate
            for g in sizes:
                for concurrency in (int(c) for c in opts.concurrency.split(",")):
                    before, _ = memory_mb(process.pid)
                    started = time.perf_counter()
                    latencies = asyncio.run(load(url, traffic[g], concurrency))
                    seconds = time.perf_counter() - started
                    after, peak = memory_mb(process.pid)
                    cuts = sorted(latencies)
                    row = {
                        "server": name, "group_size": g, "concurrency": concurrency, "requests": len(traffic[g]),
                        "texts": len(traffic[g]) * g, "requests_per_s": len(traffic[g]) / seconds,
                        "texts_per_s": len(traffic[g]) * g / seconds,
                        "p50_s": statistics.median(cuts), "p99_s": cuts[min(len(cuts) - 1, int(0.99 * len(cuts)))],
                        "rss_before_mb": before, "rss_after_mb": after, "peak_rss_mb": peak,
                        "grouped_tokens": bounds[g][0], "plain_tokens": bounds[g][1],
                    }  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return rows


def ratios(rows: list[dict]) -> list[str]:
    """Per group size and concurrency: the batched server's texts/s over the unbatched one's; the token bound."""
    by_key = {(row["server"], row["group_size"], row["concurrency"]): row for row in rows}
    lines = []
    for (server, g, concurrency), row in by_key.items():
        if server != "hafrm-batched":
            continue
        parts = [
            f"batched / {other.split('-')[1]} texts/s {row['texts_per_s'] / by_key[key]['texts_per_s']:.2f}"
            for other in ("hafrm-unbatched", "hafrm-ungrouped")
            if (key := (other, g, concurrency)) in by_key
        ]
        bound = row["plain_tokens"] / row["grouped_tokens"]
        lines.append(
            f"G={g} concurrency {concurrency}: {'; '.join(parts) or 'no other server'}"
            f" (token bound of grouping {bound:.2f}x: {row['grouped_tokens']} of {row['plain_tokens']} tokens run)"
        )
    return lines


def table(rows: list[dict]) -> str:
    lines = [
        "| server | G | concurrency | requests/s | texts/s | p50 s | p99 s | RSS before → after MiB | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {row['group_size']} | {row['concurrency']} | {row['requests_per_s']:.2f} | "
            f"{row['texts_per_s']:.2f} | "
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
    print("\n".join(["", *ratios(rows)]))
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
