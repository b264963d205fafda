"""`evo run --dry-run`: what a search would do before it spends hours, written nowhere.

Its rungs and budget are the space's, as the search's scheduler reads them
(`SearchSpace.rung_budgets`, `search.budget.limits()`), and a trial's cost at each rung
is the one the budget check charges (`evo.schedule.budget.trial_cost`). How many genomes
the budget trains follows from successive halving: of the genomes trained at a rung,
1 in η goes on to the next, so each new genome costs on average its trial at the lowest
rung plus 1/η of its trial at the next, 1/η² of the one above, and so on. The cost is
the first genome's (the space's first initial one, else the Latin hypercube's first):
genomes that train more tokens per step cost more. The time is an estimate from a few
training steps of that genome on this machine (a probe: nothing is written), with what
a trial spends besides training (building, scoring, timing its decoding) measured too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

from evo.data import TrialData
from evo.describe import budget_text, mode_text, target_lines, target_passes
from evo.schedule.budget import trial_cost
from evo.search.trials import make_job
from evo.space import SearchSpace
from llm.trial import WARMUP_STEPS, TrialEnd, TrialSpec, run_trial

PROBE_STEPS = WARMUP_STEPS + 8  # the throughput is the median of the steps after warm-up


@dataclass(frozen=True)
class Probe:
    """A genome's speed on this machine, from a few training steps on one worker."""

    steps: int
    tokens_per_s: float
    overhead_s: float  # what a trial spends besides training: building, scoring, decoding


@dataclass(frozen=True)
class Plan:
    """What the search's budget buys at the first genome's costs."""

    tokens: list[float]  # a trial's training at each rung, from the checkpoint below
    genomes: float  # new genomes trained at the lowest rung
    trials: float  # trials at every rung
    trained_tokens: float  # their training in all
    limit: str | None  # the budget's limit that ends the search first; None: none ends it


def probe(space: SearchSpace, data: TrialData, vocab_size: int, genes: dict[str, Any]) -> Probe:
    """Train `genes` for PROBE_STEPS steps (no warmup: the speed does not depend on the
    rate), score it and time its decoding as a trial does; nothing is written."""
    job = make_job(space, vocab_size, 0, genes)
    train = replace(
        job.train, max_steps=PROBE_STEPS, max_tokens=None, max_seconds=None, warmup_steps=0
    )
    spec = TrialSpec(model=job.model, train=train, data=data.pretrain, seed=job.seed)
    result = run_trial(spec)
    speed = result.metric("train_tokens_per_s")
    if result.status is not TrialEnd.DONE or not speed:
        raise RuntimeError(f"the probe of the first genome failed: {result.error}")
    training = PROBE_STEPS * train.tokens_per_step / speed
    return Probe(PROBE_STEPS, speed, max(result.metrics["wall_seconds"] - training, 0.0))


def plan(space: SearchSpace, genes: dict[str, Any], speed: Probe) -> Plan:
    """How many genomes and trials the budget carries through successive halving, at the
    costs of `genes`; a budget in seconds is spent at the probe's speed."""
    budgets = space.rung_budgets()
    eta = space.search.eta
    tokens = []
    for rung, budget in enumerate(budgets):
        cost = trial_cost(space, genes, rung)
        if cost.tokens is not None:
            tokens.append(float(cost.tokens))
        else:  # a rung in seconds: what it trains at the probe's speed
            below = budgets[rung - 1]["max_seconds"] if rung else 0.0
            tokens.append((budget["max_seconds"] - below) * speed.tokens_per_s)
    share = [eta**-rung for rung in range(len(budgets))]  # of new genomes reaching a rung
    per_genome = {
        "tokens": sum(t * s for t, s in zip(tokens, share, strict=True)),
        "trials": sum(share),
    }
    per_genome["steps"] = per_genome["tokens"] / space.train_config(genes).tokens_per_step
    per_genome["worker_seconds"] = (
        per_genome["tokens"] / speed.tokens_per_s + per_genome["trials"] * speed.overhead_s
    )
    genomes = {
        unit: limit / per_genome[unit] for unit, limit in space.search.budget.limits().items()
    }
    if space.search.generations is not None:  # generational: `population` genomes each
        genomes["generations"] = float(space.search.generations * space.search.population)
    limit = min(genomes, key=lambda unit: genomes[unit]) if genomes else None
    count = genomes[limit] if limit is not None else math.inf
    return Plan(tokens, count, count * per_genome["trials"], count * per_genome["tokens"], limit)


