"""Evaluation: exact loss, perplexity, bits per byte and accuracy over a token split.

Every token of the split but the first is predicted exactly once, from non-overlapping
windows (`llm.data.eval_batches`), and the per-token losses are summed, not averaged
per batch, so a smaller last batch weighs what its tokens weigh. Bits per byte divides
the summed loss by the split's UTF-8 bytes instead of its tokens, which makes models
with different tokenizers comparable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm.data import eval_batches
from llm.loss import IGNORE

# The metrics of an evaluation, by the names a run's metrics.json and a search record
# them under, each with the EvalResult field that holds it.
EVAL_METRICS = {
    "val_loss": "loss",
    "perplexity": "perplexity",
    "bits_per_byte": "bits_per_byte",
    "accuracy": "accuracy",
}


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per predicted token
    perplexity: float
    bits_per_byte: float
    accuracy: float  # next-token top-1
    tokens: int  # predicted tokens evaluated

    def metrics(self) -> dict[str, float]:
        """The evaluation's metrics by name (EVAL_METRICS): the one translation of an
        evaluation into the metrics that runs and searches record."""
        return {name: getattr(self, field) for name, field in EVAL_METRICS.items()}


def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    val_bytes: int,
    *,
    seq_len: int,
    batch_size: int,
    device: torch.device | str,
    autocast: torch.dtype | Callable[[], AbstractContextManager[object]] | None = None,
    max_batches: int | None = None,
    scored: np.ndarray | None = None,
) -> EvalResult:
    """Score `model` on the split `tokens`, whose text is `val_bytes` UTF-8 bytes long.

    `autocast` is a dtype for `torch.autocast`, or a factory of context managers, or
    None for full precision. With `max_batches`, only the first batches are scored and
    the byte count is scaled by the fraction of the split's predictions they cover, on
    the assumption that bytes per token are uniform along the split: bits per byte is
    then an estimate, exact only for the whole split. With `scored` (bool per token),
    only those targets count, and `val_bytes` is the length of their text.
    """
    device = torch.device(device)
    context = _autocast_factory(autocast, device)
    total_nats, correct, predicted = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(eval_batches(tokens, seq_len, batch_size, scored)):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with context():
                    logits = model(x)
                # Summed in float32 whatever the autocast dtype: the loss is the metric.
                logits = logits.float().flatten(0, 1)
                targets = y.flatten()
                total_nats += F.cross_entropy(
                    logits, targets, reduction="sum", ignore_index=IGNORE
                ).item()
                correct += int((logits.argmax(-1) == targets).sum().item())
                predicted += int((targets != IGNORE).sum().item())
    finally:
        model.train(was_training)
    if predicted == 0:
        raise ValueError("evaluation saw no tokens: the split is shorter than one window")
    loss = total_nats / predicted
    scorable = len(tokens) - 1 if scored is None else int(scored[1:].sum())
    covered = predicted / max(scorable, 1)
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        bits_per_byte=total_nats / (val_bytes * covered * math.log(2)),
        accuracy=correct / predicted,
        tokens=predicted,
    )


def _autocast_factory(
    autocast: torch.dtype | Callable[[], AbstractContextManager[object]] | None,
    device: torch.device,
) -> Callable[[], AbstractContextManager[object]]:
    if autocast is None:
        return contextlib.nullcontext
    if isinstance(autocast, torch.dtype):
        dtype = autocast
        return lambda: torch.autocast(device_type=device.type, dtype=dtype)
    return autocast
