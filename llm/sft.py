"""`llm sft`: instruction tuning of a pretrained model on conversations.

Records are JSON lines, either `{"prompt": …, "response": …}` or `{"messages": [{"role":
"system"|"user"|"assistant", "content": …}, …]}` (user and assistant alternating, the
assistant last). Each conversation is written out with a chat template and the model is
trained on the stream of them, like pretraining but with the loss on the replies alone
(and the end marker after each, so the model learns where a reply stops). The template
is saved beside the tuned model, and `llm chat` then talks to it in that format.

With a LoRA rank, only the adapters train; the output holds the merged model, or with
`adapter_only` the adapter alone (load it onto the base model with `llm.lora.load_adapter`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.atomic import write_json
from llm.chat import ChatTemplate, Turn, read_messages, save_chat_template
from llm.checkpoint import check_out_dir, load_model_dir, save_model_dir
from llm.config import TrainConfig, from_dict, to_dict
from llm.data import TokenSplits, check_val_fraction, read_jsonl_file
from llm.errors import CheckpointError, ConfigError, DataError
from llm.lora import ATTENTION_TARGETS, MLP_TARGETS, LoRAConfig, apply_lora, fold_lora, save_adapter
from llm.run import METRICS_FILE, run_metrics
from llm.tokenizer import Tokenizer
from llm.tracking import open_tracker
from llm.train import Trainer, TrainOutcome

# The marker a reply ends with: the first of these the tokenizer writes exactly (a char
# vocabulary learned from text without "<" or "|" cannot write the first).
END_MARKERS = ("<|end|>", "\n\n", "\n")
# Fine-tuning settings: a lower rate than pretraining, a short warmup, one evaluation at the
# end; any of them can be changed with --set train.key=value.
SFT_TRAIN = {"learning_rate": 3e-4, "warmup_steps": 10, "max_steps": 300, "eval_interval": 0}
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class Conversation:
    system: str
    turns: list[Turn]


def read_conversations(path: str | Path) -> list[Conversation]:
    """The conversations of a JSON-lines file; a bad record is a DataError naming its line."""
    path = Path(path)
    conversations = []
    for number, record in read_jsonl_file(path):
        try:
            conversations.append(_conversation(record))
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
    if len(conversations) < 2:
        raise DataError(f"{path}: {len(conversations)} records; at least 2 (train and validation)")
    return conversations


def _conversation(record: Any) -> Conversation:
    if isinstance(record, dict) and set(record) == {"prompt", "response"}:
        prompt, response = record["prompt"], record["response"]
        if not (isinstance(prompt, str) and isinstance(response, str)):
            raise ValueError("'prompt' and 'response' must be strings")
        return Conversation("", [Turn(prompt, response)])
    if not (isinstance(record, dict) and set(record) == {"messages"}):
        raise ValueError('a record is {"prompt", "response"} or {"messages": [...]}')
    messages = record["messages"]
    if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
        raise ValueError('"messages" must be a list of {"role", "content"} with string values')
    system, turns, _ = read_messages([(m["role"], m["content"]) for m in messages], answered=True)
    return Conversation(system or "", turns)


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and set(message) == {"role", "content"}
        and all(isinstance(v, str) for v in message.values())
    )


def encode_conversations(
    conversations: list[Conversation], tokenizer: Tokenizer, template: ChatTemplate
) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens, scored: bool per token, UTF-8 bytes of the scored text) of the conversations
    written one after another."""
    tokens: list[int] = []
    scored: list[bool] = []
    scored_bytes = 0
    for conversation in conversations:
        for text, is_reply in template.segments(conversation.turns, conversation.system):
            ids = tokenizer.encode(text)
            tokens += ids
            scored += [is_reply] * len(ids)
            scored_bytes += len(text.encode("utf-8")) if is_reply else 0
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    return np.array(tokens, dtype=dtype), np.array(scored, dtype=bool), scored_bytes


