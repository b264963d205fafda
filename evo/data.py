"""The data of a search, prepared once: the corpora tokenized (cached on disk), loaded
into memory and cut to the validation length every trial is scored on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evo.space import SearchSpace
from llm.config import DataConfig
from llm.data import TokenSplits, prepare
from llm.tokenizer import Tokenizer


@dataclass(frozen=True)
class TrialData:
    """What every trial reads: the pretraining corpus and, with an adapt stage, the
    second one. Sent to Ray workers once, through the object store."""

    pretrain: TokenSplits
    adapt: TokenSplits | None = None


def prepare_data(
    space: SearchSpace, progress: bool = False, scratch: Path | None = None
) -> tuple[TrialData, int]:
    """Tokenize the corpora once (cached on disk) and load them into memory for the
    object store; returns the data and the tokenizer's real vocabulary size. With
    `scratch`, a corpus not cached yet is tokenized there, and the cache is only read."""
    pretrain = prepare(space.data_config(), progress=progress, scratch=scratch)
    tokenizer, limit = pretrain.tokenizer, space.data.max_val_tokens
    adapt = None
    if space.data.adapt is not None:
        config = DataConfig(
            corpus=space.data.adapt.corpus,
            tokenizer=space.data.tokenizer,
            vocab_size=space.data.vocab_size,
            val_fraction=space.data.val_fraction,
        )
        prepared = prepare(config, tokenizer=tokenizer, progress=progress, scratch=scratch)
        adapt = in_memory(prepared.splits(), tokenizer, limit)
    data = TrialData(in_memory(pretrain.splits(), tokenizer, limit), adapt)
    return data, int(tokenizer.vocab_size)


def in_memory(splits: TokenSplits, tokenizer: Tokenizer, max_val_tokens: int | None) -> TokenSplits:
    """Plain arrays (memory maps are tied to a path other machines of a cluster lack),
    with the validation split cut to its first `max_val_tokens` tokens. The cut part's
    bytes are counted from its decoded text, so bits per byte stays exact."""
    val, val_bytes = splits.val, splits.val_bytes
    if max_val_tokens is not None and len(val) > max_val_tokens:
        val = val[:max_val_tokens]
        val_bytes = len(tokenizer.decode(val.tolist()).encode("utf-8"))
    return TokenSplits(np.array(splits.train), np.array(val), val_bytes)


def unigram_bits_per_byte(splits: TokenSplits) -> float:
    """Bits per byte of the best unigram model of the validation split: each token
    predicted by its own frequency in the split, ignoring context. No model that ignores
    context can score better on this text, so a trial that scores no better has learned
    nothing that counts beyond token frequencies.

    Scored like llm.evaluate does a model: over the tokens that have a predecessor (the
    first token is never predicted), in bits per byte of the split's text.
    """
    predicted = np.asarray(splits.val)[1:]
    if not len(predicted):
        raise ValueError("the validation split is too short to predict a token")
    counts = np.bincount(predicted)
    counts = counts[counts > 0]
    bits = -float(np.sum(counts * np.log2(counts / len(predicted))))
    return bits / splits.val_bytes
