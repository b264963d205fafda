from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from llm.config import ModelConfig
from llm.evaluate import evaluate
from llm.model import Transformer

VOCAB = 16


class BigramTable(nn.Module):
    """Logits that depend only on the current token: a lookup table, so the exact loss of
    a split can be computed by hand from consecutive pairs."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.table[tokens]


def random_tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)


def test_uniform_logits_score_ln_vocab() -> None:
    tokens = random_tokens(203)
    model = BigramTable(torch.zeros(VOCAB, VOCAB))
    result = evaluate(model, tokens, 500, seq_len=8, batch_size=3, device="cpu")
    assert result.loss == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert result.perplexity == pytest.approx(VOCAB, rel=1e-5)
    assert result.tokens == len(tokens) - 1
    assert result.bits_per_byte == pytest.approx(
        math.log(VOCAB) * (len(tokens) - 1) / (500 * math.log(2)), rel=1e-6
    )
    # argmax of equal logits is token 0
    assert result.accuracy == pytest.approx(np.mean(tokens[1:] == 0))
    # The metrics a run and a search record, the loss under the name `val_loss`.
    assert result.metrics() == {
        "val_loss": result.loss,
        "perplexity": result.perplexity,
        "bits_per_byte": result.bits_per_byte,
        "accuracy": result.accuracy,
    }


@pytest.mark.parametrize(("seq_len", "batch_size"), [(7, 2), (10, 4), (200, 1)])
def test_every_token_but_the_first_is_scored_once(seq_len: int, batch_size: int) -> None:
    tokens = random_tokens(201, seed=1)
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0))
    log_probs = torch.log_softmax(table, dim=-1).numpy().astype(np.float64)
    nats = -log_probs[tokens[:-1], tokens[1:]]
    hits = table.argmax(-1).numpy()[tokens[:-1]] == tokens[1:]
    result = evaluate(
        BigramTable(table), tokens, 321, seq_len=seq_len, batch_size=batch_size, device="cpu"
    )
    assert result.tokens == 200
    assert result.loss == pytest.approx(nats.mean(), rel=1e-6)
    assert result.accuracy == pytest.approx(hits.mean())
    assert result.bits_per_byte == pytest.approx(nats.sum() / (321 * math.log(2)), rel=1e-6)


def test_max_batches_scales_the_bytes_by_the_fraction_evaluated() -> None:
    tokens = random_tokens(401, seed=2)
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1))
    nats = -torch.log_softmax(table, -1).numpy().astype(np.float64)[tokens[:-1], tokens[1:]]
    result = evaluate(
        BigramTable(table), tokens, 1000, seq_len=10, batch_size=4, device="cpu", max_batches=2
    )
    assert result.tokens == 80
    assert result.loss == pytest.approx(nats[:80].mean(), rel=1e-6)
    expected_bpb = nats[:80].sum() / (1000 * 80 / 400 * math.log(2))
    assert result.bits_per_byte == pytest.approx(expected_bpb, rel=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored_and_dropout_is_off(training: bool) -> None:
    config = ModelConfig(vocab_size=VOCAB, n_layers=1, d_model=16, n_heads=2, d_ff=32, dropout=0.5)
    model = Transformer(config).train(training)
    tokens = random_tokens(101, seed=3)
    first = evaluate(model, tokens, 100, seq_len=16, batch_size=2, device="cpu")
    second = evaluate(model, tokens, 100, seq_len=16, batch_size=2, device="cpu")
    assert model.training is training
    assert first == second  # no dropout noise in evaluation
    assert first.bits_per_byte == pytest.approx(
        first.loss * first.tokens / (100 * math.log(2)), rel=1e-9
    )


def test_autocast_dtype_and_factory_agree_with_full_precision() -> None:
    config = ModelConfig(vocab_size=VOCAB, n_layers=1, d_model=16, n_heads=2, d_ff=32)
    model = Transformer(config)
    tokens = random_tokens(101, seed=4)
    kwargs = {"seq_len": 16, "batch_size": 2, "device": "cpu"}
    full = evaluate(model, tokens, 100, **kwargs)
    by_dtype = evaluate(model, tokens, 100, autocast=torch.bfloat16, **kwargs)
    by_factory = evaluate(
        model,
        tokens,
        100,
        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        **kwargs,
    )
    assert by_dtype == by_factory
    assert by_dtype.loss == pytest.approx(full.loss, rel=2e-2)
