"""Where a model runs: the device `auto` picks, and the mixed precision each device
supports. Training, serving and evaluation all choose through here."""

from __future__ import annotations

import torch

from llm.errors import ConfigError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; any other name must be available.
    Errors name `setting`, where the user wrote the device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting}: unknown device {name!r}") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ConfigError(f"{setting}: {name!r} is not available on this machine")
    return device


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None: full float32) and whether losses need a GradScaler.

    `auto` is bf16 on CUDA where supported, else fp16 with loss scaling, and float32
    elsewhere: CPU and MPS autocast rarely pay off, but asking for bf16 there works.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU does not support bf16; use fp16")
        return torch.bfloat16, False
    if precision == "fp16":
        return torch.float16, True
    return None, False
