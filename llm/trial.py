"""The trial API: the contract between the search and the stack.

`run_trial(spec)` trains one model briefly, evaluates it and measures its speed. It is
a pure function of its inputs and seed: the data arrive as arrays (trials run on Ray
workers that may be on other machines), nothing global is changed, and nothing is
written outside `spec.workdir`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llm.config import ModelConfig, TrainConfig

TrialStatus = Literal["ok", "diverged", "invalid", "failed"]

# Metrics of a TrialResult a search may use as objectives, with their natural direction.
METRIC_DIRECTIONS: dict[str, Literal["min", "max"]] = {
    "bits_per_byte": "min",
    "perplexity": "min",
    "val_loss": "min",
    "accuracy": "max",
    "train_tokens_per_s": "max",
    "decode_tokens_per_s": "max",
    "params": "min",
    "params_non_embedding": "min",
    "flops_per_token": "min",
    "peak_memory_bytes": "min",
    "wall_seconds": "min",
}


@dataclass
class TokenSplits:
    """A tokenized corpus in memory: what a trial trains and evaluates on."""

    train: np.ndarray  # 1-D token ids (uint16 or uint32)
    val: np.ndarray
    val_bytes: int  # UTF-8 bytes of the validation text, for bits per byte


@dataclass
class AdaptSpec:
    """A second stage: fine-tune on another corpus, fully (lora_rank 0) or with LoRA."""

    data: TokenSplits
    train: TrainConfig  # its budget and learning rate apply to this stage
    lora_rank: int = 0
    lora_alpha: float | None = None  # None: equal to the rank


@dataclass
class TrialSpec:
    model: ModelConfig
    train: TrainConfig
    data: TokenSplits
    seed: int = 0
    adapt: AdaptSpec | None = None
    workdir: str | None = None  # the only place the trial may write; None: writes nothing


@dataclass
class CurvePoint:
    step: int
    tokens: int
    seconds: float
    train_loss: float
    val_loss: float | None = None
    stage: Literal["pretrain", "adapt"] = "pretrain"


@dataclass
class TrialResult:
    status: TrialStatus
    val_loss: float | None = None
    perplexity: float | None = None
    bits_per_byte: float | None = None
    accuracy: float | None = None
    train_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    params: int | None = None
    params_non_embedding: int | None = None
    flops_per_token: int | None = None
    peak_memory_bytes: int | None = None
    wall_seconds: float = 0.0
    steps: int = 0
    tokens: int = 0
    device: str = "cpu"
    error: str | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    # Metrics of the pretraining stage when an adapt stage follows (then the fields
    # above describe the adapt stage's validation set).
    pretrain: dict[str, float] | None = None

    def metric(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        data = dict(data)
        data["curve"] = [CurvePoint(**p) for p in data.get("curve", [])]
        return cls(**data)
