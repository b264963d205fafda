"""A decoder-only transformer, built from one `ModelConfig`.

Pre-norm residual blocks: x + attention(norm(x)), then x + mlp(norm(x)). Variants are
small classes picked from the config by name: norms, MLPs and parametrizations here,
position encodings in `llm/positions.py`. The model knows nothing of the optimizer,
mixed precision, compilation, LoRA or distribution; the trainer applies those from outside.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from llm.config import ModelConfig, ParamCount
from llm.positions import (
    AttentionPositions,
    build_position_encoding,
    causal_mask,
    window_mask,
)


class Scale(nn.Module):
    """Multiplies by a constant."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


class StandardParametrization:
    """One init scale and one learning rate for every weight: attention scores scaled by
    1/sqrt(d_head), logits as the output head computes them."""

    # The factor of a readout's input: a readout is a layer out of the width into a size
    # that does not grow with it (the output head, a router, the kv latent's down-
    # projection). On the input, as mup's MuReadout has it, a bias is left unscaled.
    readout_multiplier = 1.0

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def attention_scale(self, qk_dim: int) -> float | None:
        """The factor of the scores q·k of `qk_dim`-wide queries; None: SDPA's 1/sqrt(qk_dim)."""
        return None

    def readout(self) -> nn.Module:
        """What a readout's input passes through first."""
        return nn.Identity()

    def init_scales(self, model: nn.Module) -> dict[str, float]:
        """Parameter name -> factor of `init_std` (1 where left out)."""
        return {}


class MuParametrization(StandardParametrization):
    """The maximal update parametrization for Adam (Tensor Programs V, Yang et al. 2022),
    in the form the `mup` package gives it, relative to the base model
    `config.mup_base()`, with m = d_model / mup_base_width:

    - matrix-like weights (both dimensions grow with width): init std × sqrt(base fan-in /
      fan-in); their Adam rate ÷ that fan-in multiplier (llm.optim);
    - vector-like weights (embeddings, norms, biases, and layers into or out of a fixed
      size): init and rate as they are;
    - a readout (out of the width into a fixed size: logits, router scores, the kv latent)
      has its input multiplied by 1/m: the tied embedding stays vector-like and the logits
      shrink instead (mup's MuSharedReadout);
    - attention scores scaled by 1/d_head, written sqrt(base d_head)/d_head.

    At its base width every factor is 1 and the model is the standard one, bit for bit.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        base = config.mup_base()
        self.readout_multiplier = base.d_model / config.d_model
        self.head_mult = config.head_dim / base.head_dim

    def attention_scale(self, qk_dim: int) -> float:
        base = qk_dim / self.head_mult
        # (base/qk)/sqrt(base), not sqrt(base)/qk: at the base width exactly 1/sqrt(qk).
        return (base / qk_dim) / math.sqrt(base)

    def readout(self) -> nn.Module:
        return Scale(self.readout_multiplier)

    def init_scales(self, model: nn.Module) -> dict[str, float]:
        return {name: mult**-0.5 for name, mult in fan_in_multipliers(model, self.config).items()}


PARAMETRIZATIONS: dict[str, type[StandardParametrization]] = {
    "standard": StandardParametrization,
    "mup": MuParametrization,
}


def parametrization(config: ModelConfig) -> StandardParametrization:
    return PARAMETRIZATIONS[config.parametrization](config)


@functools.cache
def base_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """The parameter shapes of μP's base model for `config` (built without memory)."""
    with torch.device("meta"):
        base = Transformer(config.mup_base())
    return {name: p.shape for name, p in base.named_parameters()}


def fan_in_multipliers(model: nn.Module, config: ModelConfig) -> dict[str, float]:
    """μP's width multipliers (the `mup` package's infshapes), by parameter name: each
    matrix-like parameter of `model`, one whose two dimensions both differ from the same
    parameter's in the base model, with its fan-in over the base's. Empty under the
    standard parametrization, and at the base width. A parameter the base model lacks
    (added from outside, as LoRA's adapters, whose rank does not grow) is not matrix-like."""
    if config.parametrization == "standard":
        return {}
    base = base_shapes(config)
    out = {}
    for name, p in model.named_parameters():
        base_shape = base.get(name)
        if base_shape is None or p.dim() != 2:
            continue
        if all(size != was for size, was in zip(p.shape, base_shape, strict=True)):
            out[name] = p.shape[1] / base_shape[1]
    return out


