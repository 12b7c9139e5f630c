"""What one request to `hafrm serve` may cost, and how long it may take: the guards around its work.

    check_request(cfg, prompt, texts, "responses")   # before any work: ServeError 413 / 422 naming the field and flag
    work = in_flight.start(cfg.request_timeout_s)    # one request's deadline, from its arrival, and its stop flag
    work.check()                                     # between texts in the encoding thread: stop when told or late
    await answer(request, work, respond(body, work)) # its result, or 499 when the client left, 503 at the deadline
    in_flight.oldest_age()                           # /health: how long the oldest unfinished request has run
    release_memory()                                 # after a large request: the heap it freed goes back to the system

A request is charged what the server will pay for it: a /score prompt is rendered and tokenised with each
of its responses (the only way to get the ids every other loader gets), so its characters and messages
count once per response. Tokens are known only once texts are encoded; they are counted as they are.
"""

from __future__ import annotations

import asyncio
import ctypes
import time

ROLES = ("system", "user", "assistant", "tool")
LARGE_REQUEST = 1 << 20  # body bytes or characters to tokenise after which the freed heap is handed back


class ServeError(Exception):
    """A request that cannot be served: the HTTP status, a stable kind (for /metrics) and the message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class Stopped(Exception):
    """Raised in a worker thread whose request was given up (its client left or it timed out): nobody waits for it."""


def client_gone() -> ServeError:
    # 499 (nginx's "client closed request"): counted in /metrics, never sent, since nobody is there to read it
    return ServeError(499, "client gone", "the client closed the connection")


def text_size(value, where: str, cfg) -> tuple[int, int]:
    """(characters, messages) of one text: a string, or a list of messages whose roles are checked. Refused past the
    per-text limits; the characters counted are a string's, or the messages' contents."""
    if isinstance(value, str):
        contents, messages = [(where, value)], 0
    else:
        messages = len(value)
        if messages > cfg.max_messages:
            raise ServeError(
                413,
                "too many messages",
                f"{where} has {messages} messages; the limit is {cfg.max_messages} (--max-messages)",
            )
        for j, message in enumerate(value):
            if message.role not in ROLES:
                raise ServeError(
                    422, "bad role", f"{where}[{j}].role: {message.role[:40]!r} is not one of {', '.join(ROLES)}"
                )
        contents = [(f"{where}[{j}].content", message.content) for j, message in enumerate(value)]
    chars = sum(len(text) for _, text in contents)
    if chars > cfg.max_text_chars:
        raise ServeError(
            413, "too long", f"{where} has {chars} characters; the limit is {cfg.max_text_chars} (--max-text-chars)"
        )
    for place, text in contents:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ServeError(
                    422, "bad text", f"{place} holds a lone surrogate: it is not valid Unicode text"
                ) from None
    return chars, messages


def check_request(cfg, prompt, texts: list, where: str) -> int:
    """Refuse a request that passes a limit, before any work -> the characters it will have tokenised.

    `prompt`: a /score prompt, scored with each text (None for /get_reward's full texts); `where`: the texts' field.
    """
    if len(texts) > cfg.max_texts:
        raise ServeError(
            413, "too many texts", f"{len(texts)} texts in one request; the limit is {cfg.max_texts} (--max-texts)"
        )
    prompt_chars, prompt_messages = (0, 0) if prompt is None else text_size(prompt, "prompt", cfg)
    chars = messages = 0
    for i, text in enumerate(texts):
        text_chars, text_messages = text_size(text, f"{where}[{i}]", cfg)
        chars += prompt_chars + text_chars
        messages += prompt_messages + text_messages
    per_response = "" if prompt is None else " (the prompt counts once per response)"
    if chars > cfg.max_request_chars:
        raise ServeError(
            413,
            "request too large",
            f"the request has {chars} characters to tokenise{per_response}; "
            f"the limit is {cfg.max_request_chars} (--max-request-chars)",
        )
    if messages > cfg.max_request_messages:
        raise ServeError(
            413,
            "request too large",
            f"the request has {messages} messages to render{per_response}; "
            f"the limit is {cfg.max_request_messages} (--max-request-messages)",
        )
    return chars


def check_tokens(cfg, tokens: int, place: str) -> None:
    """Refuse a request once its texts, encoded so far up to `place`, hold more tokens than the model may read."""
    if tokens > cfg.max_request_tokens:
        raise ServeError(
            413,
            "request too large",
            f"the request has {tokens} tokens to score by {place} (each text cut to max_length); "
            f"the limit is {cfg.max_request_tokens} (--max-request-tokens)",
        )


class Work:
    """One request's work from its arrival: its deadline, whether to stop, and which parts of it still run.

    The handler answers by the deadline whatever happens; a worker thread or a model call may outlive it
    (one text is encoded, one batch scored, without a pause), which is what /health reports.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout_s
        self.stopped = False  # given up: the client left or the deadline passed; its threads stop at the next text
        self.answering = True  # the handler has not answered yet
        self.encoding = False  # a worker thread encodes its texts
        self.queued = False  # its texts wait in the batcher's queue or are in a model call

    @property
    def running(self) -> bool:
        return self.answering or self.encoding or self.queued

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def timeout(self) -> ServeError:
        return ServeError(
            503,
            "timeout",
            f"no result within {self.timeout_s:g} s of the request's arrival (--request-timeout-s): "
            "the server is overloaded",
        )

    def check(self) -> None:
        """In a worker thread, between texts: stop a request that was given up or that passed its deadline."""
        if self.stopped:
            raise Stopped()
        if time.monotonic() > self.deadline:
            raise self.timeout()


class InFlight:
    """The requests whose work still runs, oldest first (touched on the event loop only)."""

    def __init__(self):
        self.works: list[Work] = []

    def start(self, timeout_s: float) -> Work:
        self._prune()
        work = Work(timeout_s)
        self.works.append(work)
        return work

    def _prune(self) -> None:
        self.works = [work for work in self.works if work.running]

    def oldest_age(self) -> float:
        """Seconds since the oldest request still running arrived (0 when none runs)."""
        self._prune()
        return time.monotonic() - self.works[0].arrived if self.works else 0.0


async def _disconnected(request) -> None:
    """Returns once the client has gone (call after the body is read: the server then only reports the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a server that has nothing more to say sends empty bodies: do not spin


async def answer(request, work, coroutine):
    """The request's result, or, whichever comes first, its client leaving (499, never sent) or its deadline (503).
    Either of those stops its work: the worker thread at its next text, the batcher skips its job."""
    job = asyncio.ensure_future(coroutine)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({job, gone}, timeout=work.remaining(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not job.done():
            work.stopped = True
            job.cancel()
    if job in done:
        return job.result()
    raise client_gone() if gone in done else work.timeout()


class Measured:
    """Requests and latency by endpoint and status, as a pure ASGI middleware (starlette's BaseHTTPMiddleware runs
    each request in a task group of its own and passes a disconnect on as an exception); after a large body, the
    heap it took goes back to the system."""

    def __init__(self, app, metrics, endpoints: tuple[str, ...]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, received = time.perf_counter(), [500], [0]

        async def counting_receive():
            message = await receive()
            received[0] += len(message.get("body", b""))
            return message

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, sending)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        if received[0] > LARGE_REQUEST:
            await asyncio.to_thread(release_memory)


_malloc_trim = None


def release_memory() -> None:
    """Hand the heap a large request freed back to the system: glibc keeps freed memory in its arenas (one per
    worker thread) otherwise, and the server's resident size only grows. A no-op without glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # musl, macOS, Windows
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)