def usable_workers(space: SearchSpace, local: bool) -> int:
    """The trials this machine runs at once: one with --local, else its cores (or GPUs)
    divided by what a trial reserves."""
    if local:
        return 1
    resources = space.trial.resources
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = int((cores or 1) // resources.cpus) if resources.cpus else cores or 1
    if resources.gpus:
        import torch

        workers = min(workers, int(torch.cuda.device_count() // resources.gpus))
    return max(workers, 1)


def plan_lines(
    space: SearchSpace,
    genes: dict[str, Any],
    speed: Probe,
    train_tokens: int,
    workers: int,
) -> list[str]:
    """What `evo run --dry-run` prints."""
    found = plan(space, genes, speed)
    lines = [
        *search_lines(space),
        *target_line(space, train_tokens),
        *target_lines(space, train_tokens),
        "a trial of the first genome trains "
        + " / ".join(f"{t:,.0f}" for t in found.tokens)
        + " tokens"
        + (" at the rungs (from the checkpoint below)" if len(found.tokens) > 1 else ""),
    ]
    if found.limit is None:
        return lines
    rungs = len(found.tokens)
    top = found.genomes * space.search.eta ** -(rungs - 1)
    reach = (
        f"; about {top:,.1f} of them reach the top rung (1 in {space.search.eta:g}^{rungs - 1}, "
        "by successive halving)"
    )
    lines.append(
        f"its {found.limit.replace('_', '-')} end the search after about {found.genomes:,.0f} "
        f"new genomes in {found.trials:,.0f} trials ({found.trained_tokens:,.0f} tokens)"
        + (reach if rungs > 1 else "")
    )
    seconds = (
        found.trained_tokens / speed.tokens_per_s + found.trials * speed.overhead_s
    ) / workers
    lines.append(
        f"estimated wall time: {duration_text(seconds)} on {workers} worker(s) of this machine, "
        f"at the first genome's {speed.tokens_per_s:,.0f} tokens/s and {speed.overhead_s:.1f} s "
        f"a trial besides training (measured over {speed.steps} probe steps; genomes of "
        "another size train at another speed)"
    )
    return lines


def search_lines(space: SearchSpace) -> list[str]:
    """The search's mode, rungs (or trial budget) and budget."""
    search = space.search
    budgets = " / ".join(budget_text(b) for b in space.rung_budgets())
    limits = budget_text_of(search.budget.limits())
    if search.generations is not None:
        each = f"{search.generations} generations of {search.population} genomes"
        return [
            f"{mode_text(search.mode)} search, each trial {budgets}",
            f"budget: {each}" + (f", at most {limits}" if limits else ""),
        ]
    return [
        f"{mode_text(search.mode)} search, η = {search.eta:g}; rungs: {budgets}",
        f"budget: {limits}",
    ]


def target_line(space: SearchSpace, train_tokens: int) -> list[str]:
    """The target, and its passes over the training split when under one (`target_lines`
    says more of a target that passes over it several times)."""
    target = space.target_budget()
    if target is None:
        return []
    passes = target_passes(space, train_tokens)
    if passes is None or passes[1] > 1:
        return [f"target: {budget_text(target)}"]
    low, high = passes
    share = f"{low:.2g}" if low == high else f"{low:.2g} to {high:.2g}"
    return [
        f"target: {budget_text(target)}, {share} of a pass over the training split "
        f"({train_tokens:,} tokens)"
    ]


def budget_text_of(limits: dict[str, float]) -> str:
    """A search budget's limits as words: "15,000,000 tokens, 200 trials"."""
    return ", ".join(f"{value:,.0f} {unit.replace('_', '-')}" for unit, value in limits.items())


def duration_text(seconds: float) -> str:
    """ "2 h 05 min", "7 min 03 s", "21 s"."""
    hours, rest = divmod(round(seconds), 3600)
    if hours:
        return f"{hours} h {rest // 60:02d} min"
    return f"{rest // 60} min {rest % 60:02d} s" if rest >= 60 else f"{rest} s"
