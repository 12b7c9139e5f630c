"""`hafrm serve`: a reward-model HTTP server; the protocol, the batching and the guards (the model is `scoring.RewardModel`).

    hafrm serve --model runs/haf --port 5000            # binds 127.0.0.1
    curl -s localhost:5000/get_reward -d '{"query": ["<|im_start|>user\\nHi<|im_end|>\\n..."]}'

Endpoints:
    POST /get_reward  OpenRLHF's remote reward model: {"query": [text], "prompts"?: [text], "labels"?: [...]}
                      -> {"rewards": [r], "scores": [r], "extra_logs": {"truncated": [0 | 1]}}; a query is the
                      full prompt + response text with the chat template applied, scored as `hafrm score --text`
    POST /score       {"prompt": text | [message], "responses": [text | [message]]} -> {"rewards", "truncated"}
    GET  /health      model, method, max length, device, normalisation, batching
    GET  /metrics     Prometheus text: requests, latency, batch sizes, queue depth, truncations, errors by kind

Every malformed request gets a 4xx with {"error": "what is wrong"}; a failed model call is a 503 with
its reason, and the server stays up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.exceptions import HTTPException

from .config import ServeConfig

Text = StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: StrictStr
    content: StrictStr


class ServeError(Exception):
    """A request that cannot be served: the HTTP status, a stable kind (for /metrics) and the message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class GetRewardRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenRLHF versions send more keys; they are not ours to refuse
    query: list[Text]
    prompts: list[Text] | None = None
    labels: list[Any] | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text | Annotated[list[Message], Field(min_length=1)]
    responses: list[Text | Annotated[list[Message], Field(min_length=1)]]
    normalize: StrictBool | None = None


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}" + (
        f" ({len(error.errors()) - 1} more problems)" if len(error.errors()) > 1 else ""
    )


class Metrics:
    """Prometheus figures of one server (a registry of its own: tests start several in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hafrm_requests", "requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram("hafrm_request_seconds", "request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180))  # fmt: skip
        self.batch_texts = Histogram("hafrm_batch_texts", "texts per model call", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))  # fmt: skip
        self.queue_depth = Gauge("hafrm_queue_depth", "requests waiting for the model", registry=self.registry)
        self.truncated = Counter("hafrm_truncated_texts", "texts cut to max_length", registry=self.registry)
        self.errors = Counter("hafrm_errors", "refused or failed requests by kind", ["kind"], registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Batcher:
    """Requests queue here; one task scores them together, up to `max_tokens` padded tokens or `max_wait_s`.

    Each request's texts go in and come out as one slice of the batch, so replies never mix.
    """

    def __init__(self, score, max_tokens: int, max_wait_s: float, enabled: bool, metrics: Metrics):
        self.score, self.max_tokens, self.max_wait_s, self.enabled = score, max_tokens, max_wait_s, enabled
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)  # one model call at a time, off the event loop
        self._held = None  # a request that did not fit the last batch: it opens the next one

    async def submit(self, sequences: list[tuple[list[int], int]]) -> list[float]:
        """A request's (token ids, prompt length) per text -> their rewards, once its batch has run."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((sequences, future))
        self.metrics.queue_depth.set(self.queue.qsize())
        return await future

    @staticmethod
    def _padded(jobs) -> int:
        lengths = [len(ids) for sequences, _ in jobs for ids, _ in sequences]
        return len(lengths) * max(lengths, default=0)

    async def _collect(self) -> list:
        jobs = [self._held] if self._held is not None else [await self.queue.get()]
        self._held = None
        if not self.enabled:
            return jobs
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while self._padded(jobs) < self.max_tokens:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                job = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if self._padded([*jobs, job]) > self.max_tokens:
                self._held = job
                break
            jobs.append(job)
        return jobs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._collect() if not job[1].done()]  # a timed-out client left
            self.metrics.queue_depth.set(self.queue.qsize())
            if not jobs:
                continue
            flat = [ids for sequences, _ in jobs for ids in sequences]
            self.metrics.batch_texts.observe(len(flat))
            try:
                values = await loop.run_in_executor(self.executor, self.score, flat)
            except Exception as error:  # the model failed (out of memory, ...): these requests get 503
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(
                            ServeError(503, "model", f"the model call failed: {type(error).__name__}: {error}")
                        )
                continue
            start = 0
            for sequences, future in jobs:
                if not future.done():
                    future.set_result(values[start : start + len(sequences)])
                start += len(sequences)


