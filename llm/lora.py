"""LoRA: fine-tune a frozen model through low-rank updates of chosen linear layers.

Each targeted `nn.Linear` is replaced in place by a `LoRALinear` that keeps the original
layer and adds x·Aᵀ·Bᵀ·(alpha/rank). B starts at zero, so the wrapped model computes
exactly what the base model did until training moves it. The model classes know nothing
of this: layers are picked by the suffix of their module path, as peft's target_modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llm.atomic import atomic_dir, write_json
from llm.config import ModelConfig, from_dict
from llm.errors import CheckpointError, ConfigError
from llm.quant import NF4Linear

ATTENTION_TARGETS = ("attn.qkv", "attn.proj")
MLP_TARGETS = ("mlp.gate_up", "mlp.up", "mlp.down")  # swiglu has gate_up, gelu has up
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class LoRAConfig:
    """Which layers get adapters, and their size. Rank 0 means full fine-tuning."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    rank: int
    alpha: float | None = None  # None: equal to the rank, so the scaling is 1
    dropout: float = 0.0
    targets: tuple[str, ...] = ATTENTION_TARGETS  # module-path suffixes of nn.Linear layers

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 0:
            problems.append(f"rank must not be negative (got {self.rank})")
        if self.alpha is not None and not self.alpha > 0:
            problems.append(f"alpha must be positive (got {self.alpha})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.rank > 0 and not all(self.targets):
            problems.append(f"targets must be non-empty module-path suffixes (got {self.targets})")
        if problems:
            raise ConfigError("invalid LoRA config: " + "; ".join(problems))

    @property
    def scaling(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update of its weight."""

    def __init__(
        self, base: nn.Linear | NF4Linear, rank: int, scaling: float, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scaling = scaling
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        # The init nn.Linear gives its own weight: A spreads the input, B = 0 silences it.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scaling

    def delta_weight(self) -> Tensor:
        return (self.lora_b @ self.lora_a) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight, so inference costs one matrix multiply.
        A 4-bit base is dequantized first: the merged weight is no longer on its grid."""
        if isinstance(self.base, NF4Linear):
            self.base = self.base.dequantized()
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


def matches(path: str, targets: tuple[str, ...]) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: M, config: LoRAConfig) -> M:
    """Wrap the targeted linear layers of `model` in place and freeze everything else.

    Rank 0 wraps nothing and leaves every parameter trainable (full fine-tuning).
    """
    if lora_layers(model):
        raise ConfigError("the model already has LoRA adapters")
    if config.rank == 0:
        model.requires_grad_(True)
        return model
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and matches(name, config.targets)
    ]
    if not names:
        raise ConfigError(f"LoRA targets {list(config.targets)} match no linear layer of the model")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name in names:
        if uses[id(model.get_submodule(name).weight)] > 1:
            # Merging would silently change the other user of the weight too.
            raise ConfigError(
                f"LoRA target {name} shares its weight with another layer (tied embeddings?)"
            )
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, LoRALinear(base, config.rank, config.scaling, config.dropout))
    return model


