"""Position encodings: how a transformer learns where each token stands.

Every encoding answers two questions, and most answer only one of them:
- `embed`: what to add to the token embeddings (learned, sinusoidal);
- `attention_inputs`: what attention needs per forward pass — rotation tables for the
  queries and keys (RoPE) or an additive bias on the scores (ALiBi).
The defaults answer "nothing", which is the `none` encoding.

Positions come as (batch or 1, length) tensors so that every row of a batch may start at
its own place: a left-padded prompt's real tokens count from 0, and its padding gets
negative positions, which attention masks out as keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from llm.config import ModelConfig


@dataclass
class AttentionPositions:
    """What every attention layer of one forward pass needs to know about positions."""

    rope: tuple[Tensor, Tensor] | None = None  # cos, sin at the query positions: (B|1, T, 1, hd/2)
    mask: Tensor | None = None  # bool (True = may attend) or float bias: (B|1, heads|1, T, S)
    is_causal: bool = False  # plain causal attention over T == S: lets SDPA pick its fast kernels

    def restrict(self, allowed: Tensor) -> None:
        """Attend only where `allowed` (bool, broadcast like `mask`; causal itself) says."""
        if self.mask is None:
            self.mask = allowed
        elif self.mask.dtype == torch.bool:
            self.mask = self.mask & allowed
        else:
            self.mask = self.mask.masked_fill(~allowed, float("-inf"))
        self.is_causal = False

    def rotate(self, heads: Tensor) -> Tensor:
        """Queries and keys (B, T, heads, head_dim) rotated to their positions."""
        if self.rope is None:
            return heads
        cos, sin = (table.to(heads.dtype) for table in self.rope)
        if torch.is_grad_enabled() and heads.requires_grad:
            return Rotate.apply(heads, cos, sin)
        return rotate_pairs(heads, cos, sin)


class Rotate(torch.autograd.Function):
    """RoPE in the Llama layout: channel i and channel i + head_dim/2 form a pair, rotated
    by the angle of its frequency at the token's position:

        out1 = x1·cos − x2·sin,   out2 = x2·cos + x1·sin.

    Written out as a function with its own backward (the rotation by the opposite angle),
    because autograd's version of `x·cos + rotate_half(x)·sin` spends most of its time
    on the temporaries of the negation and concatenation, in both directions."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return rotate_pairs(x, cos, sin)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return rotate_pairs(grad, cos, -sin), None, None


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1)
    out1.addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=out2)
    out2.addcmul_(x1, sin)
    return out


def causal_mask(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """(B|1, 1, T, S): a query sees the keys at or before it, padding (a negative position)
    excepted. Padding queries see the padding before them instead: their outputs are never
    used, but a row with nothing to attend to would fill the whole batch with NaNs."""
    q, k = q_pos[:, :, None], k_pos[:, None, :]
    return ((k <= q) & ((k >= 0) | (q < 0)))[:, None]


def window_mask(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """`causal_mask`, and a query sees no key `window` or more positions before it."""
    near = (q_pos[:, :, None] - k_pos[:, None, :] < window)[:, None]
    return causal_mask(q_pos, k_pos) & near


def table_index(pos: Tensor) -> Tensor:
    """Padding reads row 0 of a position table; its output is masked out anyway."""
    return pos.clamp(min=0)


class PositionEncoding(nn.Module):
    """No positional signal at all: attention's causal mask is the only order the model sees."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return x

    def attention_inputs(self, q_pos: Tensor, k_pos: Tensor) -> AttentionPositions:
        return AttentionPositions()


class LearnedPositions(PositionEncoding):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.table = nn.Embedding(config.max_seq_len, config.d_model)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return x + self.table(table_index(pos))


class SinusoidalPositions(PositionEncoding):
    """The fixed encoding of "Attention Is All You Need": sines and cosines of geometric
    frequencies."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d = config.d_model
        pos = torch.arange(config.max_seq_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
        table = torch.zeros(config.max_seq_len, d)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("table", table, persistent=False)

    def embed(self, x: Tensor, pos: Tensor) -> Tensor:
        return x + self.table[table_index(pos)].to(x.dtype)


class RotaryPositions(PositionEncoding):
    """RoPE: rotate each pair of query/key channels by an angle proportional to the position,
    so that their dot product depends only on the distance between the two tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        hd = config.head_dim
        inv_freq = config.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def attention_inputs(self, q_pos: Tensor, k_pos: Tensor) -> AttentionPositions:
        index = table_index(q_pos)
        return AttentionPositions(rope=(self.cos[index][:, :, None], self.sin[index][:, :, None]))


class AlibiPositions(PositionEncoding):
    """ALiBi: no embedding; each head penalises attention scores linearly in the distance,
    with a head-specific slope, which lets models run on sequences longer than trained on."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)

    def attention_inputs(self, q_pos: Tensor, k_pos: Tensor) -> AttentionPositions:
        distance = (q_pos[:, None, :, None] - k_pos[:, None, None, :]).to(self.slopes.dtype)
        bias = -self.slopes[:, None, None] * distance
        bias = bias.masked_fill(~causal_mask(q_pos, k_pos), float("-inf"))
        return AttentionPositions(mask=bias)


def alibi_slopes(n_heads: int) -> Tensor:
    """Geometric slopes 2^(-8i/n); for a head count that is not a power of two, the slopes of
    the nearest lower power of two plus every other slope of the next one up."""

    def powers(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    lower = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(lower) + powers(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "none": PositionEncoding,
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "rope": RotaryPositions,
    "alibi": AlibiPositions,
}


def build_position_encoding(config: ModelConfig) -> PositionEncoding:
    return POSITION_ENCODINGS[config.pos_encoding](config)
