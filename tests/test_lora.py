from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm.config import ModelConfig
from llm.errors import CheckpointError, ConfigError
from llm.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MLP_TARGETS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    linear_shapes,
    load_adapter,
    lora_layers,
    lora_param_count,
    lora_state_dict,
    merge_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)
from llm.model import Transformer

ATTN_AND_MLP = ("attn.qkv", "attn.proj", *MLP_TARGETS)


def tiny_config(**overrides: object) -> ModelConfig:
    base = {"vocab_size": 64, "n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64}
    return ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]


def tiny_model(seed: int = 0, **overrides: object) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(**overrides))


def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every lora_b non-zero values, so the adapters change the output."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=rng) * 0.1)


def tokens(seed: int = 0, length: int = 12) -> torch.Tensor:
    return torch.randint(64, (2, length), generator=torch.Generator().manual_seed(seed))


def test_fresh_adapters_leave_the_model_unchanged() -> None:
    model = tiny_model()
    x = tokens()
    before = model(x)
    apply_lora(model, LoRAConfig(rank=4, targets=ATTN_AND_MLP))
    torch.testing.assert_close(model(x), before)


def test_merged_and_unmerged_give_the_same_logits() -> None:
    model = apply_lora(tiny_model(), LoRAConfig(rank=4, alpha=8.0, targets=ATTN_AND_MLP))
    randomize_adapters(model)
    x = tokens()
    unmerged = model(x)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)


def test_adapters_change_the_output_and_unmerge_restores_base_weights() -> None:
    model = tiny_model()
    x = tokens()
    base_logits = model(x)
    base_weights = {name: p.clone() for name, p in model.named_parameters()}
    apply_lora(model, LoRAConfig(rank=4, targets=ATTN_AND_MLP))
    randomize_adapters(model)
    assert not torch.allclose(model(x), base_logits, atol=1e-4)
    merge_lora(model)
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear)
    assert not torch.allclose(qkv.base.weight, base_weights["blocks.0.attn.qkv.weight"])
    unmerge_lora(model)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, base_weights[f"{name}.weight"])


def test_only_adapter_weights_get_gradients() -> None:
    model = apply_lora(tiny_model(), LoRAConfig(rank=4, targets=ATTN_AND_MLP))
    x = tokens()
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        if name.endswith((".lora_a", ".lora_b")):
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # lora_b starts at zero, so only it sees a non-zero gradient on the first step.
    assert any(layer.lora_b.grad.abs().sum() > 0 for layer in lora_layers(model).values())


@pytest.mark.parametrize(
    ("overrides", "targets"),
    [
        ({}, ("attn.qkv", "attn.proj")),
        ({"n_kv_heads": 1}, ("attn.qkv", "attn.proj")),
        ({"n_kv_heads": 2, "mlp": "swiglu"}, ("attn.qkv", "attn.proj", *MLP_TARGETS)),
        ({"n_kv_heads": 2, "mlp": "gelu"}, ("attn.qkv", "attn.proj", *MLP_TARGETS)),
        ({"mlp": "gelu", "bias": True}, MLP_TARGETS),
        ({"tie_embeddings": False}, ("attn.qkv", "lm_head")),
        ({"n_layers": 3}, ("blocks.1.attn.proj",)),
    ],
)
def test_trainable_count_equals_the_analytic_count(
    overrides: dict[str, object], targets: tuple[str, ...]
) -> None:
    config = LoRAConfig(rank=3, targets=targets)
    model = apply_lora(tiny_model(**overrides), config)
    expected = lora_param_count(tiny_config(**overrides), config)
    assert expected > 0
    assert trainable_parameters(model) == expected
    assert sum(t.numel() for t in lora_state_dict(model).values()) == expected


@pytest.mark.parametrize(
    ("mlp", "attention"), [("swiglu", "mha"), ("gelu", "mha"), ("moe", "mha"), ("swiglu", "mla")]
)
def test_linear_shapes_describe_the_built_model(mlp: str, attention: str) -> None:
    config = tiny_config(
        mlp=mlp, n_kv_heads=2, tie_embeddings=False, n_experts=3, attention=attention
    )
    built = {
        name: (m.in_features, m.out_features)
        for name, m in Transformer(config).named_modules()
        if isinstance(m, nn.Linear)
    }
    assert linear_shapes(config) == built


def test_rank_zero_is_full_fine_tuning() -> None:
    model = tiny_model()
    model.requires_grad_(False)
    apply_lora(model, LoRAConfig(rank=0))
    assert not lora_layers(model)
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters())
    assert lora_param_count(model.config, LoRAConfig(rank=0)) == 0


