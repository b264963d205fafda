"""4-bit NormalFloat (NF4) storage of frozen linear weights, for QLoRA fine-tuning.

Trained weights are close to normally distributed, so NF4's 16 levels are placed at
quantiles of a standard normal rather than evenly: every level is used about equally
often. The levels are built as in the QLoRA paper (Dettmers et al., 2023): 8 positive
quantiles and 7 negative ones of N(0, 1), plus an exact zero, scaled into [-1, 1]. A
weight is stored block by block: each block of `BLOCK` values keeps its absolute maximum
(a float32 scale) and, per value, the index of the nearest level divided by that scale,
two indices to a byte. That is 4 + 32/64 = 4.5 bits per weight, 14% of float32.

`NF4Linear` dequantizes its weight on the fly in every forward, in plain torch, so it
runs on any device. Gradients flow to its input (and so to LoRA adapters below it), never
to the frozen weight. Double quantization (storing the scales in 8 bits) is not done.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm.errors import ConfigError

BLOCK = 64  # weights per absmax scale, as QLoRA
QUANTIZERS = ("nf4",)


@functools.cache
def nf4_levels() -> Tensor:
    """The 16 NF4 levels in ascending order, from -1 to 1 with an exact 0."""
    # The outermost level cannot be the quantile at probability 1 (it is infinite); it is
    # taken halfway between where 16 and 15 evenly spaced levels would put their last.
    outer = 1 - (1 / 32 + 1 / 30) / 2
    positive = torch.special.ndtri(torch.linspace(outer, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(outer, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat((positive, torch.zeros(1, dtype=torch.float64), negative))
    return (levels / levels.abs().max()).sort().values.float()


def quantize_nf4(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(packed indices: uint8 of numel/2, absmax per block: float32) of `weight`."""
    if weight.numel() % (2 * BLOCK):
        raise ConfigError(
            f"cannot quantize a weight of {weight.numel()} values in blocks of {BLOCK}"
        )
    blocks = weight.detach().float().reshape(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    levels = nf4_levels().to(weight.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    index = torch.bucketize(blocks / absmax[:, None], midpoints).to(torch.uint8).flatten()
    return index[0::2] << 4 | index[1::2], absmax


def dequantize_nf4(packed: Tensor, absmax: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    index = torch.stack((packed >> 4, packed & 0xF), dim=1).flatten().long()
    values = nf4_levels().to(packed.device)[index].reshape(-1, BLOCK) * absmax[:, None]
    return values.reshape(shape).to(dtype)


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 (its bias, if any, as it was)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.shape, self.dtype = linear.weight.shape, linear.weight.dtype
        packed, absmax = quantize_nf4(linear.weight)
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)

    @property
    def weight(self) -> Tensor:
        """The dequantized weight (a new tensor each time)."""
        return dequantize_nf4(self.packed, self.absmax, self.shape, self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def dequantized(self) -> nn.Linear:
        """An ordinary linear layer with the dequantized weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(device=self.packed.device, dtype=self.dtype).requires_grad_(False)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4"


def quantize_frozen(model: nn.Module, method: str = "nf4") -> int:
    """Store every frozen, unshared linear weight of `model` in `method`, in place; returns
    how many layers were quantized. Trainable layers (LoRA adapters, anything left
    unfrozen) and weights shared with another module (tied embeddings) stay as they are."""
    if method not in QUANTIZERS:
        raise ConfigError(f"unknown quantization {method!r}; choose from {list(QUANTIZERS)}")
    shared = _shared_weights(model)
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and not module.weight.requires_grad
        and id(module.weight) not in shared
        and module.weight.numel() % (2 * BLOCK) == 0
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, NF4Linear(getattr(parent, child)))
    return len(names)


def _shared_weights(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        seen[id(parameter)] = seen.get(id(parameter), 0) + 1
    return {key for key, count in seen.items() if count > 1}
