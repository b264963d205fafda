from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_small_model, write_corpus
from fastapi.testclient import TestClient

from llm.chat import ChatSession, ChatTemplate, Turn, load_chat_template
from llm.checkpoint import load_model_dir
from llm.cli import main as llm
from llm.errors import DataError
from llm.generate import SamplingParams
from llm.lora import load_adapter
from llm.serve import build_app
from llm.sft import Conversation, encode_conversations, read_conversations, sft_template
from llm.tokenizer import ByteTokenizer

WORDS = ["".join(p) for p in itertools.product("abcde", repeat=3)]
random.Random(0).shuffle(WORDS)
HELD_OUT, TRAIN = WORDS[:25], WORDS[25:]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small character model, pretrained briefly on plain text."""
    work = tmp_path_factory.mktemp("sft")
    data = {"corpus": str(write_corpus(work / "corpus")), "tokenizer": "char"}
    train = {"batch_size": 8, "seq_len": 64, "max_steps": 30, "learning_rate": 3e-3}
    return train_small_model(work, data, {**train, "warmup_steps": 3})


def reversal_set(path: Path) -> Path:
    with path.open("w") as f:
        for word in TRAIN:
            f.write(json.dumps({"prompt": f"reverse: {word}", "response": word[::-1]}) + "\n")
    return path


def exact_match(model_dir: Path, template: ChatTemplate) -> float:
    model, tokenizer, _ = load_model_dir(model_dir)
    assert tokenizer is not None
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    right = 0
    for word in HELD_OUT:
        session = ChatSession(model, tokenizer, greedy, template)
        right += "".join(session.reply(f"reverse: {word}")).strip() == word[::-1]
    return right / len(HELD_OUT)


@pytest.fixture(scope="module")
def tuned(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("tuned")
    data = reversal_set(work / "reverse.jsonl")
    settings = ["train.max_steps=800", "train.learning_rate=3e-3", "train.threads=1"]
    args = ["sft", str(base), "--data", str(data), "--out", str(work / "tuned")]
    assert llm(args + [arg for s in settings for arg in ("--set", s)]) == 0
    return work / "tuned"


def test_tuning_teaches_a_task_the_pretrained_model_cannot_do(base: Path, tuned: Path) -> None:
    template = load_chat_template(tuned)
    assert template.end  # saved with the model: chat stops where a reply ends
    # Held-out words (never seen in tuning): 25 of 25 measured; the threshold leaves room.
    assert exact_match(tuned, template) >= 0.8
    assert exact_match(base, template) < 0.2


def test_generate_chat_prints_the_reply_alone(
    tuned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    word = HELD_OUT[0]
    args = ["generate", str(tuned), "--chat", "--temperature", "0", "--max-new-tokens", "12"]
    assert llm([*args, "--prompt", f"reverse: {word}"]) == 0
    assert capsys.readouterr().out == word[::-1] + "\n"
    assert llm([*args, "--prompt", f"reverse: {word}", "--prompt", f"reverse: {HELD_OUT[1]}"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == [word[::-1], HELD_OUT[1][::-1]]


def test_the_chat_endpoint_answers_in_the_template_plain_and_streamed(tuned: Path) -> None:
    model, tokenizer, _ = load_model_dir(tuned)
    assert tokenizer is not None
    app = build_app(model, tokenizer, model_name="t", template=load_chat_template(tuned))
    word = HELD_OUT[2]
    body = {
        "messages": [{"role": "user", "content": f"reverse: {word}"}],
        "temperature": 0,
        "max_tokens": 12,
    }
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": word[::-1]}
        assert answer["choices"][0]["finish_reason"] == "stop"
        events = client.post("/v1/chat/completions", json={**body, "stream": True}).text
        chunks = [json.loads(e[6:]) for e in events.split("\n\n") if e.startswith("data: {")]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == word[::-1]
        assert events.endswith("data: [DONE]\n\n")
        wrong = {**body, "messages": [{"role": "assistant", "content": "x"}]}
        refused = client.post("/v1/chat/completions", json=wrong)
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "messages"


def test_every_endpoint_stops_at_the_end_marker_and_neither_shows_nor_counts_it(
    tuned: Path,
) -> None:
    model, tokenizer, _ = load_model_dir(tuned)
    assert tokenizer is not None
    template = load_chat_template(tuned)
    app = build_app(model, tokenizer, model_name="t", template=template)
    word = HELD_OUT[3]
    reply = " " + word[::-1]  # the template leaves the reply's space to the model
    greedy = {"temperature": 0, "max_tokens": 40}
    prompt = template.render([], f"reverse: {word}")
    with TestClient(app) as client:
        plain = client.post("/v1/completions", json={"prompt": prompt, **greedy}).json()
        messages = [{"role": "user", "content": f"reverse: {word}"}]
        chat = client.post("/v1/chat/completions", json={"messages": messages, **greedy}).json()
        stream = {"prompt": prompt, "stream": True, "stream_options": {"include_usage": True}}
        events = client.post("/v1/completions", json={**stream, **greedy}).text
    assert plain["choices"][0]["text"] == reply
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert chat["choices"][0]["message"]["content"] == word[::-1]
    chunks = [json.loads(e[6:]) for e in events.split("\n\n") if e.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == reply
    tokens = len(tokenizer.encode(reply))
    usage = [plain["usage"], chat["usage"], chunks[-1]["usage"]]
    assert [u["completion_tokens"] for u in usage] == [tokens] * 3


def test_a_lora_adapter_is_saved_alone_or_merged_into_a_plain_model(
    base: Path, tmp_path: Path
) -> None:
    data = reversal_set(tmp_path / "reverse.jsonl")
    common = ["--data", str(data), "--lora-rank", "4", "--set", "train.max_steps=20"]
    common += ["--set", "train.threads=1"]
    assert llm(["sft", str(base), *common, "--out", str(tmp_path / "merged")]) == 0
    assert llm(["sft", str(base), *common, "--adapter-only", "--out", str(tmp_path / "a")]) == 0
    assert not (tmp_path / "a" / "model.safetensors").exists()
    assert (tmp_path / "a" / "chat_template.json").exists()
    merged, _, _ = load_model_dir(tmp_path / "merged")  # a plain model: no adapter layers
    assert not any("lora" in name for name in merged.state_dict())
    model, _, _ = load_model_dir(base)
    tuned = load_adapter(tmp_path / "a" / "adapter", model).eval()
    tokens = torch.randint(0, 20, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(tuned(tokens), merged(tokens), rtol=1e-4, atol=1e-4)


def test_only_the_replies_and_their_end_are_scored() -> None:
    tokenizer = ByteTokenizer()
    template = sft_template(tokenizer)
    conversation = Conversation("Be brief.", [Turn("hi", "hello"), Turn("and?", "bye")])
    tokens, scored, scored_bytes = encode_conversations([conversation], tokenizer, template)
    text = tokenizer.decode(tokens.tolist())
    assert (
        text == "Be brief.\nUser: hi\nAssistant: hello<|end|>\nUser: and?\nAssistant: bye<|end|>\n"
    )
    replies = tokenizer.decode(tokens[scored].tolist())
    assert replies == " hello<|end|> bye<|end|>"
    assert scored_bytes == len(replies.encode())
    assert not scored[0] and scored.dtype == np.bool_


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a"}', "a record is"),
        ('{"prompt": "a", "response": 3}', "must be strings"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "user and assistant alternating"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "the last from the assistant"),
        ('{"messages": [{"role": "user"}]}', "list of"),
        ("{not json", "malformed JSON"),
    ],
)
def test_a_bad_record_is_named_by_its_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "p", "response": "r"})
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(DataError, match=f"data.jsonl, line 3: .*{message}"):
        read_conversations(path)


def test_both_record_forms_are_read(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    records = [{"prompt": "p", "response": "r"}, {"messages": messages}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = read_conversations(path)
    assert first == Conversation("", [Turn("p", "r")])
    assert second == Conversation("s", [Turn("u1", "a1"), Turn("u2", "a2")])


def test_sft_takes_training_settings_only(base: Path, tmp_path: Path) -> None:
    data = reversal_set(tmp_path / "reverse.jsonl")
    args = ["sft", str(base), "--data", str(data), "--out", str(tmp_path / "o")]
    assert llm([*args, "--set", "model.n_layers=3"]) == 2
    assert llm([*args, "--adapter-only"]) == 2  # an adapter needs --lora-rank
    assert not (tmp_path / "o").exists()
