"""The server's decoding engine in a process of its own (`llm serve`'s default).

A decoding step is mostly Python: a few hundred small tensor operations, the sampling and
the text of every row. On the worker thread of the HTTP server's process it shares one
interpreter lock with the event loop that parses requests and streams every token, so the
two take turns on what is, for Python, one core. In a process of its own (as vLLM runs its
engine core) the engine's loop never waits for the event loop, and the event loop never
waits for a step.

`ProcessWorker` stands where `llm.serve.GenerationWorker` does for the app (`submit`,
`waiting`, `drain`, `draining`, `start`, `stop`). The child runs a `GenerationWorker` over
the same model (its tensors passed through shared memory, not copied). Messages to the
child (a job, a cancellation, drain, stop) go through one sender thread, so that `drain`,
called from a signal handler, never writes to the pipe itself; each step's events come
back as one message, which a reader thread hands to the jobs' event loops. The queue of
waiting jobs is counted here, so that a full queue is answered 503 at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing

from llm.batching import DEFAULT_MAX_BATCH, PREFILL_CHUNK
from llm.checkpoint import ModelFolder
from llm.errors import UserError
from llm.generate import SamplingParams
from llm.model import Transformer
from llm.serve import (
    APIError,
    GenerationWorker,
    Job,
    JobEvent,
    emit_all,
    not_running,
    queue_full,
    shutting_down,
)
from llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300  # the child imports torch and maps the model's tensors


@dataclass(eq=False)
class RemoteJob:
    """A job as the engine's process sees it: the parent's key for it, and its work."""

    key: int
    prompts: list[list[int]]
    params: SamplingParams
    cancelled: threading.Event = field(default_factory=threading.Event)


def engine_main(
    conn: Connection,
    source: Transformer | ModelFolder,
    tokenizer: Tokenizer,
    threads: int,
    max_batch: int,
    prefill_budget: int,
) -> None:
    """The engine's process: a GenerationWorker fed from `conn`, its events sent back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which drains
    torch.set_num_threads(threads)
    try:
        model = source.load() if isinstance(source, ModelFolder) else source
    except UserError as err:  # a missing or corrupt file: the parent reports it
        conn.send(("failed", err))
        return
    jobs: dict[int, RemoteJob] = {}
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError):  # the parent is gone: nobody listens
            conn.send(message)

    def sink(events: list[tuple[Any, JobEvent]]) -> None:
        for job, event in events:
            if event is None or isinstance(event, APIError):  # the job's last event
                jobs.pop(job.key, None)
        send(("events", [(job.key, event) for job, event in events]))

    worker = GenerationWorker(
        model,
        tokenizer,
        0,
        max_batch=max_batch,
        prefill_budget=prefill_budget,
        sink=sink,
        admitted=lambda job: send(("admitted", job.key)),
    )
    worker.start()
    send(("ready",))
    with contextlib.suppress(EOFError, OSError):  # the parent is gone: stop
        while (message := conn.recv())[0] != "stop":
            kind, *args = message
            if kind == "submit":
                job = RemoteJob(*args)
                jobs[job.key] = job
                try:
                    worker.submit(job)
                except APIError as err:  # draining already: a drain overtook this job
                    sink([(job, err)])
            elif kind == "cancel" and args[0] in jobs:
                jobs[args[0]].cancelled.set()
            elif kind == "drain":
                worker.drain(args[0])
    worker.stop()
    send(("stopped",))


