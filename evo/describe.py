"""A run's settings in words: its search space as stored, its mode, budgets, what it has
spent, and how far its target lies beyond the top rung and over the training data.
Nothing here needs pandas, so `evo status` prints these lines before the trials load,
and `evo run` says them before anything else starts."""

from __future__ import annotations

import itertools

import yaml

from evo.schedule.forecast import forecast_objective
from evo.space import SearchSpace, space_from_dict
from evo.storage import RunInfo, Spent
from llm.errors import ConfigError

UNITS = {"max_steps": "steps", "max_tokens": "tokens", "max_seconds": "s"}


def run_space(info: RunInfo) -> SearchSpace:
    """The search space a run was started with, as stored in the database."""
    where = f"the search space stored with run {info.name!r}"
    try:
        data = yaml.safe_load(info.space_yaml)
    except yaml.YAMLError as err:
        first_line = next(iter(str(err).strip().splitlines()), "")
        raise ConfigError(f"{where}: not valid YAML ({first_line})") from None
    return space_from_dict(data, where)


def mode_text(mode: str) -> str:
    """A search mode as every view writes it: "steady-state", "generational"."""
    return mode.replace("_", "-")


def budget_text(budget: dict[str, float]) -> str:
    return ", ".join(f"{value:,.0f} {UNITS[key]}" for key, value in budget.items())


def spent_text(spent: Spent, limits: dict[str, float]) -> str:
    """What a search has spent of each of its limits."""
    names = {"steps": "steps", "tokens": "tokens", "worker_seconds": "worker-s", "trials": "trials"}
    parts = []
    for key, limit in limits.items():
        used = spent.of(key)
        parts.append(f"{used:,.0f} of {limit:,.0f} {names[key]} ({100 * used / limit:.0f}%)")
    return "; ".join(parts)


PER_STEP = ("batch_size", "seq_len", "grad_accum")  # the genes a step's tokens depend on


def target_passes(space: SearchSpace, train_tokens: int | None) -> tuple[float, float] | None:
    """How many times a run of the space's target goes over a training split of
    `train_tokens` tokens: the fewest and the most over the space's genomes (a step
    target trains more tokens with a larger batch). None for a target in seconds, or
    without a target or the split's size."""
    target = space.search.target
    if target is None or not train_tokens or target.unit == "max_seconds":
        return None
    if target.unit == "max_tokens":
        return target.value / train_tokens, target.value / train_tokens
    names = [name for name in PER_STEP if name in space.genes]
    per_step = [
        space.train_config(dict(zip(names, values, strict=True))).tokens_per_step
        for values in itertools.product(*(space.genes[name].values() for name in names))
    ]
    return (
        target.value * min(per_step) / train_tokens,
        target.value * max(per_step) / train_tokens,
    )


def target_lines(space: SearchSpace, train_tokens: int | None) -> list[str]:
    """What `evo run` says first and `evo status` beside the budgets about the target:
    how far beyond the top rung it is, and so what the search ranks genomes by; and how
    many passes over the training split it makes, where more than one."""
    lines = []
    target = space.target_budget()
    top = space.rung_budgets()[-1]
    if target is not None:
        (unit, value), objective = next(iter(target.items())), space.search.objectives[0]
        if value > top[unit]:
            where = f"target {budget_text(target)} is {value / top[unit]:.3g}× the top rung"
            if forecast_objective(space) is not None:
                lines.append(
                    f"{where}: genomes are ranked by their {objective.metric} predicted there "
                    "from their rung scores (docs/extrapolation.md)"
                )
            else:
                lines.append(
                    f"{where}; {objective.metric} is not extrapolated, so genomes are ranked "
                    "by their top-rung score"
                )
    passes = target_passes(space, train_tokens)
    if passes is not None and passes[1] > 1:
        low, high = passes
        times = f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g} (by tokens per step)"
        lines.append(
            f"the target passes over the training split ({train_tokens:,} tokens) {times} "
            "times: later passes see text a genome has already trained on"
        )
    return lines
