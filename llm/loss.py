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


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        picked = probs.gather(1, targets[:, None]).squeeze(1)
        # The smallest normal float keeps an underflowed probability finite (loss ≤ 87 nats).
        loss = -picked.clamp_min(torch.finfo(probs.dtype).tiny).log().mean()
        ctx.save_for_backward(probs, targets)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        probs, targets = ctx.saved_tensors
        probs[torch.arange(len(targets), device=probs.device), targets] -= 1.0
        probs.mul_(grad / len(targets))
        return probs.to(ctx.logits_dtype), None


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats of `logits` (..., vocab) against `targets` (...).

    Trains like `F.cross_entropy` (same value and gradient, to float rounding) but
    faster; evaluation uses `F.cross_entropy` itself, whose value is exact for any loss.
    """
    return _SoftmaxCrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
