"""An OpenAI-compatible HTTP server for one model: `POST /v1/completions`,
`POST /v1/chat/completions`, `GET /v1/models` (and `/v1/models/{id}`) and `GET /health`.

One worker runs the model with continuous batching (`llm.batching`), in a process of its
own (`llm.serve_process`; `llm serve --engine thread` keeps it on a thread of this one):
every step it admits waiting requests into the running decode batch (up to `max_batch`
rows; each prompt of a request is a row), decodes one token for all of them in one forward
pass, and retires the finished ones at once. A request's text is the same as it would be
alone (greedy, or sampled with a seed). Requests that find the batch full wait in a bounded
queue; when that is full too the server answers 503 with Retry-After at once. The worker
hands each step's text pieces to the event loop as they are made, so a streamed response
never blocks the loop; a client that disconnects has its rows dropped within a step, and
a request it left waiting is skipped. On SIGTERM (or Ctrl-C) new requests get 503 while
those in flight finish, for up to `DRAIN_S` seconds; the rest are then ended with a 503.

`/v1/completions` takes OpenAI's fields `model` (optional; must name the served model),
`prompt` (a string, a list of strings, a list of token ids or a list of such lists),
`max_tokens` (default 16; null means the server's ceiling), `temperature` (0 to 2), `top_p`,
`stop` (up to 4 strings), `seed`, `stream` and `stream_options.include_usage`, plus the
extensions `top_k`, `repetition_penalty` and `truncate` (left-truncate a prompt that leaves
too little room for `max_tokens`, instead of refusing one over the context). Generation
also stops where the context is full (finish_reason "length"). The options this server
does not implement (`n`, `best_of`, `echo`, `logprobs`, `frequency_penalty`,
`presence_penalty`, `logit_bias`, `suffix`) are accepted only at the value that changes
nothing, so that clients which always send them work; any other value is a 400. `user` is
accepted and ignored. Any other field is a 400 naming it, so that a misspelt option is
never silently dropped. Values must have their JSON type (no "0.5" for 0.5).

`/v1/chat/completions` takes `messages` (an optional first `system` or `developer` message,
then `user` and `assistant` messages alternating, the last from the user; a `content` is a
string or a list of text parts, and a message's `name` is accepted and not used) instead
of `prompt`, and the same sampling fields (`max_completion_tokens` is the newer name of
`max_tokens`; a request may send one of them). A model tuned with `llm sft` ends every
endpoint's text at its end-of-reply marker, which is neither returned nor counted.
The conversation is written with the model's chat template (the one `llm sft` saved, or
the plain `User:`/`Assistant:` transcript) and the reply stops at the template's end of a
reply. The response is a `chat.completion` (or `chat.completion.chunk` events, the first
with the assistant's role) whose message holds the reply without its leading space.

Every error is an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`:
400 for a malformed or invalid request, 401 for a missing or wrong API key (when the server
has one; `/health` stays open so that probes need no key), 404 for an unknown route or
model, 405 for a wrong method, 415 for a POST body not sent as `Content-Type:
application/json` (as OpenAI's API requires), 503 when the queue is full.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

import torch
import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException

from llm.batching import DEFAULT_MAX_BATCH, PREFILL_CHUNK, Batcher, Row
from llm.chat import ChatTemplate, Turn, load_chat_template, read_messages
from llm.checkpoint import ModelFolder, read_model_dir
from llm.config import ModelConfig
from llm.device import resolve_device
from llm.errors import CheckpointError, ConfigError, UserError
from llm.generate import SamplingParams, TextDelta, check_prompt, truncate_prompt
from llm.model import Transformer
from llm.net import is_loopback, listening_socket
from llm.tokenizer import Tokenizer

if TYPE_CHECKING:
    from llm.serve_process import ProcessWorker

log = logging.getLogger(__name__)

# Where the model decodes: a thread of the server's process, or a process of its own.
Engine = Literal["thread", "process"]

API_KEY_ENV = "LLM_API_KEY"
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
DEFAULT_MAX_TOKENS_LIMIT = 512
DEFAULT_QUEUE_SIZE = 16
DEFAULT_MAX_PROMPTS = 16  # one request's prompts form one batch: this bounds its memory
MAX_STOP_STRINGS = 4
MAX_SEED = 2**64 - 1  # torch generators take unsigned 64-bit seeds
# After SIGTERM or Ctrl-C the requests in flight have DRAIN_S seconds to finish; then the
# worker ends them with a 503, just before uvicorn's own limit would cut their connections.
SHUTDOWN_GRACE_S = 30
DRAIN_S = SHUTDOWN_GRACE_S - 2

# OpenAI options this server does not implement, and the values at which they change nothing.
NEUTRAL_VALUES: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "best_of": (None, 1),
    "echo": (False,),
    "logprobs": (None, False),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "top_logprobs": (None, 0),
}
# Fields whose type is a union: pydantic reports one error per alternative, so say it once.
EXPECTED_TYPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": f"a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
    "messages": "a non-empty list of {role, content} messages",
}


class APIError(Exception):
    """A request the server answers with an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole, as the engine's process sends it (Exception would keep only `args`).
        return (restore_api_error, (self.status, self.message, self.param, self.code, self.headers))

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def restore_api_error(
    status: int,
    message: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None,
) -> APIError:
    return APIError(status, message, param=param, code=code, headers=headers)