def test_targets_that_match_nothing_are_an_error() -> None:
    with pytest.raises(ConfigError, match=r"attn\.nope"):
        apply_lora(tiny_model(), LoRAConfig(rank=2, targets=("attn.nope",)))
    with pytest.raises(ConfigError, match=r"attn\.nope"):
        lora_param_count(tiny_config(), LoRAConfig(rank=2, targets=("attn.nope",)))


def test_suffix_matching_is_by_whole_path_components() -> None:
    # "qkv" matches blocks.i.attn.qkv, but "kv" must not.
    with pytest.raises(ConfigError):
        apply_lora(tiny_model(), LoRAConfig(rank=2, targets=("kv",)))
    model = apply_lora(tiny_model(), LoRAConfig(rank=2, targets=("qkv",)))
    assert sorted(lora_layers(model)) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]


def test_applying_twice_and_tied_targets_are_errors() -> None:
    model = apply_lora(tiny_model(), LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="already"):
        apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="lm_head"):
        apply_lora(tiny_model(tie_embeddings=True), LoRAConfig(rank=2, targets=("lm_head",)))


def test_invalid_config_names_every_problem() -> None:
    with pytest.raises(ConfigError, match=r"rank.*-1.*dropout.*1\.5"):
        LoRAConfig(rank=-1, dropout=1.5)


def test_adapter_round_trip_in_a_fresh_model(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = LoRAConfig(rank=4, alpha=2.0, targets=ATTN_AND_MLP)
    apply_lora(model, config)
    randomize_adapters(model)
    x = tokens()
    expected = model(x)
    save_adapter(tmp_path / "adapter", model, config)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        ADAPTER_CONFIG,
        ADAPTER_WEIGHTS,
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary leftovers

    fresh = tiny_model(seed=4)
    fresh.load_state_dict(base_state)
    load_adapter(tmp_path / "adapter", fresh)
    torch.testing.assert_close(fresh(x), expected)
    assert trainable_parameters(fresh) == lora_param_count(fresh.config, config)


def test_loading_into_a_model_with_matching_adapters(tmp_path: Path) -> None:
    config = LoRAConfig(rank=2)
    model = apply_lora(tiny_model(), config)
    randomize_adapters(model)
    save_adapter(tmp_path / "a", model, config)
    other = apply_lora(tiny_model(), config)
    load_adapter(tmp_path / "a", other)
    for name, tensor in lora_state_dict(model).items():
        torch.testing.assert_close(lora_state_dict(other)[name], tensor)
    with pytest.raises(CheckpointError, match="rank"):
        load_adapter(tmp_path / "a", apply_lora(tiny_model(), LoRAConfig(rank=3)))


def test_save_rejects_a_config_that_does_not_describe_the_model(tmp_path: Path) -> None:
    model = apply_lora(tiny_model(), LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="rank"):
        save_adapter(tmp_path / "a", model, LoRAConfig(rank=4))
    with pytest.raises(ConfigError, match="no LoRA"):
        save_adapter(tmp_path / "b", tiny_model(), LoRAConfig(rank=2))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / ADAPTER_CONFIG).unlink(), "no such file"),
        (lambda d: (d / ADAPTER_WEIGHTS).unlink(), "no such file"),
        (lambda d: (d / ADAPTER_CONFIG).write_text("{not json"), "unreadable"),
        (lambda d: (d / ADAPTER_CONFIG).write_text('{"rank": "x"}'), "rank"),
        (lambda d: (d / ADAPTER_WEIGHTS).write_bytes(b"\x08garbage"), "unreadable"),
    ],
)
def test_missing_or_corrupt_adapter_files(
    tmp_path: Path, damage: Callable[[Path], object], message: str
) -> None:
    config = LoRAConfig(rank=2)
    save_adapter(tmp_path / "a", apply_lora(tiny_model(), config), config)
    damage(tmp_path / "a")
    with pytest.raises(CheckpointError, match=message):
        load_adapter(tmp_path / "a", tiny_model())


def test_adapter_for_another_shape_is_a_checkpoint_error(tmp_path: Path) -> None:
    config = LoRAConfig(rank=2)
    save_adapter(tmp_path / "a", apply_lora(tiny_model(), config), config)
    with pytest.raises(CheckpointError, match="shape"):
        load_adapter(tmp_path / "a", tiny_model(d_model=48))
    with pytest.raises(CheckpointError, match="missing"):
        load_adapter(tmp_path / "a", tiny_model(n_layers=3))


def test_a_few_lora_steps_reduce_the_loss() -> None:
    # A larger init stands in for pretrained embeddings, which LoRA leaves frozen.
    model = apply_lora(tiny_model(init_std=0.2), LoRAConfig(rank=4, targets=ATTN_AND_MLP))
    x = torch.arange(16).repeat(2, 2)  # a short pattern, repeated
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)

    def loss_now() -> torch.Tensor:
        return F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())

    first = loss_now().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
    assert loss_now().item() < 0.5 * first