def layer_norm(config: ModelConfig) -> nn.Module:
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight: LayerNorm without centring or bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.d_model))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return RMSNormFunction.apply(x, self.weight, self.eps)
        # Without a backward to save work for, the one-call functional form is cheapest.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm with its gradient written out. Autograd's version of the formula keeps every
    intermediate (square, mean, rsqrt, two products) and walks back through each; here the
    forward saves only x and the per-row scale, and the backward is four passes:

        x̂ = x·r,  ∂w = Σ g·x̂,  ∂x = r·(g·w − x̂·mean(g·w·x̂)).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        # Half-precision inputs are summed in float32, so long rows do not lose the sum.
        accumulate = torch.promote_types(x.dtype, torch.float32)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=accumulate)
        scale = norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_().to(x.dtype)
        ctx.save_for_backward(x, weight, scale)
        return (x * scale).mul_(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, scale = ctx.saved_tensors
        x_hat = x * scale
        grad_weight = None
        if ctx.needs_input_grad[1]:  # frozen under LoRA: then skip a full pass
            grad_weight = (grad * x_hat).flatten(0, -2).sum(0)
        grad_x_hat = grad * weight
        dot = (grad_x_hat * x_hat).mean(-1, keepdim=True)
        grad_x = grad_x_hat.addcmul_(x_hat, dot, value=-1).mul_(scale)
        return grad_x, grad_weight, None


NORMS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "layernorm": layer_norm,
    "rmsnorm": RMSNorm,
}


class SwiGLU(nn.Module):
    """silu(x·W_gate) ⊙ (x·W_up), then W_down. Gate and up share one matrix multiply."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=config.bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class MixtureOfExperts(nn.Module):
    """Top-k routed experts (as in Switch Transformer and Mixtral): a linear router scores
    every expert for each token, the token goes through its k best, and their outputs are
    summed with the router's softmax probabilities renormalized over those k.

    Routing is discrete, so two auxiliary losses keep it healthy; each training forward
    leaves their weighted sum in `aux_loss` for the trainer to add:

        balance = n_experts · Σ_e f_e · P_e   (f_e: the share of routed slots expert e got,
                                               P_e: its mean router probability; 1 when even)
        z       = mean over tokens of logsumexp(router logits)²
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.k = config.experts_per_token
        self.weights = config.moe_aux_loss, config.moe_z_loss
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.router_readout = parametrization(config).readout()
        self.experts = nn.ModuleList(
            EXPERTS[config.mlp_expert](config) for _ in range(config.n_experts)
        )
        self.aux_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits = self.router(self.router_readout(flat)).float()
        probs = logits.softmax(-1)
        top, chosen = probs.topk(self.k, dim=-1)
        gates = (top / top.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if len(token):
                out.index_add_(0, token, expert(flat[token]) * gates[token, slot, None])
        if self.training:
            self.aux_loss = self._aux_loss(logits, probs, chosen)
        return out.view_as(x)

    def _aux_loss(self, logits: Tensor, probs: Tensor, chosen: Tensor) -> Tensor:
        n_experts = probs.shape[-1]
        routed = torch.bincount(chosen.flatten(), minlength=n_experts).to(probs.dtype)
        balance = n_experts * (routed / chosen.numel() * probs.mean(0)).sum()
        z = logits.logsumexp(-1).square().mean()
        return self.weights[0] * balance + self.weights[1] * z


EXPERTS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "gelu": GeluMLP}
MLPS: dict[str, type[nn.Module]] = {**EXPERTS, "moe": MixtureOfExperts}


def dropout(config: ModelConfig) -> nn.Module:
    """Dropout, or nothing at all when its rate is 0 (decoding pays per module call)."""
    return nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()


