"""The OpenAI-compatible server: through FastAPI's TestClient, and once through uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from conftest import peaked_model
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llm.checkpoint import save_model_dir
from llm.errors import CheckpointError, UserError
from llm.generate import SamplingParams, complete
from llm.model import Transformer
from llm.net import listening_socket
from llm.serve import (
    API_KEY_ENV,
    DEFAULT_MAX_PROMPTS,
    GenerationWorker,
    Job,
    build_app,
    resolve_api_key,
    serve,
)
from llm.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer("abcdefghijklmnop ")
CONTEXT = 128
LIMIT = 100  # the server's max_tokens ceiling
GREEDY = {"max_tokens": 12, "temperature": 0}


def tiny_model() -> Transformer:
    # Peaked logits: greedy text that runs long before any eos.
    return peaked_model(TOKENIZER.vocab_size, CONTEXT, seed=2)


@pytest.fixture(scope="module")
def model() -> Transformer:
    return tiny_model()


def app_for(model: Transformer, **options: Any) -> FastAPI:
    return build_app(model, TOKENIZER, model_name="tiny", max_tokens_limit=LIMIT, **options)


@pytest.fixture(scope="module")
def client(model: Transformer) -> Iterator[TestClient]:
    with TestClient(app_for(model)) as client:
        yield client


def completion(client: TestClient | httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def reference(model: Transformer, prompts: list[str], **params: Any) -> list[Any]:
    """What llm.generate.complete makes of the same prompts and settings."""
    ids = [TOKENIZER.encode(prompt) for prompt in prompts]
    return complete(model, TOKENIZER, ids, SamplingParams(eos_id=TOKENIZER.eos_id, **params))


def stream_events(lines: Iterator[str]) -> list[Any]:
    """The data of each server-sent event: parsed JSON, or the final "[DONE]"."""
    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: ")
        data = line.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def joined_texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_completion_has_openai_shape_and_usage(client, model):
    body = completion(client, model="tiny", prompt="hello", **GREEDY)
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    [choice] = body["choices"]
    [expected] = reference(model, ["hello"], max_new_tokens=12, temperature=0.0)
    assert choice == {
        "index": 0,
        "text": expected.text,
        "finish_reason": expected.finish_reason,
        "logprobs": None,
    }
    assert body["usage"] == {
        "prompt_tokens": len("hello"),
        "completion_tokens": expected.completion_tokens,
        "total_tokens": len("hello") + expected.completion_tokens,
    }


def test_list_prompts_equal_greedy_batch_generation(client, model):
    prompts = ["hello", "abc de", "p"]
    body = completion(client, prompt=prompts, **GREEDY)
    expected = reference(model, prompts, max_new_tokens=12, temperature=0.0)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["text"] for c in body["choices"]] == [e.text for e in expected]
    assert [c["finish_reason"] for c in body["choices"]] == [e.finish_reason for e in expected]
    assert body["usage"]["prompt_tokens"] == sum(map(len, prompts))
    assert body["usage"]["completion_tokens"] == sum(e.completion_tokens for e in expected)


def test_token_id_prompts_equal_text_prompts(client):
    text = completion(client, prompt=["hello", "abc"], **GREEDY)
    ids = completion(client, prompt=[TOKENIZER.encode("hello"), TOKENIZER.encode("abc")], **GREEDY)
    single = completion(client, prompt=TOKENIZER.encode("hello"), **GREEDY)
    assert ids["choices"] == text["choices"]
    assert single["choices"][0] == text["choices"][0]


def test_a_seed_decides_the_sample(client, model):
    def sample(seed: int) -> str:
        body = completion(client, prompt="hello", max_tokens=30, temperature=1.0, seed=seed)
        return body["choices"][0]["text"]

    [expected] = reference(model, ["hello"], max_new_tokens=30, temperature=1.0, seed=1)
    assert sample(1) == sample(1) == expected.text
    assert sample(1) != sample(2)


def test_max_tokens_null_means_the_ceiling(client, model):
    body = completion(client, prompt="hello", max_tokens=None, temperature=0)
    [expected] = reference(model, ["hello"], max_new_tokens=LIMIT, temperature=0.0)
    assert body["usage"]["completion_tokens"] == expected.completion_tokens


def test_generation_stops_before_a_stop_string(client):
    free = completion(client, prompt="abc de", max_tokens=30, temperature=0)
    text = free["choices"][0]["text"]
    stop = text[3:5]
    stopped = completion(client, prompt="abc de", max_tokens=30, temperature=0, stop=[stop, "zz"])
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"
    single = completion(client, prompt="abc de", max_tokens=30, temperature=0, stop=stop)
    assert single["choices"] == stopped["choices"]


def test_stream_pieces_join_to_the_completion(client):
    request = {"prompt": ["hello", "abc de"], "max_tokens": 20, "temperature": 0, "stop": "hk"}
    whole = completion(client, **request)
    response = client.post(
        "/v1/completions",
        json={**request, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = stream_events(iter(response.text.split("\n")))
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert all(chunk["usage"] is None for chunk in chunks)
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    texts = joined_texts(chunks)
    assert [texts[i] for i in range(2)] == [c["text"] for c in whole["choices"]]
    finishes = [(c["index"], c["finish_reason"]) for k in chunks for c in k["choices"]]
    assert sorted(f for f in finishes if f[1] is not None) == [
        (c["index"], c["finish_reason"]) for c in whole["choices"]
    ]


def test_a_stream_without_usage_has_no_usage_field(client):
    response = client.post("/v1/completions", json={"prompt": "hi", "stream": True, **GREEDY})
    events = stream_events(iter(response.text.split("\n")))
    assert events[-1] == "[DONE]"
    assert all("usage" not in chunk for chunk in events[:-1])


def test_truncate_keeps_the_end_of_a_long_prompt(client):
    body = completion(client, prompt="a" * 300, max_tokens=8, temperature=0, truncate=True)
    assert body["usage"]["prompt_tokens"] == CONTEXT - 8
    # max_tokens null asks for the server's ceiling; the prompt still keeps half the context.
    body = completion(client, prompt="a" * 300, max_tokens=None, temperature=0, truncate=True)
    assert body["usage"]["prompt_tokens"] == CONTEXT - min(LIMIT, CONTEXT // 2)


def test_options_at_their_neutral_values_are_accepted(client):
    neutral = {
        "n": 1,
        "best_of": 1,
        "echo": False,
        "logprobs": None,
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "logit_bias": {},
        "suffix": None,
        "user": "someone",
    }
    plain = completion(client, prompt="hello", **GREEDY)
    assert completion(client, prompt="hello", **GREEDY, **neutral)["choices"] == plain["choices"]


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [card["id"] for card in models["data"]] == ["tiny"]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert client.get("/v1/models/other").status_code == 404
    assert client.get("/health").json() == {"status": "ok", "waiting": 0}


def body(**fields: Any) -> bytes:
    return json.dumps({"prompt": "hello", **fields}).encode()


JSON = {"Content-Type": "application/json"}


BAD_REQUESTS = [
    pytest.param(b'{"prompt": "hello",', 400, None, id="malformed-json"),
    pytest.param(b"[1, 2]", 400, None, id="not-an-object"),
    pytest.param(b"{}", 400, "prompt", id="no-prompt"),
    pytest.param(body(prompt=5), 400, "prompt", id="prompt-number"),
    pytest.param(body(prompt=["a", 1]), 400, "prompt", id="prompt-mixed-list"),
    pytest.param(body(prompt=""), 400, "prompt", id="prompt-empty"),
    pytest.param(body(prompt=[]), 400, "prompt", id="prompt-empty-list"),
    pytest.param(
        body(prompt=["a"] * (DEFAULT_MAX_PROMPTS + 1)), 400, "prompt", id="too-many-prompts"
    ),
    pytest.param(body(prompt="a" * (CONTEXT + 1)), 400, "prompt", id="prompt-over-context"),
    pytest.param(body(prompt=[TOKENIZER.vocab_size]), 400, "prompt", id="token-off-vocabulary"),
    pytest.param(body(temperature="0.5"), 400, "temperature", id="temperature-string"),
    pytest.param(body(temperature=-1), 400, "temperature", id="temperature-negative"),
    pytest.param(body(temperature=2.5), 400, "temperature", id="temperature-over-2"),
    pytest.param(b'{"prompt": "a", "temperature": NaN}', 400, "temperature", id="nan"),
    pytest.param(body(top_p=0), 400, "top_p", id="top-p-zero"),
    pytest.param(body(top_k=0), 400, "top_k", id="top-k-zero"),
    pytest.param(body(max_tokens=0), 400, "max_tokens", id="max-tokens-zero"),
    pytest.param(body(max_tokens=LIMIT + 1), 400, "max_tokens", id="max-tokens-over-limit"),
    pytest.param(body(max_tokens=1.5), 400, "max_tokens", id="max-tokens-float"),
    pytest.param(body(repetition_penalty=0), 400, "repetition_penalty", id="penalty-zero"),
    pytest.param(body(seed=-1), 400, "seed", id="seed-negative"),
    pytest.param(body(stop=["a"] * 5), 400, "stop", id="five-stops"),
    pytest.param(body(stop=[""]), 400, "stop", id="empty-stop"),
    pytest.param(body(stream="yes"), 400, "stream", id="stream-string"),
    pytest.param(body(stream_options={"include_usage": True}), 400, "stream", id="options"),
    pytest.param(body(max_token=5), 400, "max_token", id="unknown-field"),
    pytest.param(body(n=2), 400, "n", id="n"),
    pytest.param(body(best_of=3), 400, "best_of", id="best-of"),
    pytest.param(body(echo=True), 400, "echo", id="echo"),
    pytest.param(body(logprobs=2), 400, "logprobs", id="logprobs"),
    pytest.param(body(frequency_penalty=0.5), 400, "frequency_penalty", id="frequency"),
    pytest.param(body(presence_penalty=1), 400, "presence_penalty", id="presence"),
    pytest.param(body(logit_bias={"5": 10}), 400, "logit_bias", id="logit-bias"),
    pytest.param(body(suffix="end"), 400, "suffix", id="suffix"),
    pytest.param(body(model="gpt-4"), 404, "model", id="other-model"),
]


@pytest.mark.parametrize(("content", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_an_openai_error_and_the_server_goes_on(client, content, status, param):
    response = client.post("/v1/completions", content=content, headers=JSON)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    completion(client, prompt="hello", max_tokens=1)


def chat(client: TestClient, messages: list[dict[str, Any]], **fields: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": messages, **GREEDY, **fields})


def test_chat_messages_take_the_shapes_openai_clients_send(client):
    plain = chat(client, [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "abc\ndef"}])  # fmt: skip
    assert plain.status_code == 200, plain.text
    shaped = [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {
            "role": "user",
            "name": "ann",
            "content": [{"type": "text", "text": "abc"}, {"type": "text", "text": "def"}],
        },
    ]
    answer = chat(client, shaped)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"] == plain.json()["choices"]
    assert answer.json()["usage"] == plain.json()["usage"]


@pytest.mark.parametrize(
    ("messages", "fields", "param", "message"),
    [
        (
            [{"role": "user", "content": "a", "tool_calls": []}],
            {},
            "messages[0].tool_calls",
            "unknown field 'messages[0].tool_calls'",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            {},
            "messages[0].content",
            "messages[0].content: part 0 has type 'image_url'; this server reads only text parts",
        ),
        (
            [{"role": "user", "content": []}],
            {},
            "messages[0].content",
            "messages[0].content: must be a string or a non-empty list of text parts",
        ),
        (
            [{"role": "tool", "content": "a"}],
            {},
            "messages[0].role",
            "messages[0].role: Input should be 'system', 'developer', 'user' or 'assistant'",
        ),
        (
            [{"role": "user", "content": "a"}],
            {"max_tokens": 5, "max_completion_tokens": 5},
            "max_completion_tokens",
            "max_tokens and max_completion_tokens are both given; send one "
            "(max_completion_tokens is the newer name)",
        ),
        (
            [{"role": "user", "content": "a"}],
            {"temperature": 2.01},
            "temperature",
            "temperature: Input should be less than or equal to 2",
        ),
    ],
)
def test_bad_chat_requests_name_the_real_field(client, messages, fields, param, message):
    response = client.post("/v1/chat/completions", json={"messages": messages, **fields})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["message"]) == (param, message)


def test_a_prompt_over_the_context_says_how_to_truncate(client):
    response = client.post(
        "/v1/completions", content=body(prompt="a" * (CONTEXT + 1)), headers=JSON
    )
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and '"truncate": true' in error["message"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonl"]
)
def test_a_body_not_sent_as_json_is_refused_with_415(client, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/v1/completions", content=body(max_tokens=1), headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    charset = {"Content-Type": "Application/JSON; charset=utf-8"}
    accepted = client.post("/v1/completions", content=body(max_tokens=1), headers=charset)
    assert accepted.status_code == 200


def test_unknown_routes_and_wrong_methods(client):
    missing = client.get("/v1/chat/nothing")
    assert missing.status_code == 404 and "/v1/chat/nothing" in missing.json()["error"]["message"]
    wrong = client.get("/v1/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    for undocumented in ("/docs", "/redoc", "/openapi.json"):  # no open side doors
        assert client.get(undocumented).status_code == 404
    completion(client, prompt="hello", max_tokens=1)


def test_api_key_is_required_except_for_health(model):
    with TestClient(app_for(model, api_key="sekret")) as client:
        request = {"prompt": "hello", "max_tokens": 1}
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic sekret"}]:
            refused = client.post("/v1/completions", json=request, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models").status_code == 401
        assert client.get("/health").status_code == 200
        client.headers["Authorization"] = "Bearer sekret"
        assert client.get("/v1/models").status_code == 200
        assert completion(client, **request)["usage"]["completion_tokens"] == 1


def test_a_full_queue_answers_503_at_once(model):
    entered, release = threading.Event(), threading.Event()

    def hold(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        entered.set()
        release.wait(10)

    request = {"prompt": "hello", "max_tokens": 2, "temperature": 0}  # greedy: no early eos
    hook = model.register_forward_pre_hook(hold)
    try:
        with TestClient(app_for(model, queue_size=1)) as client, ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.post, "/v1/completions", json=request)
            assert entered.wait(5)
            waiting = pool.submit(client.post, "/v1/completions", json=request)
            wait_until(lambda: client.get("/health").json()["waiting"] == 1)
            refused = client.post("/v1/completions", json=request)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "queue_full"
            assert refused.headers["retry-after"] == "1"
            release.set()
            assert running.result(5).status_code == 200
            assert waiting.result(5).status_code == 200
            assert completion(client, **request)["usage"]["completion_tokens"] == 2
    finally:
        release.set()
        hook.remove()


def test_a_failed_generation_is_a_500_and_the_worker_goes_on(client, model):
    def fail(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        raise RuntimeError("out of memory")

    hook = model.register_forward_pre_hook(fail)
    try:
        failed = client.post("/v1/completions", json={"prompt": "hello"})
        streamed = client.post("/v1/completions", json={"prompt": "hello", "stream": True})
    finally:
        hook.remove()
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "server_error"
    assert "out of memory" in failed.json()["error"]["message"]
    [event] = stream_events(iter(streamed.text.split("\n")))
    assert event["error"]["code"] == "generation_failed"
    completion(client, prompt="hello", max_tokens=1)


def test_bad_server_settings_are_config_errors(model):
    with pytest.raises(UserError, match="queue_size must be at least 1"):
        app_for(model, queue_size=0)
    with pytest.raises(UserError, match="API key must not be empty"):
        app_for(model, api_key="")


def test_the_api_key_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("given") == "given"
    monkeypatch.setenv(API_KEY_ENV, "")
    assert resolve_api_key(None) is None


def test_serve_loads_the_model_dir_and_runs_uvicorn(tmp_path, monkeypatch, model):
    save_model_dir(tmp_path / "promoted-7", model, TOKENIZER)
    served: dict[str, Any] = {}

    def run(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        served["app"] = server.config.app
        served["addresses"] = [sock.getsockname()[0] for sock in sockets]

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the suite's stay
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    serve(tmp_path / "promoted-7", host="127.0.0.1", port=0, device="cpu")
    assert served["addresses"] == ["127.0.0.1"]
    with TestClient(served["app"]) as client:
        assert client.get("/v1/models").status_code == 401
        client.headers["Authorization"] = "Bearer from-env"
        assert client.get("/v1/models").json()["data"][0]["id"] == "promoted-7"
        body = completion(client, prompt="hello", **GREEDY)
    [expected] = reference(model, ["hello"], max_new_tokens=12, temperature=0.0)
    assert body["choices"][0]["text"] == expected.text


def test_serve_refuses_a_missing_model_dir_and_a_busy_port(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the suite's stay
    with pytest.raises(CheckpointError, match="no such model directory"):
        serve(tmp_path / "missing", host="127.0.0.1", port=0, device="cpu")
    with listening_socket("127.0.0.1", 0) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)


@contextlib.contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free local port, on a thread; its base URL."""
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        wait_until(lambda: server.started)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()