NonEmptyStr = Annotated[str, Field(min_length=1)]
Prompt = str | list[str] | list[int] | list[list[int]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields both endpoints share; see the module docstring."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's range
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP_STRINGS)] | None = (
        None
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(SamplingRequest):
    """The body of `POST /v1/completions`."""

    prompt: Prompt
    truncate: bool = False
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    """A message as OpenAI clients send it. `developer` is the newer name of `system`;
    `content` may be a list of text parts (as LangChain and agent frameworks send it),
    joined by newlines; `name` is accepted and not used (a transcript has no names)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def join_text_parts(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        if not content:
            raise ValueError("must be a string or a non-empty list of text parts")
        return "\n".join(text_part(i, part) for i, part in enumerate(content))

    def transcript_role(self) -> str:
        return "system" if self.role == "developer" else self.role


def text_part(index: int, part: Any) -> str:
    """The text of a content part `{"type": "text", "text": ...}`; a ValueError naming
    the part for anything else (images and audio cannot be read by a text model)."""
    if not isinstance(part, dict):
        raise ValueError(f"part {index} must be an object {{type, text}}")
    if part.get("type") != "text":
        raise ValueError(
            f"part {index} has type {part.get('type')!r}; this server reads only text parts"
        )
    unknown = sorted(set(part) - {"type", "text"})
    if unknown:
        raise ValueError(f"part {index} has unknown fields {unknown}")
    if not isinstance(part.get("text"), str):
        raise ValueError(f"part {index} needs a string 'text'")
    return part["text"]


class ChatRequest(SamplingRequest):
    """The body of `POST /v1/chat/completions`."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None

    def conversation(self) -> tuple[str | None, list[Turn], str]:
        """(system text or None, the earlier turns, the message to reply to)."""
        try:
            system, turns, message = read_messages(
                [(m.transcript_role(), m.content) for m in self.messages], answered=False
            )
        except ValueError as err:
            raise APIError(400, f"messages: {err}", param="messages") from None
        assert message is not None  # not answered: the last message is the user's
        return system, turns, message


R = TypeVar("R", bound=SamplingRequest)


def parse_request(kind: type[R], body: bytes) -> R:
    try:
        request = kind.model_validate_json(body)
    except ValidationError as err:
        raise invalid_request(err) from None
    for name, neutral in NEUTRAL_VALUES.items():
        if name not in kind.model_fields:
            continue
        value = getattr(request, name)
        if value not in neutral:
            raise APIError(
                400,
                f"{name}={value!r} is not supported by this server",
                param=name,
                code="unsupported_parameter",
            )
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream")
    return request


def invalid_request(err: ValidationError) -> APIError:
    """The first problem pydantic found, as one readable message."""
    problem = err.errors()[0]
    loc = problem["loc"]
    if problem["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {problem['ctx']['error']}")
    if not loc:
        return APIError(400, "the request body must be a JSON object")
    name, where = str(loc[0]), field_path(loc)
    if problem["type"] == "extra_forbidden":
        return APIError(400, f"unknown field {where!r}", param=where)
    if name in EXPECTED_TYPES and not in_element(loc) and problem["type"] != "missing":
        return APIError(400, f"{name} must be {EXPECTED_TYPES[name]}", param=name)
    return APIError(400, f"{where}: {problem['msg'].removeprefix('Value error, ')}", param=where)


def in_element(loc: tuple[int | str, ...]) -> bool:
    """Whether the problem is inside one element of a list field (`messages[0].role`):
    then its path says more than the field's expected type. A union's alternatives come
    as names (`prompt.list[int]`), not indices."""
    return len(loc) > 1 and isinstance(loc[1], int)


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the field it names: `messages[0].content`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


# What the worker hands the event loop: a piece of text, an error, or None when it is done.
JobEvent = TextDelta | APIError | None
# Where the worker hands a step's events: to the jobs' event loops (`emit_all`), or to the
# pipe of the engine's process (`llm.serve_process`).
Sink = Callable[[list[tuple[Any, JobEvent]]], None]


@dataclass(eq=False)
class Job:
    """One request's generation, passed from the event loop to the worker thread."""

    prompts: list[list[int]]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[JobEvent] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    watcher: asyncio.Task[None] | None = None
    on_cancel: Callable[[], None] | None = None  # tells a worker in another process

    def mark_cancelled(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel()

    async def deltas(self) -> AsyncIterator[TextDelta]:
        """The text pieces as they come; leaving early cancels the generation."""
        try:
            while (event := await self.events.get()) is not None:
                if isinstance(event, APIError):
                    raise event
                yield event
        finally:
            self.cancel()

    def cancel_on_disconnect(self, request: Request) -> None:
        # A task of its own, so that it also covers a streamed response that never starts.
        self.watcher = asyncio.create_task(self.watch(request))

    async def watch(self, request: Request) -> None:
        # The body is read already, so the next message is the disconnect (uvicorn also
        # sends one once the response is complete, which ends this task).
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.mark_cancelled()

    def cancel(self) -> None:
        self.mark_cancelled()
        if self.watcher is not None:
            self.watcher.cancel()


class GenerationWorker:
    """Runs every job on one continuous batcher (`llm.batching`), on a thread of its own:
    a job's prompts join the running decode batch as soon as there is room (`max_batch`
    rows decode together) and leave it the step they finish. `queue_size` jobs may wait
    for room (0: any number); `start`, `drain` and `stop` follow the server's life. A job
    is anything with `prompts`, `params` and a `cancelled` event; each step's events go to
    `sink`, and `admitted` hears of each job that leaves the queue."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        queue_size: int,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_budget: int = PREFILL_CHUNK,
        sink: Sink | None = None,
        admitted: Callable[[Any], None] | None = None,
    ) -> None:
        self.sink = sink or emit_all
        self.admitted = admitted
        self.queue_size = queue_size
        self.batcher = Batcher(model, tokenizer, max_batch=max_batch, prefill_budget=prefill_budget)
        self.jobs: queue.Queue[Any] = queue.Queue(queue_size)
        self.lock = threading.Lock()  # a submit never races a stop or a drain
        self.thread: threading.Thread | None = None
        self.deadline: float | None = None  # set by `drain`: when to give up on the jobs
        self.running: dict[Any, set[Row]] = {}  # each admitted job's unfinished rows

    def start(self) -> None:
        if self.thread is not None:  # started already (`serve` starts it before uvicorn)
            return
        self.thread = threading.Thread(target=self.serve_jobs, name="llm-generation", daemon=True)
        self.thread.start()

    def drain(self, grace_s: float) -> None:
        """Refuse new jobs from now on; the ones accepted go on for up to `grace_s` seconds,
        after which they are ended with a 503. (Called from a signal handler, which may
        have interrupted a `submit` holding the lock: so it takes no lock.)"""
        self.deadline = time.monotonic() + grace_s
        log.info("shutting down: finishing the requests in flight (up to %.0f s)", grace_s)

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None
            if thread is None:
                return
            abandoned = self.take_waiting()
            self.jobs.put_nowait(None)  # there is room: the queue was just emptied
        self.sink([(job, shutting_down()) for job in abandoned])
        thread.join()

    def take_waiting(self) -> list[Any]:
        jobs = []
        while not self.jobs.empty():
            job = self.jobs.get_nowait()
            if job is not None:
                jobs.append(job)
        return jobs

    def submit(self, job: Any) -> None:
        with self.lock:
            if self.thread is None:
                raise not_running()
            if self.draining:
                raise shutting_down()
            try:
                self.jobs.put_nowait(job)
            except queue.Full:
                raise queue_full(self.queue_size) from None

    def waiting(self) -> int:
        return self.jobs.qsize()

    def serve_jobs(self) -> None:
        while self.admit():
            self.drop_cancelled()
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.end_all(shutting_down())
            elif self.running:
                self.step()
        self.end_all(shutting_down())

    def admit(self) -> bool:
        """Move waiting jobs into the batcher while it has room for their rows (waiting
        for one when nothing runs); False once `stop` asks the worker to end."""
        batcher = self.batcher
        while batcher.running + len(batcher.waiting) < batcher.max_batch:
            try:
                job = self.jobs.get(block=not self.running)
            except queue.Empty:
                return True
            if job is None:
                return False
            if self.admitted is not None:
                self.admitted(job)
            if job.cancelled.is_set():
                self.sink([(job, None)])  # a plain (not streamed) reply may still wait for its end
                continue
            self.running[job] = {
                batcher.add(prompt, job.params, index=i, owner=job)
                for i, prompt in enumerate(job.prompts)
            }
        return True

    def drop_cancelled(self) -> None:
        """Free the rows of the jobs whose clients went away."""
        cancelled = [job for job in self.running if job.cancelled.is_set()]
        for job in cancelled:
            for row in self.running.pop(job):
                self.batcher.cancel(row)
        if cancelled:
            self.sink([(job, None) for job in cancelled])

    def end_all(self, error: APIError) -> None:
        """End every job, admitted or waiting, with `error`."""
        self.batcher.clear()
        self.sink([(job, error) for job in [*self.running, *self.take_waiting()]])
        self.running.clear()

    def step(self) -> None:
        try:
            events = self.batcher.step()
        except Exception as err:
            log.exception("generation failed")
            failure = APIError(500, f"generation failed: {err}", code="generation_failed")
            failed = {row.owner for row in self.batcher.clear()}
            for job in failed:
                self.running.pop(job, None)
            self.sink([(job, failure) for job in failed])
            return
        out: list[tuple[Any, JobEvent]] = []
        for row, delta in events:
            job = row.owner
            out.append((job, delta))
            if delta.finish_reason is not None:
                rows = self.running[job]
                rows.discard(row)
                if not rows:
                    del self.running[job]
                    out.append((job, None))
        if out:
            self.sink(out)


def not_running() -> APIError:
    return APIError(503, "the server is not running", code="not_running")


def queue_full(queue_size: int) -> APIError:
    return APIError(
        503,
        f"the server is busy ({queue_size} requests are waiting); retry later",
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def shutting_down() -> APIError:
    return APIError(
        503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "1"}
    )


def emit_all(events: list[tuple[Job, JobEvent]]) -> None:
    """Hand a step's events to their jobs' event loops, one wake-up per loop (called on the
    worker thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, JobEvent]]] = {}
    for job, event in events:
        by_loop.setdefault(job.loop, []).append((job, event))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(deliver, batch)
        except RuntimeError:  # the loop is closed: nobody waits for these jobs any more
            for job, _ in batch:
                job.cancelled.set()


