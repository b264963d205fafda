"""`llm serve`'s engine in a process of its own (llm.serve_process): the same texts as the
in-process batcher, the queue's bound, cancellation, a dead engine, drain and stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from llm.checkpoint import ModelFolder, read_model_dir, save_model_dir
from llm.config import ModelConfig
from llm.errors import CheckpointError
from llm.generate import SamplingParams, TextDelta, complete
from llm.model import Transformer
from llm.serve import APIError, Job, build_app
from llm.serve_process import ProcessWorker
from llm.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer("abcdefghijklmnop ")
CONTEXT = 96
QUEUE = 8  # as many as the first test sends at once
PROMPTS = ["hello", "abc de", "p", "ponmlkjihgfedcba", "deaf bead", "a" * 40]


def model_of(context: int = CONTEXT) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=TOKENIZER.vocab_size,
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_ff=128,
        max_seq_len=context,
    )
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient, Transformer]]:
    """One app whose engine runs in a process of its own (started once: spawning one
    imports torch anew)."""
    model = model_of()
    app = build_app(
        model,
        TOKENIZER,
        model_name="flat",
        max_tokens_limit=CONTEXT,
        queue_size=QUEUE,
        max_batch=4,
        engine="process",
    )
    with TestClient(app) as client:
        yield client, model


def wait_until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def lone_text(model: Transformer, prompt: str, params: SamplingParams) -> str:
    served = replace(params, eos_id=TOKENIZER.eos_id)
    return complete(model, TOKENIZER, [TOKENIZER.encode(prompt)], served)[0].text


def streamed_text(client: TestClient, body: dict[str, Any]) -> str:
    pieces = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                pieces.append(json.loads(line.removeprefix("data: "))["choices"][0]["text"])
    return "".join(pieces)


def test_the_engine_runs_apart_and_gives_each_request_its_lone_text(served):
    client, model = served
    worker = client.app.state.worker
    assert isinstance(worker, ProcessWorker) and worker.process.pid != os.getpid()
    bodies = [{"prompt": text, "max_tokens": 20, "temperature": 0} for text in PROMPTS[:3]] + [
        {"prompt": text, "max_tokens": 20, "temperature": 1.0, "top_k": 5, "seed": i}
        for i, text in enumerate(PROMPTS[3:])
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        plain = list(pool.map(lambda b: client.post("/v1/completions", json=b), bodies))
        streamed = list(pool.map(lambda b: streamed_text(client, b), bodies))
    for body, response, stream in zip(bodies, plain, streamed, strict=True):
        assert response.status_code == 200, response.text
        params = SamplingParams(
            max_new_tokens=20, temperature=body["temperature"], top_k=body.get("top_k")
        )
        expected = lone_text(model, body["prompt"], replace(params, seed=body.get("seed")))
        assert response.json()["choices"][0]["text"] == expected
        assert stream == expected


@contextmanager
def paused(worker: ProcessWorker) -> Iterator[None]:
    """The engine's process stopped by the kernel (SIGSTOP) until the block ends."""
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)


def test_a_full_queue_is_a_503_at_once_while_the_engine_is_busy(served):
    client, _ = served
    worker = client.app.state.worker
    body = {"prompt": "hello", "max_tokens": 5, "temperature": 0}
    with ThreadPoolExecutor(QUEUE) as pool:
        with paused(worker):  # nothing leaves the queue: the bound is the parent's count
            waiting = [pool.submit(client.post, "/v1/completions", json=body) for _ in range(QUEUE)]
            wait_until(lambda: client.get("/health").json()["waiting"] == QUEUE)
            refused = client.post("/v1/completions", json=body)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
        assert [f.result(30).status_code for f in waiting] == [200] * QUEUE
    wait_until(lambda: client.get("/health").json()["waiting"] == 0)


async def events_of(job: Job, count: int | None = None) -> list[Any]:
    """The job's next `count` events (all, up to its end, when None)."""
    events: list[Any] = []
    while count is None or len(events) < count:
        event = await asyncio.wait_for(job.events.get(), timeout=30)
        events.append(event)
        if event is None or isinstance(event, APIError):
            break
    return events