class KVCache:
    """Keys and values of every layer, pre-allocated, so decoding writes one slot per step
    instead of concatenating tensors. Every row of the batch holds the same number of
    positions (`length`).

    It holds `max_len` positions, or with sliding-window attention only the last
    `attn_window` of them: a ring buffer in which position p lives in slot p mod window, so
    memory does not grow with the length generated. Attention does not care in which order
    it reads the keys, only at which positions they are (`key_positions`).
    """

    ragged = False  # every row's keys are all its own: only causality masks them

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.max_seq_len
        self.context = config.max_seq_len
        self.slots = min(self.max_len, config.attn_window or self.max_len)
        heads, key_dim, value_dim = cached_widths(config)
        keys = (config.n_layers, batch_size, heads, self.slots, key_dim)
        values = (config.n_layers, batch_size, heads, self.slots, value_dim)
        # One allocation each, seen as a view per layer.
        self.keys = torch.zeros(keys, device=device, dtype=dtype).unbind(0)
        self.values = torch.zeros(values, device=device, dtype=dtype).unbind(0)
        self.length = 0  # positions seen so far

    def positions(self, new: int) -> tuple[Tensor, Tensor]:
        """(query positions (1, new), key positions (1, keys)) of a forward that feeds
        `new` more tokens per row."""
        if self.length + new > self.context:
            raise ValueError(
                f"sequence of {self.length + new} tokens exceeds max_seq_len {self.context}"
            )
        keys = self.key_positions(new)[None]
        return keys[:, -new:], keys

    def advance(self, new: int) -> None:
        self.length += new

    def key_positions(self, new: int) -> Tensor:
        """The positions of the keys `update` returns when `new` more arrive, in its order:
        the cached slots, then the new positions."""
        if self.length + new > self.max_len:
            raise ValueError(
                f"KV cache overflow: {self.length + new} positions, capacity {self.max_len}"
            )
        kept = torch.arange(max(0, self.length - self.slots), self.length)
        by_slot = kept[torch.argsort(kept % self.slots)]
        return torch.cat((by_slot, torch.arange(self.length, self.length + new)))

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys/values; return the cached ones followed by the new ones."""
        new, end = k.shape[2], self.length + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if end <= self.slots:  # nothing wraps: position p is slot p, and a view suffices
            keys.narrow(2, self.length, new).copy_(k)
            values.narrow(2, self.length, new).copy_(v)
            return keys.narrow(2, 0, end), values.narrow(2, 0, end)
        filled = min(self.length, self.slots)
        out = (
            torch.cat((keys.narrow(2, 0, filled), k), 2),
            torch.cat((values.narrow(2, 0, filled), v), 2),
        )
        kept = min(new, self.slots)  # only the newest positions stay in the ring
        slots = torch.arange(end - kept, end, device=k.device) % self.slots
        keys.index_copy_(2, slots, k[:, :, new - kept :])
        values.index_copy_(2, slots, v[:, :, new - kept :])
        return out


class SlotCache:
    """Keys and values of many independent sequences, one slot each, for decoding them
    together one token per step (continuous batching): each slot has its own length, and a
    slot is filled from a prefilled `KVCache` (`load`) or handed to another sequence.

    A forward runs on the first `active` slots. Each slot is a ring like `KVCache`'s (slot
    index p mod window for position p), so sliding-window models keep their small cache;
    keys past a slot's length are masked (`ragged`). Attention reads the fewest whole
    blocks of `key_block` keys that hold the longest slot: on a CPU, attention written
    out (`ragged_attention`, the operations of SDPA's math kernel) then gives each row the
    same result, to the bit, whatever the other rows hold and however many masked blocks
    follow its own (measured with MKL on AVX-512 for head widths 4 to 128: softmax sums
    16 lanes at a time, and the weighted sum of values runs over 2 KB blocks, 512 /
    head_dim keys; a partial block is summed in another order).
    So a sequence decodes the same alone or inside any batch.
    """

    ragged = True

    def __init__(
        self,
        config: ModelConfig,
        slots: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.context = config.max_seq_len
        self.ring = min(self.context, config.attn_window or self.context)
        self.key_block = max(16, 512 // config.head_dim)
        width = -(-self.ring // self.key_block) * self.key_block
        heads, key_dim, value_dim = cached_widths(config)
        keys = (config.n_layers, slots, heads, width, key_dim)
        values = (config.n_layers, slots, heads, width, value_dim)
        self.keys = torch.zeros(keys, device=device, dtype=dtype).unbind(0)
        self.values = torch.zeros(values, device=device, dtype=dtype).unbind(0)
        self.lengths = [0] * slots  # positions each slot holds
        self.active = 0
        self.device = torch.device(device)
        self.read = 0  # keys attention reads in this forward
        self.written = torch.zeros(0, dtype=torch.long)  # the index of each row's new key

    def positions(self, new: int) -> tuple[Tensor, Tensor]:
        """(query positions (active, 1), key positions (active, keys)); an unused key
        (past a slot's length, or outside its ring) is at position -1."""
        if new != 1:
            raise ValueError(f"a SlotCache decodes one token per row (got {new})")
        lengths = self.lengths[: self.active]
        if max(lengths) >= self.context:
            raise ValueError(f"sequence of {max(lengths) + 1} tokens exceeds max_seq_len")
        block = self.key_block
        self.read = min(self.keys[0].shape[2], -(-(max(lengths) + 1) // block) * block)
        last = torch.tensor(lengths, device=self.device)[:, None]  # the new token's position
        index = torch.arange(self.read, device=self.device)
        held = last - (last - index) % self.ring  # the newest position stored at each index
        k_pos = torch.where((index < self.ring) & (held >= 0), held, -1)
        self.written = (last % self.ring)[:, :, None, None]  # (active, 1, 1, 1)
        return last, k_pos

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store each row's new key/value in its slot; return the keys attention reads."""
        keys, values = self.keys[layer][: self.active], self.values[layer][: self.active]
        keys.scatter_(2, self.written.expand(k.shape), k)
        values.scatter_(2, self.written.expand(v.shape), v)
        return keys[:, :, : self.read], values[:, :, : self.read]

    def advance(self, new: int) -> None:
        for slot in range(self.active):
            self.lengths[slot] += new

    def load(self, slot: int, cache: KVCache) -> None:
        """Fill `slot` with the one sequence `cache` holds (its ring has the same layout)."""
        held = min(cache.length, cache.slots)
        for layer in range(len(self.keys)):
            self.keys[layer][slot, :, :held] = cache.keys[layer][0, :, :held]
            self.values[layer][slot, :, :held] = cache.values[layer][0, :, :held]
        self.lengths[slot] = cache.length

    def move(self, source: int, target: int) -> None:
        """Copy the sequence in slot `source` to slot `target`."""
        held = min(self.lengths[source], self.ring)
        for layer in range(len(self.keys)):
            self.keys[layer][target, :, :held] = self.keys[layer][source, :, :held]
            self.values[layer][target, :, :held] = self.values[layer][source, :, :held]
        self.lengths[target] = self.lengths[source]


AttentionCache = KVCache | SlotCache


def ragged_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None
) -> Tensor:
    """Attention over a SlotCache's keys, written out: softmax(q·kᵀ·scale + mask)·v, for
    queries (B, heads, T, ·) and keys and values (B, groups, S, ·) with heads a multiple of
    groups (grouped-query heads read their group's keys in place, uncopied). On a CPU,
    SDPA's fused kernel gives a row a result that depends on the thread that computed it,
    and its math kernel, which is batch-invariant, is about twice as slow as these three
    operations, each of which treats every row on its own (see SlotCache). `scale` None is
    SDPA's default, 1/sqrt(the query's width)."""
    B, H, T, width = q.shape
    groups = k.shape[1]
    scores = torch.matmul(q.reshape(B, groups, H // groups * T, -1), k.transpose(-1, -2))
    scores = scores.mul_(width**-0.5 if scale is None else scale).view(B, H, T, -1)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill_(~mask, float("-inf"))
    elif mask is not None:
        scores = scores.add_(mask)
    weights = scores.softmax(-1, dtype=torch.float32).to(v.dtype)
    out = torch.matmul(weights.view(B, groups, H // groups * T, -1), v)
    return out.view(B, H, T, -1)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: AttentionPositions,
    cache: AttentionCache | None,
    scale: float | None,
    dropout_p: float,
) -> Tensor:
    """Attention of queries (B, heads, T, ·) over keys and values (B, groups, S, ·):
    written out over a SlotCache's keys (`ragged_attention`), else SDPA, with grouped
    heads where there are fewer groups than heads."""
    if cache is not None and cache.ragged:
        return ragged_attention(q, k, v, positions.mask, scale)
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=positions.mask,
        dropout_p=dropout_p,
        is_causal=positions.is_causal,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )


def cached_widths(config: ModelConfig) -> tuple[int, int, int]:
    """(heads, key width, value width) of what attention caches per position and layer:
    keys and values, or for latent attention its latent (as the key) and its shared
    rotary key (as the value; none without rope)."""
    if config.attention == "mla":
        rotary = config.head_dim if config.pos_encoding == "rope" else 0
        return 1, config.kv_latent_dim, rotary
    return config.kv_heads, config.head_dim, config.head_dim


class Attention(nn.Module):
    """Causal multi-head attention with grouped key/value heads (GQA; MQA when n_kv_heads = 1)."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.kv_heads = config.n_heads, config.kv_heads
        self.head_dim = config.head_dim
        qkv_out = (self.n_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_out, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.scale = parametrization(config).attention_scale(self.head_dim)

    def forward(
        self, x: Tensor, positions: AttentionPositions, cache: AttentionCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        H, KV = self.n_heads, self.kv_heads
        qkv = self.qkv(x).view(B, T, H + 2 * KV, self.head_dim)
        # Queries and keys are rotated together: one pass over both instead of two.
        qk = positions.rotate(qkv[:, :, : H + KV])
        q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)
        v = qkv[:, :, H + KV :].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        y = attend(q, k, v, positions, cache, self.scale, dropout_p)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2): each token's keys and values are
    expanded from one small latent, c = x·W_down, as k = c·W_k and v = c·W_v, so a cache
    of the latent alone serves every head. RoPE cannot pass through that expansion, so
    with rope each head's query has a second, rotated part that meets one rotated key
    shared by all heads:

        score = (q_content·k_content + q_rotary·k_rotary) / sqrt(2·head_dim)

    (Queries are not compressed, as DeepSeek-V2's are: at these sizes that saves little.)
    """

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.latent = config.kv_latent_dim
        self.rotary = config.head_dim if config.pos_encoding == "rope" else 0
        width = config.n_heads * config.head_dim
        self.q = nn.Linear(
            config.d_model, config.n_heads * (self.head_dim + self.rotary), config.bias
        )
        self.kv_down = nn.Linear(config.d_model, self.latent + self.rotary, bias=config.bias)
        self.kv_readout = parametrization(config).readout()
        self.k_up = nn.Linear(self.latent, width, bias=config.bias)
        self.v_up = nn.Linear(self.latent, width, bias=config.bias)
        self.proj = nn.Linear(width, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.scale = parametrization(config).attention_scale(self.head_dim + self.rotary)

    def forward(
        self, x: Tensor, positions: AttentionPositions, cache: AttentionCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q = self.q(x).view(B, T, H, hd + self.rotary)
        down = self.kv_down(self.kv_readout(x))
        latent = down[..., : self.latent][:, None]  # (B, 1, T, latent)
        k_rotary = positions.rotate(down[..., self.latent :][:, :, None]).transpose(1, 2)
        if cache is not None:
            latent, k_rotary = cache.update(self.layer, latent, k_rotary)
        S = latent.shape[2]
        k = self.k_up(latent[:, 0]).view(B, S, H, hd).transpose(1, 2)
        v = self.v_up(latent[:, 0]).view(B, S, H, hd).transpose(1, 2)
        if self.rotary:
            q = torch.cat((q[..., :hd], positions.rotate(q[..., hd:])), dim=-1)
            k = torch.cat((k, k_rotary.expand(B, H, S, hd)), dim=-1)
        dropout_p = self.dropout if self.training else 0.0
        y = attend(q.transpose(1, 2), k, v, positions, cache, self.scale, dropout_p)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * hd))


ATTENTIONS: dict[str, type[nn.Module]] = {"mha": Attention, "mla": LatentAttention}


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = NORMS[config.norm](config)
        self.attn = ATTENTIONS[config.attention](config, layer)
        self.mlp_norm = NORMS[config.norm](config)
        self.mlp = MLPS[config.mlp](config)
        self.dropout = dropout(config)

    def forward(
        self, x: Tensor, positions: AttentionPositions, cache: AttentionCache | None
    ) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), positions, cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        assert config.vocab_size is not None  # validate() guarantees it
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = build_position_encoding(config)
        self.dropout = dropout(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = NORMS[config.norm](config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.logit_readout = parametrization(config).readout()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, times the parametrization's factor; the projections
        that write into the residual stream are scaled by 1/sqrt(2·n_layers) so the stream's
        variance does not grow with depth."""
        std = self.config.init_std
        widths = parametrization(self.config).init_scales(self)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("attn.proj", ".down"))
                scale = 1 / math.sqrt(2 * self.config.n_layers) if residual else 1.0
                scale *= widths.get(f"{name}.weight", 1.0)
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        tokens: Tensor,
        cache: AttentionCache | None = None,
        *,
        last_only: bool = False,
        pad: Tensor | None = None,
    ) -> Tensor:
        """Logits for every position of `tokens` (B, T), or only the last with `last_only`.

        With a cache, `tokens` continue the sequences the cache holds: their positions start
        where each row's sequence ends, and the cache is advanced past them. `pad` (B,)
        counts the padding tokens on the left of each row (of the whole sequence, cached part
        included); those are never attended to, and each row's real tokens count their
        positions from 0.
        """
        T = tokens.shape[1]
        if cache is None:
            if self.config.max_seq_len < T:
                raise ValueError(
                    f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}"
                )
            q_pos = k_pos = torch.arange(T, device=tokens.device)[None]
        else:
            q_pos, k_pos = (pos.to(tokens.device) for pos in cache.positions(T))
        if pad is not None:
            q_pos, k_pos = q_pos - pad[:, None], k_pos - pad[:, None]
        masked = pad is not None or (cache is not None and cache.ragged)
        positions = self.attention_positions(q_pos, k_pos, padded=masked)
        x = self.dropout(self.positions.embed(self.embed(tokens), q_pos))
        for block in self.blocks:
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(block, x, positions, cache, use_reentrant=False)
            else:
                x = block(x, positions, cache)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.logit_readout(self.final_norm(x)))

    def attention_positions(
        self, q_pos: Tensor, k_pos: Tensor, *, padded: bool = False
    ) -> AttentionPositions:
        """What attention needs for queries at `q_pos` over keys at `k_pos`, both (B|1, ·)."""
        positions = self.positions.attention_inputs(q_pos, k_pos)
        if self.config.attn_window is not None:
            positions.restrict(window_mask(q_pos, k_pos, self.config.attn_window))
        elif positions.mask is None and (padded or q_pos.shape[1] > 1):
            # Plain causal attention lets SDPA use its fused kernels; padding, or a query
            # block that starts part-way through a cache, needs the mask spelled out.
            if q_pos.shape[1] == k_pos.shape[1] and not padded:
                positions.is_causal = True
            else:
                positions.mask = causal_mask(q_pos, k_pos)
        return positions

    def aux_loss(self) -> Tensor | float:
        """The weighted auxiliary losses of the last training forward (a mixture of
        experts' load balancing); 0 for a dense model."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MixtureOfExperts)]
        return sum((loss for loss in losses if loss is not None), 0.0)

    def param_count(self) -> ParamCount:
        """Total, non-embedding and active parameters, tied weights counted once."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.embed.weight.numel()
        embedding += sum(p.numel() for p in self.positions.parameters())
        if not self.config.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        skipped = 0
        for moe in (m for m in self.modules() if isinstance(m, MixtureOfExperts)):
            idle = len(moe.experts) - moe.k
            skipped += idle * sum(p.numel() for p in moe.experts[0].parameters())
        return ParamCount(total, total - embedding, total - skipped)
