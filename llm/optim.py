"""The optimizer, the learning-rate schedule and the budget: AdamW with weight decay on
matrices only, linear warmup, then a cosine decay or warmup-stable-decay (wsd), over a
step, token or time budget, whichever is reached first."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from llm.checkpoint import TrainState
from llm.config import TrainConfig
from llm.errors import ConfigError

BudgetReason = Literal["max_steps", "max_tokens", "max_seconds"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices decay; norms, biases and embeddings
    (of any nn.Embedding, tied output heads included) do not."""
    embeddings = {
        id(p)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for p in module.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2 and id(p) not in embeddings]
    decay_ids = {id(p) for p in decay}
    no_decay = [p for p in trainable if id(p) not in decay_ids]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.AdamW(
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
