"""A conversation with a model in a terminal or through a pipe.

Our models are plain language models, not instruction-tuned ones, so a conversation is a
transcript the model continues: each turn is written as `User: …` / `Assistant: …`, and
the reply ends where the model starts to write the next user line. The transcript keeps
as many of the latest turns as fit in the context window beside the reply.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pydantic import ConfigDict

from llm.atomic import read_json_object, write_json
from llm.config import from_dict
from llm.errors import CheckpointError, UserError
from llm.generate import SamplingParams, stream_completions
from llm.model import Transformer
from llm.tokenizer import Tokenizer, replace_undecodable

TEMPLATE_FILE = "chat_template.json"
HELP = "commands: /reset forgets the conversation, /exit (or end of input) leaves, /help"


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str


@dataclass(frozen=True)
class ChatTemplate:
    """How turns are written into the transcript the model continues.

    A plain language model gets the default: `User: …` / `Assistant: …` lines, a reply
    ending where the model starts the next user line. `llm sft` saves its template (with
    an `end` marker the model learns to write after each reply) beside the model, as
    `chat_template.json`, and everything that chats with that model uses it.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    system: str = ""  # text placed on its own line before every transcript
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant:"
    end: str = ""  # written after every reply; "" for a model that was never taught one

    def render(self, history: list[Turn], message: str, system: str | None = None) -> str:
        """The transcript up to the start of the reply to `message`. It ends right after
        the assistant's prefix, without a space: subword vocabularies keep a word's space
        inside its token, so the model writes the space itself."""
        pieces = self.segments(history, system)
        return "".join(text for text, _ in pieces) + self.turn(message, "")

    def segments(self, turns: list[Turn], system: str | None = None) -> list[tuple[str, bool]]:
        """The transcript of whole `turns` as (text, is a reply) pieces, in order: what
        instruction tuning trains on, scoring the replies (and their end) only."""
        system = self.system if system is None else system
        pieces = [(system if system.endswith("\n") else system + "\n", False)] if system else []
        for turn in turns:
            pieces += [(self.turn(turn.user, ""), False), (f" {turn.assistant}{self.end}", True)]
            pieces.append(("\n", False))
        return pieces

    def turn(self, user: str, assistant: str) -> str:
        return f"{self.user_prefix}{user}\n{self.assistant_prefix}{assistant}"

    def stop(self) -> tuple[str, ...]:
        return (self.end,) if self.end else (f"\n{self.user_prefix.rstrip()}",)


def read_messages(
    messages: list[tuple[str, str]], *, answered: bool
) -> tuple[str | None, list[Turn], str | None]:
    """(system text or None, the whole turns, the user's last message or None) of
    (role, content) messages: an optional system message, then user and assistant
    alternating, the last from the assistant when `answered` (a conversation to learn
    from), else from the user (one to reply to). A ValueError says what is wrong."""
    system = None
    if messages and messages[0][0] == "system":
        system, messages = messages[0][1], messages[1:]
    roles = [role for role, _ in messages]
    pairs = len(roles) // 2
    expected = ["user", "assistant"] * pairs + ([] if answered else ["user"])
    if not roles or roles != expected:
        last = "assistant" if answered else "user"
        raise ValueError(
            "roles must be an optional system, then user and assistant alternating, the "
            f"last from the {last} (got {roles})"
        )
    turns = [Turn(messages[2 * i][1], messages[2 * i + 1][1]) for i in range(pairs)]
    return system, turns, None if answered else messages[-1][1]


def save_chat_template(directory: Path, template: ChatTemplate) -> None:
    write_json(directory / TEMPLATE_FILE, dataclasses.asdict(template))


def load_chat_template(directory: Path) -> ChatTemplate:
    """The template saved with the model in `directory`, or the default transcript."""
    path = directory / TEMPLATE_FILE
    if not path.exists():
        return ChatTemplate()
    data = read_json_object(path, CheckpointError, f"{path}: missing")
    try:
        return from_dict(ChatTemplate, data, str(path))
    except UserError as err:
        raise CheckpointError(str(err)) from None


class ChatSession:
    """The conversation so far and how to extend it."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        params: SamplingParams,
        template: ChatTemplate | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.template = template or ChatTemplate()
        stop = tuple(dict.fromkeys(params.stop + self.template.stop()))
        self.params = dataclasses.replace(params, stop=stop, eos_id=tokenizer.eos_id)
        self.history: list[Turn] = []

    def reset(self) -> None:
        self.history.clear()

    def prompt_ids(self, message: str) -> list[int]:
        """The transcript for `message`: the oldest turns are dropped until it leaves room
        for a whole reply; a single message too long even alone keeps only its end."""
        room = max(1, self.model.config.max_seq_len - self.params.max_new_tokens)
        history = list(self.history)
        ids = self.tokenizer.encode(self.template.render(history, message))
        while len(ids) > room and history:
            history.pop(0)
            ids = self.tokenizer.encode(self.template.render(history, message))
        return ids[-room:]

    def reply(self, message: str) -> Iterator[str]:
        """The reply's text in pieces as they are generated; the turn is remembered once the
        reply is complete."""
        params = self.params
        if params.seed is not None:
            # A fixed seed should give a reproducible conversation, not the same draw each turn.
            params = dataclasses.replace(params, seed=params.seed + len(self.history))
        pieces = []
        for delta in stream_completions(
            self.model, self.tokenizer, [self.prompt_ids(message)], params
        ):
            pieces.append(delta.text)
            yield delta.text
        self.history.append(Turn(message, "".join(pieces).strip()))


def run_chat(session: ChatSession, source: TextIO, sink: TextIO, *, interactive: bool) -> None:
    """Read messages line by line from `source` and write each reply to `sink` on its own
    line, until /exit or the end of input. On a terminal, a prompt and help are shown.
    Bytes that are not UTF-8 become U+FFFD, with a warning."""
    if interactive:
        sink.write(f"{HELP}\n")
    for number in itertools.count(1):
        if interactive:
            sink.write("> ")
            sink.flush()
        line = source.readline()
        message = replace_undecodable(line, f"input line {number}").strip()
        if not line or message == "/exit":
            return
        if message.startswith("/"):
            sink.write(f"{run_command(session, message)}\n")
        elif message:
            for piece in session.reply(message):
                sink.write(piece)
                sink.flush()
            sink.write("\n")
        sink.flush()


def run_command(session: ChatSession, command: str) -> str:
    if command == "/reset":
        session.reset()
        return "(conversation reset)"
    if command == "/help":
        return HELP
    return f"unknown command {command}; {HELP}"