def deliver(events: list[tuple[Job, JobEvent]]) -> None:
    for job, event in events:
        job.events.put_nowait(event)


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}


@dataclass
class Reply:
    """What every response to one request shares. A chat reply's text loses the space
    the template leaves for the model to write after the assistant's prefix."""

    job: Job
    head: dict[str, Any]  # id, object, created, model
    prompt_tokens: int
    chat: bool = False
    started: set[int] = field(default_factory=set)  # rows whose first text has been sent

    def text(self, delta: TextDelta) -> str:
        if not self.chat or delta.index in self.started:
            return delta.text
        text = delta.text.lstrip()
        if text:
            self.started.add(delta.index)
        return text

    async def body(self) -> dict[str, Any]:
        n = len(self.job.prompts)
        texts: list[list[str]] = [[] for _ in range(n)]
        finish_reasons: list[str | None] = [None] * n
        completion_tokens = 0
        async for delta in self.job.deltas():
            texts[delta.index].append(self.text(delta))
            finish_reasons[delta.index] = delta.finish_reason
            completion_tokens += delta.completion_tokens  # nonzero only on a row's last delta
        shape = chat_choice if self.chat else choice
        choices = [shape(i, "".join(texts[i]), finish_reasons[i]) for i in range(n)]
        return {
            **self.head,
            "choices": choices,
            "usage": usage(self.prompt_tokens, completion_tokens),
        }

    def chunk_choice(self, delta: TextDelta) -> dict[str, Any]:
        text = self.text(delta)
        if not self.chat:
            return choice(delta.index, text, delta.finish_reason)
        return {
            "index": delta.index,
            "delta": {"content": text} if text or delta.finish_reason is None else {},
            "finish_reason": delta.finish_reason,
            "logprobs": None,
        }

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: one chunk per text piece, then `[DONE]`."""
        # With include_usage, OpenAI sends usage null on every chunk, then a last one with it.
        no_usage = {"usage": None} if include_usage else {}
        completion_tokens = 0
        if self.chat:  # OpenAI's first chunk says whose message it is
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            yield sse({**self.head, "choices": [{**role, "finish_reason": None}], **no_usage})
        try:
            async for delta in self.job.deltas():
                completion_tokens += delta.completion_tokens
                yield sse({**self.head, "choices": [self.chunk_choice(delta)], **no_usage})
        except APIError as err:  # the status line is sent already: report it in the stream
            yield sse(err.body())
            return
        if include_usage:
            yield sse(
                {**self.head, "choices": [], "usage": usage(self.prompt_tokens, completion_tokens)}
            )
        yield "data: [DONE]\n\n"


class CompletionServer:
    """The endpoints, and what they share: the model, its limits and the worker."""

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Tokenizer,
        *,
        model_name: str,
        max_tokens_limit: int,
        max_prompts: int,
        worker: GenerationWorker | ProcessWorker,
        template: ChatTemplate,
    ) -> None:
        self.config, self.tokenizer, self.model_name = config, tokenizer, model_name
        self.template = template
        self.max_tokens_limit, self.max_prompts, self.worker = max_tokens_limit, max_prompts, worker
        self.created = int(time.time())

    async def health(self) -> Response:
        waiting = self.worker.waiting()
        if self.worker.draining:  # so that a load balancer sends no more requests here
            return JSONResponse({"status": "shutting_down", "waiting": waiting}, status_code=503)
        if not self.worker.alive:  # the engine's process died: a supervisor should restart us
            return JSONResponse({"status": "engine_stopped", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ok", "waiting": waiting})

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        self.check_model(model_id)
        return self.model_card()

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "evo",
        }

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(
                404,
                f"model {name!r} is not served here (this server serves {self.model_name!r})",
                param="model",
                code="model_not_found",
            )

    async def create_completion(self, request: Request) -> Response:
        body = parse_request(CompletionRequest, await request.body())
        self.check_model(body.model)
        params = self.sampling_params(body)
        if self.template.end:  # a tuned model's end of a reply ends a completion too
            params = replace(params, stop=tuple(dict.fromkeys((*params.stop, self.template.end))))
        prompts = self.prompt_ids(body, params.max_new_tokens)
        return await self.respond(request, body, params, prompts, "text_completion")

    async def create_chat_completion(self, request: Request) -> Response:
        body = parse_request(ChatRequest, await request.body())
        self.check_model(body.model)
        if {"max_tokens", "max_completion_tokens"} <= body.model_fields_set:
            raise APIError(
                400,
                "max_tokens and max_completion_tokens are both given; send one "
                "(max_completion_tokens is the newer name)",
                param="max_completion_tokens",
            )
        if body.max_completion_tokens is not None:
            body = body.model_copy(update={"max_tokens": body.max_completion_tokens})
        params = self.sampling_params(body)
        stop = tuple(dict.fromkeys(params.stop + self.template.stop()))
        params = replace(params, stop=stop)
        system, turns, message = body.conversation()
        prompt = self.tokenizer.encode(self.template.render(turns, message, system))
        try:
            check_prompt(self.config, prompt, "the conversation")
        except UserError as err:
            raise APIError(
                400, str(err), param="messages", code="context_length_exceeded"
            ) from None
        return await self.respond(request, body, params, [prompt], "chat.completion")

    async def respond(
        self,
        request: Request,
        body: SamplingRequest,
        params: SamplingParams,
        prompts: list[list[int]],
        kind: str,
    ) -> Response:
        job = Job(prompts, params, asyncio.get_running_loop())
        self.worker.submit(job)
        job.cancel_on_disconnect(request)
        chat = kind == "chat.completion"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": f"{kind}.chunk" if chat and body.stream else kind,
            "created": int(time.time()),
            "model": self.model_name,
        }
        reply = Reply(job, head, sum(len(prompt) for prompt in prompts), chat=chat)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                reply.events(include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return JSONResponse(await reply.body())

    def sampling_params(self, body: SamplingRequest) -> SamplingParams:
        max_tokens = self.max_tokens_limit if body.max_tokens is None else body.max_tokens
        if max_tokens > self.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, over this server's limit of {self.max_tokens_limit}",
                param="max_tokens",
            )
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            repetition_penalty=body.repetition_penalty,
            eos_id=self.tokenizer.eos_id,
            stop=body.stop_strings(),
            seed=body.seed,
        )

    def prompt_ids(self, body: CompletionRequest, max_new_tokens: int) -> list[list[int]]:
        """The request's prompts as token ids, truncated if asked, each checked."""
        prompts = self.encode(body.prompt)
        if len(prompts) > self.max_prompts:
            raise APIError(
                400,
                f"{len(prompts)} prompts in one request; this server takes at most "
                f"{self.max_prompts}",
                param="prompt",
            )
        context = self.config.max_seq_len
        if body.truncate:
            # With max_tokens null (the server's ceiling) a small context would keep only
            # the prompt's last token; then keep half of the context for the prompt.
            room = (
                max_new_tokens if body.max_tokens is not None else min(max_new_tokens, context // 2)
            )
            prompts = [truncate_prompt(prompt, context, room) for prompt in prompts]
        for i, prompt in enumerate(prompts):
            try:
                check_prompt(
                    self.config, prompt, "the prompt" if len(prompts) == 1 else f"prompt {i}"
                )
            except UserError as err:
                if len(prompt) <= context:
                    raise APIError(400, str(err), param="prompt") from None
                raise APIError(
                    400,
                    f'{err}; send "truncate": true to have it cut',
                    param="prompt",
                    code="context_length_exceeded",
                ) from None
        return prompts

    def encode(self, prompt: Prompt) -> list[list[int]]:
        """One list of token ids per prompt."""
        if isinstance(prompt, str):
            return [self.tokenizer.encode(prompt)]
        if not prompt:
            raise APIError(400, "prompt is an empty list", param="prompt")
        if isinstance(prompt[0], int):
            return [cast(list[int], prompt)]
        items = cast(list[str] | list[list[int]], prompt)
        return [self.tokenizer.encode(item) if isinstance(item, str) else item for item in items]


def bearer_auth(api_key: str) -> Callable[[str | None], None]:
    """A dependency refusing requests without `Authorization: Bearer <api_key>`."""
    expected = api_key.encode("utf-8")

    def require_api_key(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        # Starlette decodes headers as latin-1: that gives back the bytes the client sent.
        given = token.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            raise APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key


def require_json(content_type: Annotated[str | None, Header()] = None) -> None:
    """A dependency refusing a body that is not declared JSON: a client that sends JSON
    as text/plain (or as a form) has a bug that parsing it anyway would hide."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(
            415,
            "the request body must be sent as Content-Type: application/json "
            f"(got {content_type or 'none'})",
            code="unsupported_media_type",
        )


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, err: Exception) -> Response:
        assert isinstance(err, APIError)
        return err.response()

    async def user_error(_request: Request, err: Exception) -> Response:
        return APIError(400, str(err)).response()

    async def http_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        message = f"{err.detail}: {request.method} {request.url.path}"
        return APIError(err.status_code, message, headers=err.headers).response()

    async def internal_error(_request: Request, _err: Exception) -> Response:
        return APIError(500, "internal server error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


def build_app(
    model: Transformer | ModelFolder,
    tokenizer: Tokenizer,
    *,
    model_name: str,
    api_key: str | None = None,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
    max_batch: int = DEFAULT_MAX_BATCH,
    prefill_budget: int = PREFILL_CHUNK,
    template: ChatTemplate | None = None,
    engine: Engine = "thread",
    threads: int = 1,
) -> FastAPI:
    """The server's app. Its worker runs while the app's lifespan does (uvicorn, or a
    `TestClient` used as a context manager); `app.state.worker` is the worker: on a thread
    of this process, or (`engine` "process") in a process of its own that computes on
    `threads` threads (`llm.serve_process`). A `ModelFolder` is loaded by the worker's
    process (a `Transformer` is passed to it through shared memory)."""
    problems = [
        f"{name} must be at least 1 (got {value})"
        for name, value in [
            ("max_tokens_limit", max_tokens_limit),
            ("queue_size", queue_size),
            ("max_prompts", max_prompts),
            ("max_batch", max_batch),
            ("prefill_budget", prefill_budget),
        ]
        if value < 1
    ]
    if api_key == "":
        problems.append("the API key must not be empty")
    if problems:
        raise ConfigError("serve: " + "; ".join(problems))
    worker = make_worker(engine, model, tokenizer, queue_size, threads, max_batch, prefill_budget)
    server = CompletionServer(
        model.config,
        tokenizer,
        model_name=model_name,
        max_tokens_limit=max_tokens_limit,
        max_prompts=max_prompts,
        worker=worker,
        template=template or ChatTemplate(),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    # No /docs or /openapi.json: they would be open routes beside the key-protected API.
    app = FastAPI(
        title=f"llm serve: {model_name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.worker = worker
    install_error_handlers(app)
    auth = [Depends(bearer_auth(api_key))] if api_key else []
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/v1/models", server.list_models, methods=["GET"], dependencies=auth)
    app.add_api_route("/v1/models/{model_id}", server.get_model, methods=["GET"], dependencies=auth)
    for path, endpoint in [
        ("/v1/completions", server.create_completion),
        ("/v1/chat/completions", server.create_chat_completion),
    ]:
        app.add_api_route(
            path, endpoint, methods=["POST"], dependencies=[*auth, Depends(require_json)]
        )
    return app


def make_worker(
    engine: Engine,
    model: Transformer | ModelFolder,
    tokenizer: Tokenizer,
    queue_size: int,
    threads: int,
    max_batch: int,
    prefill_budget: int,
) -> GenerationWorker | ProcessWorker:
    """The app's worker: in a process of its own, or on a thread of this one."""
    if engine == "process":
        from llm.serve_process import ProcessWorker  # it builds on this module

        return ProcessWorker(
            model,
            tokenizer,
            queue_size,
            threads=threads,
            max_batch=max_batch,
            prefill_budget=prefill_budget,
        )
    loaded = model.load() if isinstance(model, ModelFolder) else model
    return GenerationWorker(
        loaded, tokenizer, queue_size, max_batch=max_batch, prefill_budget=prefill_budget
    )


def serve(
    model_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    device: str = "auto",
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    model_name: str | None = None,
    threads: int | None = None,
    engine: Engine = "process",
) -> None:
    """Serve the model in `model_dir` until interrupted (SIGTERM or Ctrl-C: the requests in
    flight finish first, new ones get 503). Without `api_key`, the value of the environment
    variable LLM_API_KEY (when set and not empty) is the key; the model is named after its
    folder unless `model_name` says otherwise. `threads`: see `serving_threads`; the
    engine decodes in a process of its own unless `engine` is "thread"."""
    api_key = resolve_api_key(api_key)
    compute_threads = serving_threads(threads)
    # With the engine in its own process, this one only parses, encodes and streams.
    torch.set_num_threads(compute_threads if engine == "thread" else 1)
    if api_key is None and not is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it may use it", host)
    # Bound before the model loads, so that a busy port fails at once.
    with listening_socket(host, port) as sock:
        config, tokenizer = read_model_dir(model_dir)
        if tokenizer is None:
            raise CheckpointError(f"{model_dir}: no tokenizer/ (needed to read prompts)")
        folder = ModelFolder(Path(model_dir), config, resolve_device(device, "--device"))
        app = build_app(
            folder,
            tokenizer,
            model_name=model_name or Path(model_dir).resolve().name,
            api_key=api_key,
            max_tokens_limit=max_tokens_limit,
            queue_size=queue_size,
            max_batch=max_batch,
            template=load_chat_template(Path(model_dir)),
            engine=engine,
            threads=compute_threads,
        )
        app.state.worker.start()  # the weights load now: a bad file stops here, not in uvicorn
        server = uvicorn.Config(
            app, host=host, port=port, timeout_graceful_shutdown=SHUTDOWN_GRACE_S
        )
        DrainingServer(server, app.state.worker).run(sockets=[sock])


def serving_threads(threads: int | None) -> int:
    """The threads torch computes with while serving: `threads`, else OMP_NUM_THREADS where
    set, else every core this process may use but one. The HTTP server's event loop needs
    a core of its own to stream tokens while the model computes, as vLLM's CPU backend
    advises; on 2 cores the tiny model served 16 clients faster on one thread than on two
    (bench/serve_load.py --server-threads)."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads {threads}: must be at least 1")
        return threads
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return max(1, len(os.sched_getaffinity(0)) - 1)


class DrainingServer(uvicorn.Server):
    """uvicorn, whose stop signal (SIGTERM, Ctrl-C) first tells the worker to drain."""

    def __init__(self, config: uvicorn.Config, worker: GenerationWorker | ProcessWorker) -> None:
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.worker.draining:
            self.worker.drain(DRAIN_S)
        super().handle_exit(sig, frame)


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else the one in the environment; None (no key) when both are empty."""
    return api_key or os.environ.get(API_KEY_ENV) or None
