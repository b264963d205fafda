"""The training loss: next-token cross-entropy with a fused, allocation-free backward.

`F.cross_entropy` runs log_softmax forward, then in backward allocates and zero-fills a
gradient the size of the logits (vocabulary × tokens) before scattering into it. On a
CPU that fresh buffer page-faults on every step, and the two passes over the logits
cost more than the model's matrix multiplies at small widths. Here the forward keeps
the softmax it computes, and the backward turns it into the gradient in place:
d(loss)/d(logits) = (softmax − one_hot(target)) / n.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

IGNORE = -1  # a target that is not scored (a prompt's tokens in instruction tuning)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        ignored = targets == IGNORE
        targets = targets.masked_fill(ignored, 0)
        picked = probs.gather(1, targets[:, None]).squeeze(1)
        # The smallest normal float keeps an underflowed probability finite (loss ≤ 87 nats).
        nats = -picked.clamp_min(torch.finfo(probs.dtype).tiny).log()
        counted = len(targets) - int(ignored.sum())
        ctx.ignored = ignored if counted < len(targets) else None
        ctx.counted = max(counted, 1)
        ctx.save_for_backward(probs, targets)
        ctx.logits_dtype = logits.dtype
        return nats.masked_fill(ignored, 0.0).sum() / ctx.counted

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        probs, targets = ctx.saved_tensors
        probs[torch.arange(len(targets), device=probs.device), targets] -= 1.0
        probs.mul_(grad / ctx.counted)
        if ctx.ignored is not None:
            probs[ctx.ignored] = 0.0
        return probs.to(ctx.logits_dtype), None


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats of `logits` (..., vocab) against `targets` (...), over
    the targets that are not IGNORE.

    Trains like `F.cross_entropy` (same value and gradient, to float rounding) but
    faster; evaluation uses `F.cross_entropy` itself, whose value is exact for any loss.
    """
    return _SoftmaxCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