def merge_lora(model: M) -> M:
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def fold_lora(model: M) -> M:
    """Merge every adapter and put each layer's base back in its place: the model is then
    a plain model again (its state dict loads into a fresh one of the same config)."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)
    return model


def unmerge_lora(model: M) -> M:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only, under their names in the model's state dict."""
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.endswith((".lora_a", ".lora_b"))
    }


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear layer of `Transformer(config)`, by module path."""
    d, f = config.d_model, config.d_ff
    layer = _attention_shapes(config)
    if config.mlp == "moe":
        layer["mlp.router"] = (d, config.n_experts)
        expert = _mlp_shapes(config.mlp_expert, d, f)
        for e in range(config.n_experts):
            layer |= {f"mlp.experts.{e}.{name}": shape for name, shape in expert.items()}
    else:
        layer |= {f"mlp.{name}": shape for name, shape in _mlp_shapes(config.mlp, d, f).items()}
    shapes = {f"blocks.{i}.{name}": s for i in range(config.n_layers) for name, s in layer.items()}
    shapes["lm_head"] = (d, config.vocab_size or 0)
    return shapes


def _attention_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    d, hd, heads = config.d_model, config.head_dim, config.n_heads
    if config.attention == "mha":
        return {"attn.qkv": (d, (heads + 2 * config.kv_heads) * hd), "attn.proj": (d, d)}
    rotary = hd if config.pos_encoding == "rope" else 0
    latent = config.kv_latent_dim
    return {
        "attn.q": (d, heads * (hd + rotary)),
        "attn.kv_down": (d, latent + rotary),
        "attn.k_up": (latent, heads * hd),
        "attn.v_up": (latent, heads * hd),
        "attn.proj": (heads * hd, d),
    }


def _mlp_shapes(kind: str, d: int, f: int) -> dict[str, tuple[int, int]]:
    up = {"gate_up": (d, 2 * f)} if kind == "swiglu" else {"up": (d, f)}
    return {**up, "down": (f, d)}


def lora_param_count(model_config: ModelConfig, lora_config: LoRAConfig) -> int:
    """Adapter parameters `apply_lora` adds to `Transformer(model_config)`: rank·(in + out)
    for every targeted linear layer."""
    if lora_config.rank == 0:
        return 0
    sizes = [
        lora_config.rank * (fan_in + fan_out)
        for name, (fan_in, fan_out) in linear_shapes(model_config).items()
        if matches(name, lora_config.targets)
    ]
    if not sizes:
        raise ConfigError(
            f"LoRA targets {list(lora_config.targets)} match no linear layer of the model"
        )
    return sum(sizes)


def adapter_mismatch(model: nn.Module, config: LoRAConfig) -> str | None:
    """Why the model's adapters cannot be the ones `config` describes, or None."""
    for name, layer in lora_layers(model).items():
        if layer.rank != config.rank or not math.isclose(layer.scaling, config.scaling):
            return (
                f"layer {name} has rank {layer.rank} and scaling {layer.scaling:g}, "
                f"the config rank {config.rank} and scaling {config.scaling:g}"
            )
    return None


def save_adapter(directory: str | Path, model: nn.Module, config: LoRAConfig) -> None:
    """Write the adapter weights (safetensors) and its config (JSON) into `directory`."""
    tensors = {name: t.detach().contiguous() for name, t in lora_state_dict(model).items()}
    if not tensors:
        raise ConfigError("the model has no LoRA adapters to save")
    mismatch = adapter_mismatch(model, config)
    if mismatch:
        raise ConfigError(f"LoRA config does not describe the model's adapters: {mismatch}")
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        write_json(tmp / ADAPTER_CONFIG, dataclasses.asdict(config))


def read_adapter_config(directory: str | Path) -> LoRAConfig:
    path = Path(directory) / ADAPTER_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable adapter config: {err}") from None
    try:
        return from_dict(LoRAConfig, data, str(path))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def load_adapter(directory: str | Path, model: M) -> M:
    """Load an adapter saved by `save_adapter` into `model`, applying LoRA with the saved
    config first unless the model already has matching adapters."""
    config = read_adapter_config(directory)
    path = Path(directory) / ADAPTER_WEIGHTS
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: unreadable adapter weights: {err}") from None
    if not lora_layers(model):
        try:
            apply_lora(model, config)
        except ConfigError as err:
            raise CheckpointError(f"{directory}: adapter does not fit the model: {err}") from None
    mismatch = adapter_mismatch(model, config)
    if mismatch:
        raise CheckpointError(f"{directory}: adapter does not fit the model: {mismatch}")
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("unmerge the model's LoRA adapters before loading others")
    params = dict(model.named_parameters())
    expected = set(lora_state_dict(model))
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        unexpected = sorted(set(tensors) - expected)[:3]
        raise CheckpointError(
            f"{path}: adapter weights do not fit the model "
            f"(missing {missing}, unexpected {unexpected})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != params[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return model
