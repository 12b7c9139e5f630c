"""`hafrm serve`: a reward-model HTTP server; the protocol, the batching and the guards (the model is `scoring.RewardModel`).

    hafrm serve --model runs/haf --port 5000            # binds 127.0.0.1
    curl -s localhost:5000/get_reward -d '{"query": ["<|im_start|>user\\nHi<|im_end|>\\n..."]}'

Endpoints:
    POST /get_reward  OpenRLHF's remote reward model: {"query": [text], "prompts"?: [text], "labels"?: [...]}
                      -> {"rewards": [r], "scores": [r], "extra_logs": {"truncated": [0 | 1]}}; a query is the
                      full prompt + response text with the chat template applied, scored as `hafrm score --text`
    POST /score       {"prompt": text | [message], "responses": [text | [message]]} -> {"rewards", "truncated"}
    GET  /health      {"status": "ok"}, or "degraded" with 503 while a request's work runs past request_timeout_s;
                      model, method, max length, device, ... too, unless an API key is set and not sent
    GET  /metrics     Prometheus text: requests, latency, batch sizes, queue depth, truncations, errors by kind

Every malformed or too large request gets a 4xx with {"error": "what is wrong"}, before any work (the limits:
`serve_limits`); a failed model call, or no result within `request_timeout_s` of the request's arrival, is a 503
with its reason, and the server stays up. The work of a request whose client left is dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .config import ServeConfig
from .data.formats import DuplicateKey, unique_keys
from .serve_limits import (
    LARGE_REQUEST,
    InFlight,
    Measured,
    ServeError,
    answer,
    check_request,
    check_tokens,
    client_gone,
    release_memory,
)

Text = StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: StrictStr
    content: StrictStr


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
        self.encoded = Counter("hafrm_encoded_texts", "texts tokenised", registry=self.registry)
        self.errors = Counter("hafrm_errors", "refused or failed requests by kind", ["kind"], registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Batcher:
    """Requests queue here; one task scores them together, up to `max_tokens` padded tokens or `max_wait_s`.

    A batch waits for more requests only while some are on their way (accepted and being encoded); with none
    queued and none coming it runs at once, so a lone client pays no wait. Requests that arrive while a batch
    runs queue up and form the next one.

    Each request's texts go in and come out as one slice of the batch, so replies never mix. A job whose
    request was given up (its future cancelled: the client left or timed out) is skipped, never scored, and a
    model call whose every request was given up stops at its next forward pass.
    """

    def __init__(self, score, max_tokens: int, max_wait_s: float, enabled: bool, metrics: Metrics, coming=None):
        self.score, self.max_tokens, self.max_wait_s, self.enabled = score, max_tokens, max_wait_s, enabled
        self.metrics = metrics
        # requests accepted and still being encoded: the only ones worth waiting `max_wait_s` for
        self.coming = coming or (lambda: False)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)  # one model call at a time, off the event loop
        self._held = None  # a request that did not fit the last batch: it opens the next one

    async def submit(self, sequences: list[tuple[list[int], int]], work) -> list[float]:
        """A request's (token ids, prompt length) per text -> their rewards, once its batch has run."""
        future = asyncio.get_running_loop().create_future()
        work.queued = True
        await self.queue.put((sequences, future, work))
        self.metrics.queue_depth.set(self.queue.qsize())
        return await future

    @staticmethod
    def _padded(jobs) -> int:
        lengths = [len(ids) for sequences, _, _ in jobs for ids, _ in sequences]
        return len(lengths) * max(lengths, default=0)

    async def _collect(self) -> list:
        jobs = [self._held] if self._held is not None else [await self.queue.get()]
        self._held = None
        if not self.enabled:
            return jobs
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while self._padded(jobs) < self.max_tokens:
            if self.queue.empty() and not self.coming():
                break  # nothing queued and nothing on its way: waiting would only delay this batch
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
            jobs = []
            for job in await self._collect():
                if job[1].done():  # given up: the client left or timed out
                    job[2].queued = False
                else:
                    jobs.append(job)
            self.metrics.queue_depth.set(self.queue.qsize())
            if not jobs:
                continue
            flat = [ids for sequences, _, _ in jobs for ids in sequences]
            self.metrics.batch_texts.observe(len(flat))

            def given_up(jobs=jobs) -> bool:  # every request of the batch left or timed out: stop at the next pass
                return all(work.stopped for _, _, work in jobs)

            try:
                values = await loop.run_in_executor(self.executor, self.score, flat, given_up)
            except Exception as error:  # the model failed (out of memory, ...): these requests get 503
                for _, future, work in jobs:
                    work.queued = False
                    if not future.done():
                        future.set_exception(
                            ServeError(503, "model", f"the model call failed: {type(error).__name__}: {error}")
                        )
                continue
            start = 0
            for sequences, future, work in jobs:
                work.queued = False
                if not future.done():
                    future.set_result(values[start : start + len(sequences)])
                start += len(sequences)


