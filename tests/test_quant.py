from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm.config import ModelConfig
from llm.errors import ConfigError
from llm.lora import MLP_TARGETS, LoRAConfig, apply_lora, lora_layers, merge_lora
from llm.model import Transformer
from llm.quant import BLOCK, NF4Linear, dequantize_nf4, nf4_levels, quantize_frozen, quantize_nf4


def small_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=64, n_layers=2, d_model=64, n_heads=4, d_ff=128)
    return Transformer(config)


def test_the_levels_run_from_minus_one_to_one_through_an_exact_zero() -> None:
    levels = nf4_levels()
    assert len(levels) == 16
    assert levels[0] == -1 and levels[-1] == 1 and 0 in levels.tolist()
    assert (levels.diff() > 0).all()
    # Normal quantiles crowd near zero: the steps widen towards the ends.
    assert levels[8] - levels[7] < levels[-1] - levels[-2]


def usage_entropy(weight: torch.Tensor, levels: torch.Tensor) -> float:
    blocks = weight.reshape(-1, BLOCK)
    scaled = blocks / blocks.abs().amax(1, keepdim=True)
    index = torch.bucketize(scaled, (levels[1:] + levels[:-1]) / 2).flatten()
    share = torch.bincount(index, minlength=16).float() / index.numel()
    return float(-(share[share > 0] * share[share > 0].log2()).sum())


def test_normal_weights_use_the_levels_more_evenly_than_a_uniform_grid() -> None:
    torch.manual_seed(0)
    weight = torch.randn(256, 256)
    packed, _ = quantize_nf4(weight)
    index = torch.stack((packed >> 4, packed & 0xF), 1).flatten().long()
    share = torch.bincount(index, minlength=16).float() / index.numel()
    assert share.min() > 0.01  # every level in use (the ends by each block's maximum)
    nf4 = usage_entropy(weight, nf4_levels())
    uniform = usage_entropy(weight, torch.linspace(-1, 1, 16))
    assert nf4 > uniform + 0.2  # bits of information per stored 4-bit index
    assert nf4 > 3.7


def test_a_round_trip_stays_within_half_a_level_step_of_every_weight() -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 128) * 0.02
    packed, absmax = quantize_nf4(weight)
    assert packed.dtype == torch.uint8 and packed.numel() == weight.numel() // 2
    back = dequantize_nf4(packed, absmax, weight.shape, weight.dtype)
    widest = nf4_levels().diff().max() / 2
    error = (back - weight).abs().reshape(-1, BLOCK) / absmax[:, None]
    assert error.max() <= widest + 1e-6
    assert (back - weight).norm() / weight.norm() < 0.12


def test_the_frozen_base_takes_under_thirty_percent_of_its_float32_memory() -> None:
    model = small_model().requires_grad_(False)
    linear_bytes = sum(
        m.weight.numel() * 4
        for m in model.modules()
        if type(m) is nn.Linear and m is not model.lm_head
    )
    assert quantize_frozen(model) == 8  # qkv, proj, gate_up, down of 2 blocks; not the tied head
    quantized = [m for m in model.modules() if isinstance(m, NF4Linear)]
    stored = sum(m.packed.numel() + m.absmax.numel() * 4 for m in quantized)
    assert stored <= 0.3 * linear_bytes
    assert stored / linear_bytes == pytest.approx((4 + 32 / BLOCK) / 32)
    assert model.lm_head.weight is model.embed.weight  # tied: left alone


def test_a_quantized_model_gives_nearly_the_same_logits() -> None:
    model = small_model().eval().requires_grad_(False)
    tokens = torch.randint(0, 64, (4, 32))
    with torch.no_grad():
        before = model(tokens)
        quantize_frozen(model)
        after = model(tokens)
    # Stated tolerance: relative error of the logits under 10%, the same top token for
    # at least 90% of positions.
    assert (after - before).norm() / before.norm() < 0.1
    assert (after.argmax(-1) == before.argmax(-1)).float().mean() >= 0.9


def lora_losses(quantize: bool, steps: int = 60) -> tuple[list[float], Transformer]:
    model = small_model()
    apply_lora(model, LoRAConfig(rank=4, targets=("attn.qkv", "attn.proj", *MLP_TARGETS)))
    if quantize:
        quantize_frozen(model)
    pattern = (torch.arange(33) % 5 + 3).repeat(8, 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(pattern[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), pattern[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, model


def test_lora_on_a_four_bit_base_learns_as_on_a_float_one_and_leaves_the_base_alone() -> None:
    reference, _ = lora_losses(quantize=False)
    before = [m.packed.clone() for m in quantize_frozen_copy()]
    losses, model = lora_losses(quantize=True)
    assert losses[-1] < 0.75 * losses[0]
    assert losses[-1] == pytest.approx(reference[-1], rel=0.05)
    bases = [layer.base for layer in lora_layers(model).values()]
    assert all(isinstance(base, NF4Linear) for base in bases)
    after = [m.packed for m in model.modules() if isinstance(m, NF4Linear)]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


def quantize_frozen_copy() -> list[NF4Linear]:
    """The NF4 layers of the same model quantized without training."""
    model = small_model()
    apply_lora(model, LoRAConfig(rank=4, targets=("attn.qkv", "attn.proj", *MLP_TARGETS)))
    quantize_frozen(model)
    return [m for m in model.modules() if isinstance(m, NF4Linear)]


def test_merging_an_adapter_into_a_four_bit_base_dequantizes_it() -> None:
    model = small_model().eval()
    apply_lora(model, LoRAConfig(rank=4))
    quantize_frozen(model)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_b, std=0.05)
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        unmerged = model(tokens)
        merge_lora(model)
        merged = model(tokens)
    assert all(type(layer.base) is nn.Linear for layer in lora_layers(model).values())
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_an_unknown_quantization_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown quantization 'int3'"):
        quantize_frozen(small_model(), "int3")