def test_uvicorn_serves_streams_and_cancels_a_dropped_stream(model):
    forward_calls = []
    slow = threading.Event()

    def count(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
        forward_calls.append(1)
        if slow.is_set():
            time.sleep(0.02)

    long_request = {"prompt": "hello", "max_tokens": LIMIT, "temperature": 0, "stream": True}
    [uncut] = reference(model, ["hello"], max_new_tokens=LIMIT, temperature=0.0)
    assert uncut.completion_tokens == LIMIT  # so only a cancellation can end it early
    hook = model.register_forward_pre_hook(count)
    try:
        with running_server(app_for(model)) as url, httpx.Client(base_url=url, timeout=5) as http:
            whole = completion(http, prompt=["hello", "abc"], **GREEDY)
            streamed = {"prompt": ["hello", "abc"], "stream": True, **GREEDY}
            with http.stream("POST", "/v1/completions", json=streamed) as response:
                assert response.status_code == 200
                events = stream_events(response.iter_lines())
            assert events[-1] == "[DONE]"
            assert joined_texts(events[:-1]) == {c["index"]: c["text"] for c in whole["choices"]}

            slow.set()
            forward_calls.clear()
            with http.stream("POST", "/v1/completions", json=long_request) as response:
                next(response.iter_lines())  # one piece, then hang up
            # Served only once the worker is free: had the dropped request not been
            # cancelled, it would wait for all LIMIT slowed steps.
            completion(http, prompt="hello", max_tokens=1)
            assert len(forward_calls) < LIMIT // 2

            forward_calls.clear()
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
                http.post("/v1/completions", json={**long_request, "stream": False}, timeout=0.1)
            completion(http, prompt="hello", max_tokens=1)
            assert len(forward_calls) < LIMIT // 2
    finally:
        hook.remove()


def test_a_request_cancelled_while_waiting_is_ended_not_left_hanging(model):
    async def waiting_job_ends() -> list[object]:
        worker = GenerationWorker(model, TOKENIZER, queue_size=2)
        job = Job([[1, 2]], SamplingParams(max_new_tokens=4), asyncio.get_running_loop())
        job.cancelled.set()  # its client left before the worker reached it
        worker.start()
        try:
            worker.submit(job)
            return [await asyncio.wait_for(job.events.get(), timeout=10)]
        finally:
            worker.stop()

    assert asyncio.run(waiting_job_ends()) == [None]


# ------------------------------------------------------------------ the OpenAI Python SDK


@pytest.fixture(scope="module")
def sdk(model: Transformer) -> Iterator[Any]:
    """The OpenAI SDK as users point it at `llm serve` (no retries: a 503 must show)."""
    import openai

    with running_server(app_for(model, api_key="k")) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)


def test_the_openai_sdk_completes_and_chats_plain_and_streamed(sdk, model):
    [expected] = reference(model, ["hello"], max_new_tokens=12, temperature=0.0)
    done = sdk.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0)
    assert done.choices[0].text == expected.text
    assert done.usage.completion_tokens == expected.completion_tokens
    pieces = sdk.completions.create(
        model="tiny", prompt="hello", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in pieces) == expected.text
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "abc"}]},
    ]
    reply = sdk.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=12, temperature=0
    )
    assert reply.choices[0].message.role == "assistant"
    streamed = sdk.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_the_openai_sdk_raises_its_own_errors_naming_the_field(sdk):
    import openai

    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "a"}], temperature=3
        )
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model="tiny",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        )
    assert bad.value.body["param"] == "messages[0].content"
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.AuthenticationError):
        sdk.with_options(api_key="wrong").models.list()