def _plain(value):
    """Messages as the dicts chat templates take; text and None as they are."""
    return [message.model_dump() for message in value] if isinstance(value, list) else value


class RewardService:
    """Request texts -> token ids under the guards (`serve_limits`); the batched model call behind them."""

    def __init__(self, head, cfg: ServeConfig, metrics: Metrics):
        self.head, self.cfg, self.metrics = head, cfg, metrics
        self.in_flight = InFlight()

        def score(flat: list[tuple[list[int], int]], stop) -> list[float]:
            ids, prompt_lengths = zip(*flat)
            return head.rewards_in_passes(list(ids), list(prompt_lengths), cfg.pass_tokens, stop=stop)

        def coming() -> bool:
            return any(work.encoding for work in self.in_flight.works)

        self.batcher = Batcher(score, cfg.max_batch_tokens, cfg.max_wait_ms / 1000, cfg.batching, metrics, coming)

    def encode(self, prompt, texts: list, where: str, work, chars: int):
        """In a worker thread: texts (responses to `prompt`, or full texts when it is None) -> ((token ids, prompt
        length), 1 where the text was cut); stops between texts once the request is given up or late."""
        work.encoding = True
        try:
            return self._encode(prompt, texts, where, work)
        finally:
            work.encoding = False
            if chars > LARGE_REQUEST:
                release_memory()  # the rendered texts and their tokenisations are gone by now

    def _encode(self, prompt, texts: list, where: str, work):
        from .data import DataError

        places = [f"{where}[{i}]" for i in range(len(texts))]
        if prompt is None:
            encoded = (self.head.encode_one(text, place) for text, place in zip(texts, places))
        else:  # the prompt rendered and tokenised once, each prompt + response as `encode_one` gives it
            encoded = self.head.encode_responses(_plain(prompt), [_plain(text) for text in texts], places)
        sequences, truncated, tokens = [], [], 0
        for place in places:
            work.check()
            try:
                item = next(encoded)
            except DataError as error:
                message = str(error) if str(error).startswith(place) else f"{place}: {error}"
                raise ServeError(422, "bad text", message) from None
            except Exception as error:  # what a chat template raises for messages it does not take (jinja, ...)
                refused = f"{place}: the chat template refused it ({type(error).__name__}: {str(error)[:200]})"
                raise ServeError(422, "bad text", refused) from None
            self.metrics.encoded.inc()
            ids = item.ids
            if not ids or ids[-1] == self.head.tokenizer.pad_token_id:
                raise ServeError(422, "bad text", f"{place}: no token to read a reward at (empty, or ends on the pad)")
            if item.cut and self.cfg.reject_long:
                limit = self.head.max_length
                raise ServeError(
                    413, "too long", f"{place} has {item.length} tokens; the limit is {limit} (--max-length)"
                )
            tokens += len(ids)
            check_tokens(self.cfg, tokens, place)
            sequences.append((ids, item.prompt_length))  # cut by the training rule (`scoring.encode_item`)
            truncated.append(int(item.cut))
        self.metrics.truncated.inc(sum(truncated))
        return sequences, truncated

    async def rewards(self, prompt, texts: list, where: str, normalize: bool, work) -> tuple[list[float], list[int]]:
        """The checked request's rewards: refused before any work past a limit, stopped with it (see `answer`)."""
        chars = check_request(self.cfg, prompt, texts, where)
        if not texts:
            return [], []
        sequences, truncated = await asyncio.to_thread(self.encode, prompt, texts, where, work, chars)
        values = await self.batcher.submit(sequences, work)
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
    app.add_middleware(Measured, metrics=metrics, endpoints=ENDPOINTS)

    @app.exception_handler(ServeError)
    async def refused(request, error: ServeError):
        metrics.errors.labels(error.kind).inc()
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        metrics.errors.labels("http").inc()
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return api_key is None or hmac.compare_digest(given, f"Bearer {api_key}".encode("latin-1", "replace"))

    def authorise(request: Request) -> None:
        if not authorised(request):
            raise ServeError(401, "auth", "missing or wrong bearer token (Authorization: Bearer KEY)")

    async def read_body(request: Request, model):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ServeError(
                413, "body too large", f"the body has {declared} bytes; the limit is {limit} (--max-body-mb)"
            )
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ServeError(413, "body too large", f"the body exceeds {limit} bytes (--max-body-mb)")
        except ClientDisconnect:
            raise client_gone() from None
        try:
            value = json.loads(bytes(body), object_pairs_hook=unique_keys)
        except DuplicateKey as error:
            raise ServeError(
                400, "bad json", f"the key {error.args[0][:80]!r} appears twice in one object; give each field once"
            ) from None
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

    async def handle(request: Request, model, respond):
        """One scoring request under one deadline from its arrival: body, checks, encoding and model call."""
        work = service.in_flight.start(cfg.request_timeout_s)
        try:
            authorise(request)
            try:
                body = await asyncio.wait_for(read_body(request, model), work.remaining())
            except TimeoutError:
                raise ServeError(
                    408, "timeout", f"the body did not arrive within {cfg.request_timeout_s:g} s (--request-timeout-s)"
                ) from None
            return await answer(request, work, respond(body, work))
        finally:
            work.answering = False

    @app.post("/get_reward")
    async def get_reward(request: Request):
        async def respond(body: GetRewardRequest, work):
            if body.prompts is not None and len(body.prompts) != len(body.query):
                raise ServeError(
                    422, "bad request", f"prompts: {len(body.prompts)} prompts for {len(body.query)} queries"
                )
            rewards, truncated = await service.rewards(None, body.query, "query", cfg.normalize, work)
            return {"rewards": rewards, "scores": rewards, "extra_logs": {"truncated": truncated}}

        return await handle(request, GetRewardRequest, respond)

    @app.post("/score")
    async def score(request: Request):
        async def respond(body: ScoreRequest, work):
            normalize = cfg.normalize if body.normalize is None else body.normalize
            rewards, truncated = await service.rewards(body.prompt, body.responses, "responses", normalize, work)
            return {"rewards": rewards, "truncated": truncated}

        return await handle(request, ScoreRequest, respond)

    @app.get("/health")
    async def health(request: Request):
        # degraded (503, what load balancers and k8s probes act on) while a request's work runs past the timeout
        oldest = service.in_flight.oldest_age()
        status = "degraded" if oldest > cfg.request_timeout_s else "ok"
        code = 503 if status == "degraded" else 200
        if not authorised(request):  # with an API key, strangers learn only whether the server is up
            return JSONResponse({"status": status}, status_code=code)
        run = head.run
        return JSONResponse({
            "status": status, "oldest_request_s": round(oldest, 3), "model": str(head.directory),
            "method": run.get("method"), "max_length": head.max_length, "device": head.device,
            "normalize": cfg.normalize, "batching": cfg.batching, "max_batch_tokens": cfg.max_batch_tokens,
            "queue_depth": service.batcher.queue.qsize(),
        }, status_code=code)  # fmt: skip

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
    head = RewardModel(cfg.model, cfg.max_length, share_prompts=cfg.share_prompts, dtype=getattr(torch, cfg.dtype))
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
