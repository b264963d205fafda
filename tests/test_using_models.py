"""`llm chat`, `llm generate`, `llm serve` and `llm export` as users drive them, on a small
untrained byte-level model."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path

import pytest
from conftest import peaked_model

from llm.chat import ChatSession, ChatTemplate, Turn, run_chat
from llm.checkpoint import save_model_dir
from llm.cli import main as llm
from llm.generate import SamplingParams, complete
from llm.model import Transformer
from llm.tokenizer import ByteTokenizer

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, stop=("\n",))


def byte_model(max_seq_len: int = 96) -> Transformer:
    return peaked_model(ByteTokenizer().vocab_size, max_seq_len)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("chat") / "model"
    save_model_dir(directory, byte_model(), ByteTokenizer())
    return directory


def test_a_reply_continues_the_transcript_and_is_remembered():
    model, tokenizer = byte_model(), ByteTokenizer()
    session = ChatSession(model, tokenizer, GREEDY)
    reply = "".join(session.reply("hello"))
    transcript = tokenizer.encode("User: hello\nAssistant:")
    expected = complete(model, tokenizer, [transcript], session.params)[0].text
    assert reply == expected
    assert session.history[0].user == "hello" and session.history[0].assistant == reply.strip()
    assert tokenizer.decode(session.prompt_ids("again")).startswith("User: hello\nAssistant: ")
    session.reset()
    assert tokenizer.decode(session.prompt_ids("again")) == "User: again\nAssistant:"


def test_the_system_text_stands_on_its_own_line_before_the_turns():
    template = ChatTemplate(system="You are terse.")
    history = [Turn("hi", "hello")]
    assert template.render(history, "bye") == (
        "You are terse.\nUser: hi\nAssistant: hello\nUser: bye\nAssistant:"
    )
    assert ChatTemplate().render([], "bye") == "User: bye\nAssistant:"


def test_the_oldest_turns_are_dropped_to_fit_the_context():
    session = ChatSession(byte_model(max_seq_len=96), ByteTokenizer(), GREEDY)
    for message in ("first message", "second message", "third message", "fourth message"):
        "".join(session.reply(message))
    ids = session.prompt_ids("last")
    text = ByteTokenizer().decode(ids)
    assert len(ids) <= 96 - GREEDY.max_new_tokens
    assert text.startswith("User: ") and text.endswith("User: last\nAssistant:")
    assert "first message" not in text and "fourth message" in text


def test_a_message_longer_than_the_context_keeps_its_end():
    session = ChatSession(byte_model(max_seq_len=96), ByteTokenizer(), GREEDY)
    ids = session.prompt_ids("x" * 500 + " the end")
    assert len(ids) == 96 - GREEDY.max_new_tokens
    assert ByteTokenizer().decode(ids).endswith(" the end\nAssistant:")


def test_a_reply_stops_where_the_next_user_turn_would_begin():
    session = ChatSession(byte_model(), ByteTokenizer(), SamplingParams(max_new_tokens=4))
    assert "\nUser:" in session.params.stop
    assert session.params.eos_id == ByteTokenizer().eos_id


def test_commands_and_replies_through_a_stream():
    session = ChatSession(byte_model(), ByteTokenizer(), GREEDY)
    source = io.StringIO("hi\n/help\n\n/frob\n/reset\nhi\n/exit\nnever read\n")
    sink = io.StringIO()
    run_chat(session, source, sink, interactive=False)
    lines = sink.getvalue().split("\n")
    assert lines[1].startswith("commands:") and lines[2].startswith("unknown command /frob")
    assert lines[3] == "(conversation reset)"
    assert lines[0] == lines[4]  # after /reset the same greedy reply comes again
    assert lines[5:] == [""] and len(session.history) == 1


def test_llm_chat_through_a_pipe(model_dir):
    args = ["llm", "chat", str(model_dir), "--temperature", "0", "--max-new-tokens", "10"]
    result = subprocess.run(
        [*args, "--stop", "\n"],
        input="hello there\n/reset\nhello there\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    first, reset, second, end = result.stdout.split("\n")
    assert reset == "(conversation reset)" and first == second and end == ""
    assert ">" not in result.stdout.split("\n")[0][:2]  # no terminal prompt on a pipe


def test_llm_chat_replaces_bytes_that_are_not_utf8_with_one_warning(model_dir):
    args = ["llm", "chat", str(model_dir), "--temperature", "0", "--max-new-tokens", "10"]
    result = subprocess.run(
        [*args, "--stop", "\n"], input=b"hi \xff there\n", capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b"input line 1: replaced 1 undecodable byte with U+FFFD\n"
    assert result.stdout.count(b"\n") == 1  # the reply


def test_llm_generate_replaces_bytes_that_are_not_utf8_with_one_warning(model_dir, capsys, caplog):
    # Python passes argv bytes that are not UTF-8 on as lone surrogates: b"\xff" as "\udcff".
    common = ["--temperature", "0", "--max-new-tokens", "4", "--stop", "\n"]
    assert llm(["generate", str(model_dir), "--prompt", "hi \udcff", *common]) == 0
    assert capsys.readouterr().out.startswith("hi \ufffd")
    assert [r.getMessage() for r in caplog.records] == [
        "--prompt: replaced 1 undecodable byte with U+FFFD"
    ]


def test_llm_generate_streams_one_prompt_and_batches_several(model_dir, capsys):
    common = ["--temperature", "0", "--max-new-tokens", "6", "--stop", "\n"]
    assert llm(["generate", str(model_dir), "--prompt", "abc", *common]) == 0
    single = capsys.readouterr().out
    assert single.startswith("abc")
    assert llm(["generate", str(model_dir), "--prompt", "abc", "--prompt", "xy", *common]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["prompt"] for row in rows] == ["abc", "xy"]
    assert "abc" + rows[0]["text"] + "\n" == single
    assert all(row["finish_reason"] in ("stop", "length") for row in rows)


def test_llm_generate_refuses_or_truncates_a_prompt_over_the_context(model_dir, capsys):
    long = "y" * 200
    assert llm(["generate", str(model_dir), "--prompt", long, "--max-new-tokens", "4"]) == 2
    assert "context of 96" in capsys.readouterr().err
    args = ["generate", str(model_dir), "--prompt", long, "--max-new-tokens", "4", "--truncate"]
    assert llm(args) == 0
    assert capsys.readouterr().out.startswith("y" * 92)


def test_llm_serve_refuses_a_missing_model_or_device_in_one_line(workdir, model_dir, capsys):
    assert llm(["serve", "nowhere"]) == 2
    assert "nowhere: no such model directory" in capsys.readouterr().err
    assert llm(["serve", str(model_dir), "--device", "tpu9"]) == 2
    err = capsys.readouterr().err
    assert "--device: unknown device 'tpu9'" in err and err.count("\n") == 1


def test_llm_export_writes_a_llama_folder_or_refuses_in_one_line(workdir, model_dir, capsys):
    assert llm(["export", str(model_dir), "--format", "hf", "--out", "hf"]) == 0
    config = json.loads((workdir / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (workdir / "hf" / "model.safetensors").is_file()
    alibi = workdir / "alibi"
    config = dataclasses.replace(byte_model().config, pos_encoding="alibi")
    save_model_dir(alibi, Transformer(config))
    assert llm(["export", str(alibi), "--format", "hf", "--out", "hf2"]) == 2
    err = capsys.readouterr().err
    assert "pos_encoding is 'alibi'" in err and err.count("\n") == 1
    assert not (workdir / "hf2").exists()