def long_job(loop: asyncio.AbstractEventLoop) -> Job:
    return Job([TOKENIZER.encode("a")], SamplingParams(max_new_tokens=500), loop)


@contextmanager
def engine() -> Iterator[ProcessWorker]:
    """An engine's process over a model of a long context, stopped at the end."""
    worker = ProcessWorker(model_of(512), TOKENIZER, 2, threads=1)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


async def decoding_job(worker: ProcessWorker) -> tuple[Job, list[Any]]:
    """A long job submitted to `worker`, and its first event: it is decoding."""
    job = long_job(asyncio.get_running_loop())
    worker.submit(job)
    return job, await events_of(job, 1)


def test_a_cancelled_job_is_dropped_by_the_engine_not_finished():
    async def cancel_after_the_first_piece() -> list[Any]:
        with engine() as worker:
            job, first = await decoding_job(worker)
            with paused(worker):
                job.cancel()
                await asyncio.sleep(0.2)  # the cancellation is in the pipe before it goes on
            return first + await events_of(job)

    events = asyncio.run(cancel_after_the_first_piece())
    assert events[-1] is None
    assert all(isinstance(e, TextDelta) and e.finish_reason is None for e in events[:-1])


def test_a_dead_engine_ends_its_jobs_with_503_and_refuses_new_ones():
    async def kill_while_decoding() -> tuple[list[Any], APIError]:
        with engine() as worker:
            job, first = await decoding_job(worker)
            os.kill(worker.process.pid, signal.SIGKILL)
            rest = await events_of(job)
            assert not worker.alive  # /health answers 503 "engine_stopped"
            with pytest.raises(APIError) as refused:
                worker.submit(long_job(asyncio.get_running_loop()))
            return first + rest, refused.value

    events, refused = asyncio.run(kill_while_decoding())
    assert isinstance(events[-1], APIError) and events[-1].status == 503
    assert refused.status == 503 and refused.code == "not_running"


def test_drain_refuses_new_jobs_and_stop_ends_the_running_ones():
    async def drain_then_stop() -> tuple[APIError, Any, list[Any], bool]:
        with engine() as worker:
            job, _ = await decoding_job(worker)
            worker.drain(60)
            with pytest.raises(APIError) as refused:
                worker.submit(long_job(asyncio.get_running_loop()))
            # A drain (a signal handler) that came between a submit's check and its message:
            # the engine refuses the job itself.
            worker.deadline, late = None, long_job(asyncio.get_running_loop())
            worker.submit(late)
            [late_end] = await events_of(late)
            process = worker.process
            await asyncio.to_thread(worker.stop)
            return refused.value, late_end, await events_of(job), process.is_alive()

    refused, late_end, rest, alive = asyncio.run(drain_then_stop())
    assert refused.code == "shutting_down" and refused.headers == {"Retry-After": "1"}
    assert isinstance(late_end, APIError) and late_end.code == "shutting_down"
    assert isinstance(rest[-1], APIError) and rest[-1].code == "shutting_down"
    assert not alive


def test_health_says_when_the_engine_has_died():
    app = build_app(model_of(), TOKENIZER, model_name="flat", engine="process")
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        os.kill(app.state.worker.process.pid, signal.SIGKILL)
        wait_until(lambda: client.get("/health").status_code == 503)
        assert client.get("/health").json()["status"] == "engine_stopped"
        refused = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_running"


def test_a_model_that_cannot_be_loaded_stops_the_start_with_its_error(tmp_path):
    save_model_dir(tmp_path, model_of(), TOKENIZER)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    config, tokenizer = read_model_dir(tmp_path)
    assert tokenizer is not None
    worker = ProcessWorker(ModelFolder(tmp_path, config), tokenizer, 2, threads=1)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt"):
        worker.start()
    assert not worker.alive