def _plain(value):
    """Messages as the dicts chat templates take; text and None as they are."""
    return [message.model_dump() for message in value] if isinstance(value, list) else value


class RewardService:
    """Request items -> token ids under the guards; the batched model call behind them."""

    def __init__(self, head, cfg: ServeConfig, metrics: Metrics):
        self.head, self.cfg, self.metrics = head, cfg, metrics

        def score(flat: list[tuple[list[int], int]]) -> list[float]:
            ids, prompt_lengths = zip(*flat)
            return head.rewards_in_passes(list(ids), list(prompt_lengths), cfg.pass_tokens)

        self.batcher = Batcher(score, cfg.max_batch_tokens, cfg.max_wait_ms / 1000, cfg.batching, metrics)

    def _checked_text(self, value, where: str) -> None:
        texts = (
            [value]
            if isinstance(value, str)
            else [part for message in value for part in (message.role, message.content)]
        )
        for text in texts:
            if len(text) > self.cfg.max_text_chars:
                raise ServeError(
                    413, "too long", f"{where} has {len(text)} characters; the limit is {self.cfg.max_text_chars}"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ServeError(
                    422, "bad text", f"{where} holds a lone surrogate: it is not valid Unicode text"
                ) from None

    def encode(self, items: list[tuple], where: str) -> tuple[list[tuple[list[int], int]], list[int]]:
        """(prompt, response) or (None, full text) items -> ((token ids, prompt length), 1 where the text was cut)."""
        from .data import DataError

        sequences, truncated = [], []
        for i, (prompt, response) in enumerate(items):
            place = f"{where}[{i}]"
            self._checked_text(response, place)
            prompt, response = _plain(prompt), _plain(response)
            try:
                encoded = self.head.encode_one(response if prompt is None else (prompt, response), place)
            except DataError as error:
                raise ServeError(422, "bad text", f"{place}: {error}") from None
            except Exception as error:  # what a chat template raises for messages it does not take (jinja, ...)
                refused = f"{place}: the chat template refused it ({type(error).__name__}: {str(error)[:200]})"
                raise ServeError(422, "bad text", refused) from None
            ids = encoded.ids
            if not ids or ids[-1] == self.head.tokenizer.pad_token_id:
                raise ServeError(422, "bad text", f"{place}: no token to read a reward at (empty, or ends on the pad)")
            if encoded.cut and self.cfg.reject_long:
                limit = self.head.max_length
                raise ServeError(413, "too long", f"{place} has {encoded.length} tokens; the limit is {limit}")
            sequences.append((ids, encoded.prompt_length))  # cut by the training rule (`scoring.encode_item`)
            truncated.append(int(encoded.cut))
        self.metrics.truncated.inc(sum(truncated))
        return sequences, truncated

    async def rewards(self, items: list[tuple], where: str, normalize: bool) -> tuple[list[float], list[int]]:
        if len(items) > self.cfg.max_texts:
            raise ServeError(
                413, "too many texts", f"{len(items)} texts in one request; the limit is {self.cfg.max_texts}"
            )
        if not items:
            return [], []
        sequences, truncated = await asyncio.to_thread(self.encode, items, where)
        try:
            values = await asyncio.wait_for(self.batcher.submit(sequences), self.cfg.request_timeout_s)
        except TimeoutError:
            raise ServeError(
                503, "timeout", f"no model result within {self.cfg.request_timeout_s:g} s (the server is overloaded)"
            ) from None
        return (self.head.normalized(values) if normalize else values), truncated


ENDPOINTS = ("/get_reward", "/score", "/health", "/metrics")


def create_app(head, cfg: ServeConfig, api_key: str | None = None):
    """The FastAPI app serving `head` (a `hafrm.scoring.RewardModel`, or anything with its methods)."""
    metrics = Metrics()
    service = RewardService(head, cfg, metrics)
    limit = int(cfg.max_body_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(service.batcher.run())
        yield
        task.cancel()
        service.batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="hafrm reward server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ServeError)
    async def refused(request, error: ServeError):
        metrics.errors.labels(error.kind).inc()
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        metrics.errors.labels("http").inc()
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, f"Bearer {api_key}".encode("latin-1", "replace")):
            raise ServeError(401, "auth", "missing or wrong bearer token (Authorization: Bearer KEY)")

    async def read_body(request: Request, model):
        authorise(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ServeError(413, "body too large", f"the body has {declared} bytes; the limit is {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ServeError(413, "body too large", f"the body exceeds {limit} bytes")
        try:
            value = json.loads(bytes(body))
        except (ValueError, RecursionError) as error:
            raise ServeError(
                400, "bad json", f"the body is not valid JSON ({type(error).__name__}: {str(error)[:200]})"
            ) from None
        try:
            return model.model_validate(value)
        except ValidationError as error:
            raise ServeError(422, "bad request", _validation_message(error)) from None
        except RecursionError:
            raise ServeError(422, "bad request", "the body is nested too deeply") from None

    @app.post("/get_reward")
    async def get_reward(request: Request):
        body = await read_body(request, GetRewardRequest)
        if body.prompts is not None and len(body.prompts) != len(body.query):
            raise ServeError(422, "bad request", f"prompts: {len(body.prompts)} prompts for {len(body.query)} queries")
        items = [(None, text) for text in body.query]
        rewards, truncated = await service.rewards(items, "query", cfg.normalize)
        return {"rewards": rewards, "scores": rewards, "extra_logs": {"truncated": truncated}}

    @app.post("/score")
    async def score(request: Request):
        body = await read_body(request, ScoreRequest)
        service._checked_text(body.prompt, "prompt")
        normalize = cfg.normalize if body.normalize is None else body.normalize
        items = [(body.prompt, response) for response in body.responses]
        rewards, truncated = await service.rewards(items, "responses", normalize)
        return {"rewards": rewards, "truncated": truncated}

    @app.get("/health")
    async def health():
        run = head.run
        return {
            "status": "ok", "model": str(head.directory), "method": run.get("method"), "max_length": head.max_length,
            "device": head.device, "normalize": cfg.normalize, "batching": cfg.batching,
            "max_batch_tokens": cfg.max_batch_tokens, "queue_depth": service.batcher.queue.qsize(),
        }  # fmt: skip

    @app.get("/metrics")
    async def prometheus(request: Request):
        authorise(request)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    return app


def run_serve(cfg: ServeConfig) -> None:
    """Load the model once and serve it until interrupted."""
    import torch
    import uvicorn

    from .scoring import RewardModel

    api_key = os.environ.get(cfg.api_key_env) or None
    head = RewardModel(cfg.model, cfg.max_length, dtype=getattr(torch, cfg.dtype))
    head.serving = True  # an implicit reward (dpo run) keeps its base model beside it, no disk cache per request
    head.load()  # before the first request
    app = create_app(head, cfg, api_key)
    if cfg.host not in {"127.0.0.1", "localhost", "::1"}:
        print(
            f"note: binding {cfg.host}: the server is reachable from other machines"
            + ("" if api_key else ", without a token")
        )
    print(f"hafrm serve: {cfg.model} ({head.run.get('method')}, max {head.max_length} tokens, {head.device}) "
          f"on http://{cfg.host}:{cfg.port}", flush=True)  # fmt: skip
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
