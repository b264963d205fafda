"""Continuous batching: the batcher and its slot cache, and `llm serve` under concurrency."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from torch import Tensor

from llm.batching import Batcher, Row
from llm.checkpoint import save_model_dir
from llm.config import ModelConfig
from llm.errors import ConfigError, UserError
from llm.generate import SamplingParams, complete
from llm.model import SlotCache, Transformer
from llm.serve import DRAIN_S, DrainingServer, build_app, listening_socket, serve, serving_threads
from llm.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer("abcdefghijklmnop ")
CONTEXT = 96
GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)
SERVED = replace(GREEDY, eos_id=TOKENIZER.eos_id)  # what the server makes of a greedy request
PROMPTS = [
    "hello",
    "abc de",
    "p",
    "ponmlkjihgfedcba " * 2,
    "deaf bead",
    "a" * 40,
    "the kid",
]
# Dense variants: every one must decode to the bit the same alone and in a batch. Head
# widths 16 and 8 (learned, 8 heads) read their keys in blocks of 32 and 64.
DENSE = {
    "rope": {},
    "alibi-gqa": {"pos_encoding": "alibi", "n_kv_heads": 2},
    "learned-8-heads": {"pos_encoding": "learned", "n_heads": 8},
    "latent": {"attention": "mla", "kv_latent_dim": 16},
    "window": {"attn_window": 12},
    "latent-window-sinusoidal": {
        "attention": "mla",
        "pos_encoding": "sinusoidal",
        "attn_window": 20,
    },
}


def flat_model(**overrides: Any) -> Transformer:
    """An untrained model with the default small init: its logits are near ties, so the
    least rounding difference between two runs changes the greedy tokens."""
    torch.manual_seed(0)
    base = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": CONTEXT}
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, **{**base, **overrides})
    return Transformer(config).eval()


def ids(text: str) -> list[int]:
    return TOKENIZER.encode(text)


class Recorder:
    """Runs a batcher to the end, keeping each row's logits of every decoding step and the
    most rows that decoded together."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.logits: dict[int, list[Tensor]] = {}
        self.widest = 0
        self.prefilled: list[int] = []  # prompt tokens fed per step

    def run(self) -> None:
        def record(_module: torch.nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if isinstance(args[1], SlotCache):
                rows = self.batcher.decoding
                self.widest = max(self.widest, len(rows))
                for i, row in enumerate(rows):
                    self.logits.setdefault(row.index, []).append(out[i, -1].clone())
            else:
                self.prefilled[-1] += args[0].shape[1]

        hook = self.batcher.model.register_forward_hook(record)
        try:
            while self.batcher.rows():
                self.prefilled.append(0)
                self.batcher.step()
        finally:
            hook.remove()


def decode(
    model: Transformer, prompts: list[list[int]], params: SamplingParams, **options: Any
) -> tuple[Recorder, list[Row]]:
    batcher = Batcher(model, TOKENIZER, **options)
    rows = [batcher.add(prompt, params, index=i) for i, prompt in enumerate(prompts)]
    recorder = Recorder(batcher)
    recorder.run()
    return recorder, rows


@pytest.mark.parametrize("overrides", [*DENSE.values(), {"mlp": "moe", "n_experts": 4}])
def test_batched_decoding_equals_the_full_forward(overrides):
    """Each row's logits at every step are the model's on its whole sequence so far, with
    prompts fed in several pieces and rows of different lengths side by side."""
    model = flat_model(**overrides)
    prompts = [ids(text) for text in PROMPTS]
    recorder, rows = decode(model, prompts, GREEDY, max_batch=4, prefill_chunk=8)
    assert recorder.widest == 4  # the batch was full, and rows came and went
    with torch.inference_mode():
        for row in rows:
            assert len(row.text.ids) == GREEDY.max_new_tokens
            full = model(torch.tensor([row.prompt + row.text.ids]))[0]
            # Decoding step k feeds new token k, at position len(prompt) + k.
            for step, logits in enumerate(recorder.logits[row.index]):
                expected = full[len(row.prompt) + step]
                torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", DENSE.values(), ids=DENSE.keys())
def test_a_row_decodes_to_the_bit_the_same_alone_and_in_any_batch(overrides):
    model = flat_model(**overrides)
    prompts = [ids(text) for text in PROMPTS]
    together, _ = decode(model, prompts, GREEDY, max_batch=5, prefill_budget=20)
    assert together.widest == 5
    for i, prompt in enumerate(prompts):
        alone, _ = decode(model, [prompt], GREEDY, max_batch=1)
        assert alone.widest == 1
        assert len(alone.logits[0]) == len(together.logits[i])
        for step, (lone, batched) in enumerate(
            zip(alone.logits[0], together.logits[i], strict=True)
        ):
            assert torch.equal(lone, batched), f"prompt {i} differs at step {step}"


def texts(rows: list[Row]) -> list[str]:
    return [TOKENIZER.decode(row.text.ids) for row in rows]


def test_a_seeded_row_samples_the_same_text_alone_and_in_a_batch():
    model = flat_model()
    prompts = [ids(text) for text in PROMPTS]
    seeded = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    _, together = decode(model, prompts, seeded, max_batch=6)
    # Prompt i of a request draws from a generator of its own, seeded by (seed, i).
    for i, prompt in enumerate(prompts):
        alone = Batcher(model, TOKENIZER, max_batch=1)
        row = alone.add(prompt, seeded, index=i)
        while alone.rows():
            alone.step()
        assert texts([row]) == texts([together[i]])
    _, again = decode(model, prompts, seeded, max_batch=2)
    assert texts(again) == texts(together)
    other = replace(seeded, seed=12)
    assert texts(decode(model, prompts, other, max_batch=6)[1]) != texts(together)


def test_prefill_keeps_to_its_budget_and_never_stalls_the_decoding_rows():
    model = flat_model()
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompts = [[1] * 6, [2] * 4, [3] * 9, [4] * 30]
    recorder, rows = decode(model, prompts, params, max_batch=4, prefill_budget=10, prefill_chunk=6)
    # Pieces of at most 6 tokens go in first come first served until 10 are in; the first
    # piece of a step goes in whatever the budget left.
    assert recorder.prefilled[:7] == [10, 9, 6, 6, 6, 6, 6]
    assert all(tokens <= 10 for tokens in recorder.prefilled)
    # The first row decodes at every step from its second one on, prefill or not.
    assert len(recorder.logits[0]) == params.max_new_tokens - 1
    assert [len(row.text.ids) for row in rows] == [6, 6, 6, 6]


def test_a_windowed_model_keeps_a_window_sized_slot():
    model = flat_model(attn_window=12)
    cache = Batcher(model, TOKENIZER, max_batch=3).cache
    # Head width 16: keys are read in blocks of 32, so a slot holds 32 positions, not 96.
    assert [tuple(keys.shape) for keys in cache.keys[:1]] == [(4, 4, 32, 16)]


def test_a_cancelled_row_frees_its_slot_at_once():
    model = flat_model()
    batcher = Batcher(model, TOKENIZER, max_batch=2)
    long = SamplingParams(max_new_tokens=50, temperature=0.0)
    first, second = (batcher.add(ids(text), long, index=i) for i, text in enumerate(PROMPTS[:2]))
    third = batcher.add(ids(PROMPTS[2]), long, index=2)
    batcher.step()
    assert batcher.decoding == [first, second] and list(batcher.waiting) == [third]
    batcher.cancel(first)
    assert batcher.decoding == [second] and second.slot == 0  # moved into the freed slot
    batcher.step()
    assert batcher.decoding == [second, third]


def test_a_prompt_that_fills_the_context_finishes_at_once():
    batcher = Batcher(flat_model(), TOKENIZER)
    batcher.add([1] * CONTEXT, GREEDY)
    [(_, delta)] = batcher.step()
    assert (delta.text, delta.finish_reason, delta.completion_tokens) == ("", "length", 0)
    assert not batcher.rows()


# ------------------------------------------------------------------ through the server


def app_for(model: Transformer, **options: Any) -> FastAPI:
    return build_app(model, TOKENIZER, model_name="flat", max_tokens_limit=CONTEXT, **options)


def post(client: TestClient | httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/completions", json=body)


class Gate:
    """A forward pre-hook that holds the first forward pass until `open`, and may slow
    every pass; it counts the passes and the widest decoding batch."""

    def __init__(self, model: Transformer, worker: Any, delay: float = 0.0) -> None:
        self.worker, self.delay = worker, delay
        self.entered, self.released = threading.Event(), threading.Event()
        self.passes = 0
        self.widest = 0
        self.hook = model.register_forward_pre_hook(self)

    def __call__(self, _module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        self.passes += 1
        self.widest = max(self.widest, len(self.worker.batcher.decoding))
        self.entered.set()
        self.released.wait(10)
        time.sleep(self.delay)

    def open(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.hook.remove()


@contextlib.contextmanager
def gated(model: Transformer, app: FastAPI, delay: float = 0.0) -> Iterator[Gate]:
    gate = Gate(model, app.state.worker, delay)
    try:
        yield gate
    finally:
        gate.close()


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def run_together(client: TestClient, gate: Gate, bodies: list[dict[str, Any]]) -> list[Any]:
    """Post `bodies` at once: the first holds the worker until the others wait, so that
    they all join one batch; their responses, in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        first = pool.submit(post, client, bodies[0])
        assert gate.entered.wait(10)
        rest = [pool.submit(post, client, body) for body in bodies[1:]]
        wait_until(lambda: client.get("/health").json()["waiting"] == len(rest))
        gate.open()
        return [future.result(30) for future in [first, *rest]]


def test_concurrent_greedy_requests_get_exactly_their_lone_completions():
    model = flat_model()
    app = app_for(model, max_batch=8, queue_size=8)
    bodies = [{"prompt": text, "max_tokens": 24, "temperature": 0} for text in PROMPTS[:5]]
    bodies.append({"prompt": PROMPTS[5:], "max_tokens": 24, "temperature": 0})  # two rows
    with TestClient(app) as client, gated(model, app) as gate:
        responses = run_together(client, gate, bodies)
    assert gate.widest >= 6  # the requests did share decoding steps
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200, response.text
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        for prompt, choice in zip(prompts, response.json()["choices"], strict=True):
            [alone] = complete(model, TOKENIZER, [ids(prompt)], SERVED)
            assert choice["text"] == alone.text
            assert choice["finish_reason"] == alone.finish_reason


def test_concurrent_seeded_requests_sample_their_lone_text():
    model = flat_model()
    app = app_for(model, max_batch=8, queue_size=8)
    sampled = {"max_tokens": 30, "temperature": 1.0, "top_k": 5, "repetition_penalty": 1.3}
    bodies = [{"prompt": text, "seed": i, **sampled} for i, text in enumerate(PROMPTS[:6])]
    with TestClient(app) as client, gated(model, app) as gate:
        responses = run_together(client, gate, bodies)
    assert gate.widest >= 5
    params = SamplingParams(
        max_new_tokens=30, temperature=1.0, top_k=5, repetition_penalty=1.3, eos_id=SERVED.eos_id
    )
    for i, (text, response) in enumerate(zip(PROMPTS[:6], responses, strict=True)):
        [alone] = complete(model, TOKENIZER, [ids(text)], replace(params, seed=i))
        assert response.json()["choices"][0]["text"] == alone.text


def test_one_at_a_time_with_max_batch_1():
    model = flat_model()
    app = app_for(model, max_batch=1, queue_size=8)
    bodies = [{"prompt": PROMPTS[:3], "max_tokens": 10, "temperature": 0}, {"prompt": "abc"}]
    with TestClient(app) as client, gated(model, app) as gate:
        responses = run_together(client, gate, bodies)
    assert gate.widest == 1
    expected = complete(
        model, TOKENIZER, [ids(p) for p in PROMPTS[:3]], replace(SERVED, max_new_tokens=10)
    )
    assert [c["text"] for c in responses[0].json()["choices"]] == [e.text for e in expected]


def test_a_new_request_joins_the_running_batch_and_leaves_before_a_long_one():
    model = flat_model()
    app = app_for(model, max_batch=4)
    long = {"prompt": "hello", "max_tokens": 80, "temperature": 0}
    with (
        TestClient(app) as client,
        gated(model, app, delay=0.01) as gate,
        ThreadPoolExecutor(1) as pool,
    ):
        gate.open()
        running = pool.submit(post, client, long)
        wait_until(lambda: gate.passes > 5)
        short = post(client, {"prompt": "abc", "max_tokens": 2, "temperature": 0})
        assert short.status_code == 200
        assert not running.done()  # the short one came and went while the long one ran
        assert running.result(30).json()["usage"]["completion_tokens"] == 80


@contextlib.contextmanager
def running_server(app: FastAPI) -> Iterator[tuple[str, DrainingServer]]:
    """`app` served by uvicorn (as `llm serve` runs it) on a free local port, on a thread."""
    sock = listening_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=DRAIN_S + 2)
    server = DrainingServer(config, app.state.worker)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        wait_until(lambda: server.started)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def streamed_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line:
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_client_that_hangs_up_frees_its_slot():
    model = flat_model()
    app = app_for(model, max_batch=1)
    long = {"prompt": "hello", "max_tokens": CONTEXT - 10, "temperature": 0, "stream": True}
    with gated(model, app, delay=0.02) as gate, running_server(app) as (url, _):
        gate.open()
        with httpx.Client(base_url=url, timeout=10) as http:
            with http.stream("POST", "/v1/completions", json=long) as response:
                next(response.iter_lines())  # one piece, then hang up
            # Long before its 86 slowed steps are up, its slot is free for the next client.
            wait_until(lambda: not app.state.worker.batcher.rows(), timeout=1.0)
            assert post(http, {"prompt": "abc", "max_tokens": 1}).status_code == 200
        assert gate.passes < 40


def test_a_burst_gets_200s_and_503s_with_retry_after_and_never_a_500():
    model = flat_model()
    app = app_for(model, max_batch=2, queue_size=2)
    body = {"prompt": "hello", "max_tokens": 8, "temperature": 0}
    with TestClient(app) as client, gated(model, app, delay=0.005) as gate:
        with ThreadPoolExecutor(12) as pool:
            first = pool.submit(post, client, body)
            assert gate.entered.wait(10)
            burst = [pool.submit(post, client, body) for _ in range(11)]
            wait_until(lambda: sum(f.done() for f in burst) >= 11 - 4)
            gate.open()
            responses = [f.result(30) for f in [first, *burst]]
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}
        assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 503)
        assert statuses.count(200) >= 3  # running, plus the queue's two
        assert post(client, body).status_code == 200  # and the server goes on


def test_draining_answers_503_to_new_requests_and_finishes_those_in_flight():
    model = flat_model()
    app = app_for(model, max_batch=4)
    long = {"prompt": "hello", "max_tokens": 40, "temperature": 0, "stream": True}
    with TestClient(app) as client, gated(model, app, delay=0.01) as gate:
        gate.open()
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.post, "/v1/completions", json=long)
            wait_until(lambda: gate.passes > 3)
            app.state.worker.drain(30)
            refused = post(client, {"prompt": "abc", "max_tokens": 2})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert refused.headers["retry-after"] == "1"
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "shutting_down"
            events = [
                json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
                for line in in_flight.result(30).text.split("\n")
                if line
            ]
    assert events[-1] == "[DONE]"
    [alone] = complete(model, TOKENIZER, [ids("hello")], replace(SERVED, max_new_tokens=40))
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == alone.text


def test_requests_still_running_when_the_drain_ends_get_a_clean_503():
    model = flat_model()
    app = app_for(model, max_batch=4)
    long = {"prompt": "hello", "max_tokens": CONTEXT - 10, "temperature": 0, "stream": True}
    with TestClient(app) as client, gated(model, app, delay=0.02) as gate:
        gate.open()
        with ThreadPoolExecutor(2) as pool:
            streamed = pool.submit(client.post, "/v1/completions", json=long)
            plain = pool.submit(post, client, {**long, "stream": False})
            wait_until(lambda: len(app.state.worker.running) == 2 and gate.passes > 3)
            app.state.worker.drain(0.1)
            last = [line for line in streamed.result(30).text.split("\n") if line][-1]
            assert json.loads(last[6:])["error"]["code"] == "shutting_down"
            assert plain.result(30).status_code == 503
        assert not app.state.worker.batcher.rows()


def test_the_stop_signal_drains_the_worker_before_uvicorn_stops():
    model = flat_model()
    app = app_for(model, max_batch=2)
    long = {"prompt": "hello", "max_tokens": 30, "temperature": 0, "stream": True}
    with gated(model, app, delay=0.02) as gate, running_server(app) as (url, server):
        gate.open()
        with (
            httpx.Client(base_url=url, timeout=30) as http,
            http.stream("POST", "/v1/completions", json=long) as response,
        ):
            lines = response.iter_lines()
            next(lines)
            server.handle_exit(signal.SIGTERM, None)
            assert app.state.worker.draining and server.should_exit
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"  # the request in flight finished whole


def test_bad_batching_settings_are_config_errors():
    with pytest.raises(ConfigError, match="max_batch must be at least 1"):
        app_for(flat_model(), max_batch=0)
    with pytest.raises(ConfigError, match="prefill_budget must be at least 1"):
        app_for(flat_model(), prefill_budget=0)


def test_serve_passes_max_batch_to_the_worker_and_sets_its_threads(tmp_path, monkeypatch):
    save_model_dir(tmp_path / "flat", flat_model(), TOKENIZER)
    served: dict[str, Any] = {}
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda server, sockets: served.update(app=server.config.app)
    )
    monkeypatch.setattr(torch, "set_num_threads", lambda n: served.update(threads=n))
    serve(tmp_path / "flat", port=0, device="cpu", max_batch=3, threads=2, engine="thread")
    served["app"].state.worker.stop()
    assert served["app"].state.worker.batcher.max_batch == 3
    assert served["threads"] == 2
    # The engine's own process computes on the threads; this one keeps one for itself.
    serve(tmp_path / "flat", port=0, device="cpu", max_batch=3, threads=2)
    worker = served["app"].state.worker
    worker.stop()
    assert (worker.max_batch, worker.threads, served["threads"]) == (3, 2, 1)


def test_serving_keeps_a_core_for_the_http_server_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert serving_threads(None) == 3
    assert serving_threads(4) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert serving_threads(None) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 5)
    assert serving_threads(None) == 5  # what the user set for torch
    with pytest.raises(UserError, match="--threads 0"):
        serving_threads(0)
