"""The optimizer, the learning-rate schedule and the budget: AdamW with weight decay on
matrices only (and μP's per-matrix rates under that parametrization), linear warmup, then a
cosine decay or warmup-stable-decay (wsd), over a step, token or time budget, whichever is
reached first."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from llm.checkpoint import TrainState
from llm.config import TrainConfig
from llm.errors import ConfigError
from llm.model import Transformer, fan_in_multipliers

BudgetReason = Literal["max_steps", "max_tokens", "max_seconds"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in groups: matrices decay; norms, biases and embeddings (of any
    nn.Embedding, tied output heads included) do not. Under μP each matrix-like weight's
    group has the rate multiplier `lr_scale` = 1 / its fan-in multiplier (Tensor Programs
    V's Adam rule), and a weight decay larger by that multiplier: AdamW decays by rate ×
    weight_decay, which stays as it was (as the `mup` package's MuAdamW does)."""
    embeddings = {
        id(p)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for p in module.parameters()
    }
    widths = fan_in_multipliers(model, model.config) if isinstance(model, Transformer) else {}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = p.dim() >= 2 and id(p) not in embeddings
            groups.setdefault((decays, widths.get(name, 1.0)), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay * width if decays else 0.0,
            "lr_scale": 1 / width,
        }
        for (decays, width), params in sorted(groups.items(), key=lambda item: not item[0][0])
    ]


class ScaledAdamW(torch.optim.AdamW):
    """AdamW whose groups each step at their rate times their `lr_scale`, so that a
    schedule setting every group's `lr` to one rate keeps μP's multipliers."""

    def step(self, closure: Any = None) -> Any:
        rates = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            # A state saved before μP existed has no lr_scale: it was a standard model's.
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, rate in zip(self.param_groups, rates, strict=True):
                group["lr"] = rate


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> ScaledAdamW:
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return ScaledAdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        fused=device.type == "cuda",
    )


def budget_progress(config: TrainConfig, step: int, tokens: int, seconds: float) -> float:
    """How much of the budget is used, 0 to 1: the largest fraction among the budgets set."""
    fractions = [0.0]
    if config.max_steps is not None:
        fractions.append(step / config.max_steps)
    if config.max_tokens is not None:
        fractions.append(tokens / config.max_tokens)
    if config.max_seconds is not None:
        fractions.append(seconds / config.max_seconds)
    return min(max(fractions), 1.0)


def learning_rate(
    config: TrainConfig, step: int, progress: float, warmup_end_progress: float | None = None
) -> float:
    """The rate for step `step` (0-based) at budget `progress`: linear warmup over
    `warmup_steps`, then the schedule's decay from the peak down to
    `learning_rate * min_lr_ratio`.

    cosine spreads a cosine over the progress that remained when warmup ended; under a
    time budget only the run knows when that was, and passes it in (left out, it is
    computed from the step and token budgets alone). wsd holds the peak until the last
    `decay_fraction` of the budget and then cools down as 1 - sqrt of the cool-down's
    progress, which ends lower than a linear decay in the same steps.
    """
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    floor = peak * config.min_lr_ratio
    if config.schedule == "wsd":
        cooled = (progress - (1.0 - config.decay_fraction)) / config.decay_fraction
        return floor + (peak - floor) * (1.0 - math.sqrt(min(max(cooled, 0.0), 1.0)))
    if warmup_end_progress is None:
        warmup = config.warmup_steps
        warmup_end_progress = budget_progress(config, warmup, warmup * config.tokens_per_step, 0)
    remaining = 1.0 - warmup_end_progress
    done = 1.0 if remaining <= 0 else (progress - warmup_end_progress) / remaining
    done = min(max(done, 0.0), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * done))


def cooling_down(config: TrainConfig, progress: float) -> bool:
    """Whether a wsd schedule has left its stable phase at budget `progress`. Until then
    the rate does not depend on the budget, so the state of a run can continue under any
    larger budget exactly as if that budget had been set from the start."""
    return config.schedule == "wsd" and progress >= 1.0 - config.decay_fraction


def planned_steps(config: TrainConfig) -> tuple[int, int] | None:
    """(the step at which the cool-down begins, the steps in all) of a run under `config`;
    None under a time budget, whose steps depend on the machine. A cosine schedule
    decays from the start: its first number is 0."""
    if config.max_seconds is not None:
        return None
    per_step = config.tokens_per_step
    limits = [
        config.max_steps,
        None if config.max_tokens is None else -(-config.max_tokens // per_step),
    ]
    total = min(limit for limit in limits if limit is not None)
    if config.schedule != "wsd":
        return 0, total
    low, high = 0, total  # the first step whose progress is in the cool-down, by bisection
    while low < high:
        middle = (low + high) // 2
        if cooling_down(config, budget_progress(config, middle, middle * per_step, 0.0)):
            high = middle
        else:
            low = middle + 1
    return low, total


def budget_reached(config: TrainConfig, state: TrainState) -> BudgetReason | None:
    if config.max_steps is not None and state.step >= config.max_steps:
        return "max_steps"
    if config.max_tokens is not None and state.tokens >= config.max_tokens:
        return "max_tokens"
    if config.max_seconds is not None and state.seconds >= config.max_seconds:
        return "max_seconds"
    return None