def conversation_splits(
    conversations: list[Conversation],
    tokenizer: Tokenizer,
    template: ChatTemplate,
    val_fraction: float,
    seed: int,
) -> TokenSplits:
    """Train and validation token streams of a deterministic split of the conversations
    (at least one in each)."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    val = [conversations[i] for i in sorted(order[:n_val])]
    train = [conversations[i] for i in sorted(order[n_val:])]
    train_tokens, train_scored, _ = encode_conversations(train, tokenizer, template)
    val_tokens, val_scored, val_bytes = encode_conversations(val, tokenizer, template)
    return TokenSplits(train_tokens, val_tokens, val_bytes, train_scored, val_scored)


def sft_template(tokenizer: Tokenizer) -> ChatTemplate:
    """The default transcript with an end marker after each reply that `tokenizer` can
    write (so that generation can stop on it)."""
    for end in END_MARKERS:
        if tokenizer.decode(tokenizer.encode(end)) == end:
            return ChatTemplate(end=end)
    raise ConfigError(f"the tokenizer can write none of the end markers {list(END_MARKERS)}")


@dataclass(frozen=True)
class SftOptions:
    lora_rank: int = 0
    lora_alpha: float | None = None
    adapter_only: bool = False
    val_fraction: float = 0.1
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set train.key=value

    def __post_init__(self) -> None:
        check_val_fraction(self.val_fraction)


def sft_run(
    model_dir: Path,
    data: Path,
    out_dir: Path,
    options: SftOptions,
    *,
    progress: bool = True,
    tracker: str = "none",
) -> TrainOutcome:
    """Tune the model in `model_dir` on the conversations in `data`; leave the tuned model
    (or its adapter), the chat template, metrics, log and checkpoints in `out_dir`."""
    if options.adapter_only and options.lora_rank == 0:
        raise ConfigError("--adapter-only needs --lora-rank")
    check_out_dir(out_dir, False)
    model, tokenizer, model_config = load_model_dir(model_dir)
    if tokenizer is None:
        raise CheckpointError(f"{model_dir}: no tokenizer saved with the model")
    settings = {**SFT_TRAIN, **options.train}
    template = sft_template(tokenizer)
    seed = int(settings.get("seed", TrainConfig.seed))
    splits = conversation_splits(
        read_conversations(data), tokenizer, template, options.val_fraction, seed
    )
    # Windows as long as the context, or as the shorter split allows.
    shortest = min(len(splits.train), len(splits.val)) - 1
    settings.setdefault("seq_len", max(1, min(model_config.max_seq_len, shortest)))
    train_config = from_dict(TrainConfig, settings, "the training settings (--set train.…)")
    lora = LoRAConfig(
        rank=options.lora_rank,
        alpha=options.lora_alpha,
        targets=(*ATTENTION_TARGETS, *MLP_TARGETS),
    )
    with torch.random.fork_rng(devices=[]):  # the adapters' initial values follow the seed
        torch.manual_seed(train_config.seed)
        apply_lora(model.train(), lora)
    config = {
        "model_dir": str(Path(model_dir).resolve()),
        "data": str(data),
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "lora": to_dict(lora),
        "val_fraction": options.val_fraction,
    }
    tracking = open_tracker(tracker, out_dir, config=config)
    trainer = Trainer(
        model, train_config, splits, out_dir=out_dir, progress=progress, log=tracking.record
    )
    try:
        outcome = trainer.fit()
    finally:
        tracking.close()
    if outcome.status != "ok":
        return outcome
    metrics = run_metrics(outcome, model_config)
    if options.adapter_only:
        save_adapter(out_dir / ADAPTER_DIR, model, lora)
        write_json(out_dir / METRICS_FILE, metrics)
    else:
        save_model_dir(out_dir, fold_lora(model), tokenizer, extra={METRICS_FILE: metrics})
    save_chat_template(out_dir, template)
    return outcome
