"""`llm continue`: more pretraining of a trained model on new text, optionally with a
vocabulary grown for that text.

Growing the vocabulary appends up to N tokens learned from the new corpus's training
split (`Tokenizer.grow`); every existing id keeps its piece and its rows. Each new token
starts from the mean of the embedding rows (and of the output rows, when the head is not
tied) of the old tokens that spell it, so the model reads it roughly as it read those.
Bits per byte on the old validation text and on the new one are measured before and
right after the expansion, so its cost is visible before any training repays it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm.atomic import read_json_object, write_json
from llm.checkpoint import check_out_dir, load_model_dir, save_model_dir
from llm.config import DataConfig, ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from llm.data import (
    TokenSplits,
    chunk_documents,
    encode_validation,
    prepare,
    read_corpus,
    split_documents,
)
from llm.device import resolve_device
from llm.errors import CheckpointError, ConfigError
from llm.evaluate import evaluate
from llm.model import Transformer
from llm.run import METRICS_FILE, RUN_FILE, run_metrics, saved_data_config
from llm.tokenizer import Tokenizer
from llm.tracking import open_tracker
from llm.train import Trainer, TrainOutcome

# Continued pretraining starts from trained weights: a lower peak rate than training from
# scratch and a short warmup; any of it can be changed with --set train.key=value.
CONTINUE_TRAIN = {"learning_rate": 1e-3, "warmup_steps": 20, "max_steps": 500}
ARGUMENTS_FILE = "continue.json"  # what the run was asked, checked by --resume
EVAL_BATCH = 16
# A new row is the mean of its spelling's rows pulled this far from the mean row of the
# whole vocabulary. The spelling's mean alone reads as the spelling does, but through the
# output head it scores the new token about as high as its pieces, taking probability from
# them wherever they are likely. Measured on docs/using-models.md's example (nano on python-docs,
# 256 tokens learned from python-code), bits per byte on the old and the new validation
# text right after the expansion: spelling mean 2.202 and 3.472, this 2.084 and 3.390,
# random rows 2.122 and 3.437, from 2.095 and 3.610 before.
SPELLING_WEIGHT = 0.5


@dataclass(frozen=True)
class ContinueOptions:
    expand_vocab: int = 0  # at most this many new tokens; 0 keeps the vocabulary
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set train.key=value


@dataclass(frozen=True)
class Expansion:
    """Bits per byte of each split, with the old model and tokenizer and with the grown
    ones before any training."""

    added: int
    before: dict[str, float]
    after: dict[str, float]


def grow_model(model: Transformer, old: Tokenizer, new: Tokenizer) -> Transformer:
    """`model` for tokenizer `new`, which is `old` grown: the same weights, plus a row in
    the embedding and the output head for each appended token, from the mean of the rows
    of the old tokens that spell it (see SPELLING_WEIGHT)."""
    old_size = old.vocab_size
    if any(new.decode([i]) != old.decode([i]) for i in range(old_size)):
        raise ConfigError("the new tokenizer does not extend the old one: an old id changed")
    spellings = [old.encode(new.decode([i])) for i in range(old_size, new.vocab_size)]
    vocab_weights = {model.embed.weight, model.lm_head.weight}
    state = model.state_dict()
    for name, weight in model.named_parameters(remove_duplicate=False):
        if weight in vocab_weights and spellings:
            weight = weight.detach()
            everything = weight.mean(0)
            rows = [
                everything + SPELLING_WEIGHT * (weight[ids].mean(0) - everything)
                if ids
                else everything
                for ids in spellings
            ]
            state[name] = torch.cat([weight, torch.stack(rows)])
    grown = Transformer(dataclasses.replace(model.config, vocab_size=new.vocab_size))
    grown.load_state_dict(state)
    return grown.train(model.training)


def continue_run(
    model_dir: Path,
    corpus: str,
    out_dir: Path,
    options: ContinueOptions,
    *,
    resume: bool = False,
    progress: bool = True,
    tracker: str = "none",
    say: Callable[[str], None] = lambda line: None,
) -> tuple[TrainOutcome, Expansion | None]:
    """Train the model in `model_dir` on more text from `corpus`; leave the result in
    `out_dir` as a model directory with the run's metrics, log and checkpoints."""
    out_dir = Path(out_dir)
    arguments = {
        "model_dir": str(Path(model_dir).resolve()),
        "corpus": corpus,
        "expand_vocab": options.expand_vocab,
        "train": options.train,
    }
    check_out_dir(out_dir, resume)
    if resume:
        _check_same_arguments(out_dir, arguments)
    if options.expand_vocab < 0:
        raise ConfigError(f"--expand-vocab must be at least 0 (got {options.expand_vocab})")
    model, tokenizer, _ = load_model_dir(model_dir)
    if tokenizer is None:
        raise CheckpointError(f"{model_dir}: no tokenizer saved with the model")
    old_data = saved_data_config(model_dir)
    data = dataclasses.replace(old_data or DataConfig(), corpus=corpus)
    settings = {**CONTINUE_TRAIN, "seq_len": model.config.max_seq_len, **options.train}
    train_config = from_dict(TrainConfig, settings, "the training settings (--set train.…)")

    expansion = None
    if options.expand_vocab:
        grown_tokenizer = tokenizer.grow(_training_texts(data), options.expand_vocab)
        grown = grow_model(model, tokenizer, grown_tokenizer)
        expansion = _measure_expansion(
            (model, tokenizer), (grown, grown_tokenizer), data, old_data, train_config
        )
        for line in _expansion_lines(expansion):
            say(line)
        model, tokenizer = grown, grown_tokenizer
    splits = _splits(data, tokenizer)

    config = {**arguments, "model": to_dict(model.config), "train": to_dict(train_config)}
    tracking = open_tracker(tracker, out_dir, config=config)
    trainer = Trainer(
        model.train(), train_config, splits, out_dir=out_dir, progress=progress, log=tracking.record
    )
    if not resume:
        write_json(out_dir / ARGUMENTS_FILE, arguments)
    try:
        outcome = trainer.fit(resume=resume)
    finally:
        tracking.close()
    if outcome.stop_reason == "interrupted":
        return outcome, expansion
    metrics = run_metrics(outcome, model.config)
    if expansion is not None:
        metrics["vocabulary"] = dataclasses.asdict(expansion)
    if outcome.status == "ok":
        new_data = dataclasses.replace(
            data, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size
        )
        write_json(out_dir / RUN_FILE, _run_dict(model.config, new_data, train_config))
        save_model_dir(out_dir, model, tokenizer, extra={METRICS_FILE: metrics})
    else:
        write_json(out_dir / METRICS_FILE, metrics)
    return outcome, expansion