class ProcessWorker:
    """A `GenerationWorker` in a process of its own, seen through the same methods."""

    def __init__(
        self,
        model: Transformer | ModelFolder,
        tokenizer: Tokenizer,
        queue_size: int,
        *,
        threads: int,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_budget: int = PREFILL_CHUNK,
    ) -> None:
        self.model, self.tokenizer, self.threads = model, tokenizer, threads
        self.max_batch, self.prefill_budget = max_batch, prefill_budget
        self.queue_size = queue_size
        self.lock = threading.Lock()
        self.jobs: dict[int, Job] = {}  # every job the engine has not ended
        self.queued: set[int] = set()  # those it has not taken from its queue yet
        self.keys = itertools.count()
        self.outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.deadline: float | None = None
        self.process: Any = None
        self.ended = False  # the engine's messages have ended: it stopped, or died
        self.threads_running: list[threading.Thread] = []

    def start(self) -> None:
        """Start the engine's process and wait until its model is loaded; a model that
        cannot be loaded raises its error here."""
        if self.process is not None:  # started already (`serve` starts it before uvicorn)
            return
        self.ended = False
        context = torch.multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe()
        args = (child_conn, self.model, self.tokenizer, self.threads)
        self.process = context.Process(
            target=engine_main,
            args=(*args, self.max_batch, self.prefill_budget),
            name="llm-engine",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        try:
            reply = conn.recv() if conn.poll(START_TIMEOUT_S) else ("timeout",)
        except EOFError:
            reply = ("ended",)
        if reply != ("ready",):
            self.process.kill()
            self.process.join()
            code, self.process = self.process.exitcode, None
            if reply[0] == "failed":
                raise reply[1]
            if reply[0] == "ended":
                raise RuntimeError(f"the engine's process ended while starting (exit code {code})")
            raise RuntimeError(f"the engine's process did not start in {START_TIMEOUT_S} s")
        self.threads_running = [
            threading.Thread(target=self.send_all, args=(conn,), name="llm-engine-send"),
            threading.Thread(target=self.receive_all, args=(conn,), name="llm-engine-receive"),
        ]
        for thread in self.threads_running:
            thread.start()

    def drain(self, grace_s: float) -> None:
        """As GenerationWorker.drain (and as safe in a signal handler: SimpleQueue.put is
        reentrant)."""
        self.deadline = time.monotonic() + grace_s
        self.outbox.put(("drain", grace_s))
        log.info("shutting down: finishing the requests in flight (up to %.0f s)", grace_s)

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    @property
    def alive(self) -> bool:
        return self.process is not None and not self.ended and self.process.is_alive()

    def submit(self, job: Job) -> None:
        with self.lock:
            if not self.alive:
                raise not_running()
            if self.draining:
                raise shutting_down()
            if len(self.queued) >= self.queue_size:
                raise queue_full(self.queue_size)
            key = next(self.keys)
            self.jobs[key] = job
            self.queued.add(key)
        job.on_cancel = lambda: self.outbox.put(("cancel", key))
        self.outbox.put(("submit", key, job.prompts, job.params))

    def waiting(self) -> int:
        return len(self.queued)

    def stop(self) -> None:
        with self.lock:
            process, self.process = self.process, None
        if process is None:
            return
        self.outbox.put(("stop",))
        for thread in self.threads_running:
            thread.join()
        process.join()

    def send_all(self, conn: Connection) -> None:
        while (message := self.outbox.get()) is not None:
            try:
                conn.send(message)
            except OSError:  # the engine is gone; the receiver ends its jobs
                return
            if message[0] == "stop":
                return

    def receive_all(self, conn: Connection) -> None:
        try:
            while (message := conn.recv())[0] != "stopped":
                if message[0] == "admitted":
                    with self.lock:
                        self.queued.discard(message[1])
                else:
                    emit_all(self.jobs_of(message[1]))
        except (EOFError, OSError):
            log.error("the engine's process ended unexpectedly")
        finally:
            # Ended before its jobs hear of it (the process may still be exiting, alive to
            # the kernel for a moment after its pipe closed).
            self.ended = True
            self.outbox.put(None)  # ends the sender
            with self.lock:
                left, self.jobs = list(self.jobs.values()), {}
                self.queued.clear()
            emit_all([(job, shutting_down()) for job in left])

    def jobs_of(self, events: list[tuple[int, JobEvent]]) -> list[tuple[Job, JobEvent]]:
        """The events with their jobs; a job ended by them is forgotten."""
        out = []
        with self.lock:
            for key, event in events:
                job = self.jobs.get(key)
                if job is None:
                    continue
                self.queued.discard(key)
                if event is None or isinstance(event, APIError):
                    del self.jobs[key]
                out.append((job, event))
        return out
