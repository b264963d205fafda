"""Constraints between a model and its training (llm.config.pairing_problems): written
once, and reported in the same words wherever a model meets its training."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from evo.space import space_from_dict
from llm.config import ModelConfig, RunConfig, TrainConfig, pairing_problems
from llm.data import TokenSplits
from llm.errors import ConfigError
from llm.model import Transformer
from llm.train import Trainer
from llm.trial import TrialSpec, run_trial

MODEL = ModelConfig(vocab_size=64, n_layers=1, d_model=32, n_heads=2, d_ff=64, max_seq_len=16)
TOO_LONG = TrainConfig(batch_size=2, seq_len=32, max_steps=1, threads=1)
SENTENCE = "train.seq_len (32) exceeds model.max_seq_len (16)"


def test_a_sequence_as_long_as_the_context_fits_and_a_longer_one_does_not() -> None:
    assert pairing_problems(MODEL, dataclasses.replace(TOO_LONG, seq_len=16)) == []
    assert pairing_problems(MODEL, TOO_LONG) == [SENTENCE]


def test_a_run_config_a_trial_a_search_space_and_the_trainer_say_it_alike() -> None:
    assert RunConfig(model=MODEL, train=TOO_LONG).problems() == [SENTENCE]

    tokens = np.arange(400, dtype=np.uint16) % 64
    data = TokenSplits(train=tokens, val=tokens, val_bytes=400)
    result = run_trial(TrialSpec(model=MODEL, train=TOO_LONG, data=data))
    assert (result.status, result.error) == ("invalid", SENTENCE)

    space = space_from_dict(
        {
            "genes": {"seq_len": {"choice": [16, 32]}},
            "fixed": {"model": {"d_model": 32, "n_heads": 2, "max_seq_len": 16}},
            "trial": {"max_steps": 1},
            "search": {"budget": {"trials": 1}},
        }
    )
    assert space.problems({"seq_len": 32}, vocab_size=64) == [SENTENCE]

    with pytest.raises(ConfigError, match=re.escape(SENTENCE)):
        Trainer(Transformer(MODEL), TOO_LONG, data)