def _training_texts(data: DataConfig) -> list[str]:
    """The new corpus's training split: what the new tokens are learned from."""
    docs = chunk_documents(read_corpus(data.corpus), data.chunk_chars)
    train, _ = split_documents(docs, data.val_fraction, data.split_seed)
    return [doc.text for doc in train]


def _splits(data: DataConfig, tokenizer: Tokenizer) -> TokenSplits:
    return prepare(data, tokenizer=tokenizer, progress=False).splits()


def _measure_expansion(
    before: tuple[Transformer, Tokenizer],
    after: tuple[Transformer, Tokenizer],
    data: DataConfig,
    old_data: DataConfig | None,
    train: TrainConfig,
) -> Expansion:
    """Bits per byte on the validation split of the new corpus, and of the corpus the
    model was trained on where its run.json names it, with either model."""
    sources = {"new": data}
    if old_data is not None:
        sources["old"] = old_data
    device = resolve_device(train.device)
    scores: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for (model, tokenizer), out in zip((before, after), scores, strict=True):
        for name, source in sources.items():
            val = encode_validation(source, tokenizer)
            result = evaluate(
                model.to(device).eval(),
                val.val,
                val.val_bytes,
                seq_len=model.config.max_seq_len,
                batch_size=EVAL_BATCH,
                device=device,
            )
            out[name] = result.bits_per_byte
    return Expansion(after[1].vocab_size - before[1].vocab_size, *scores)


def _expansion_lines(expansion: Expansion) -> list[str]:
    lines = [f"vocabulary: {expansion.added} tokens added"]
    for name in expansion.before:
        was, now = expansion.before[name], expansion.after[name]
        lines.append(
            f"bits per byte on the {name} validation text: {was:.4f} before the expansion, "
            f"{now:.4f} after ({now - was:+.4f}), before any training"
        )
    return lines


def _run_dict(model: ModelConfig, data: DataConfig, train: TrainConfig) -> dict[str, Any]:
    return to_dict(RunConfig(model=model, data=data, train=train))


def _check_same_arguments(out_dir: Path, arguments: dict[str, Any]) -> None:
    path = out_dir / ARGUMENTS_FILE
    saved = read_json_object(path, ConfigError, f"nothing to resume in {out_dir}: no {path.name}")
    if saved != arguments:
        changed = sorted(key for key in arguments if saved.get(key) != arguments[key])
        raise ConfigError(
            f"{path}: the run in {out_dir} was started with other arguments (changed: "
            f"{', '.join(changed)}); resume it with the same ones, or choose another --out"
        )
