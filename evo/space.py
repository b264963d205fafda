"""The search space: which settings a search may vary, and what stays fixed.

A space is one YAML file with six sections: `genes` (what varies and over which
values), `fixed` (model and training settings every trial shares), `constraints`
(ceilings on size and cost), `data` (corpus, tokenizer, optional adapt stage), `trial`
(the resources of one trial, and its budget when there are no rungs) and `search` (the
mode, the target budget, the rungs, the search's own budget, the operators and the
objectives). A genome is a dict from gene name to value, in the space's gene order;
`model_config` and `train_config` turn it into the configs a trial runs, and `ladder`
gives the budgets a genome is trained and scored at.

Every error names the file and the key path (`genes.n_heads.choice[2]`). A space in
which no genome is valid is refused when it is loaded, not after hours of search.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
import re
import typing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from evo.metrics import METRICS, OBJECTIVE_METRICS, Direction, best, better, cost_sign
from llm.config import (
    DataConfig,
    ModelConfig,
    TokenizerKind,
    TrainConfig,
    apply_overrides,
    load_yaml,
    pairing_problems,
)
from llm.errors import ConfigError

BUDGET_KEYS = ("max_steps", "max_tokens", "max_seconds")
BudgetKey = Literal["max_steps", "max_tokens", "max_seconds"]

# Genes that are not config fields.
SPECIAL_GENES: dict[str, Any] = {
    "lora_rank": Annotated[
        int,
        Field(ge=0, description="The adapt stage's LoRA rank; 0: full fine-tuning."),
    ],
    "d_ff_mult": Annotated[
        float,
        Field(
            gt=0,
            description="d_ff as a multiple of d_model, which keeps d_ff in proportion as "
            "d_model varies (a space has d_ff or d_ff_mult).",
        ),
    ],
}

# A space with at most this many combinations (floats counted at three points) is checked
# exhaustively for a valid genome at load time; a larger one by this many random samples.
MAX_ENUMERATED = 20_000
FEASIBILITY_SAMPLES = 4_000


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


MODEL_TYPES = _field_types(ModelConfig)
TRAIN_TYPES = _field_types(TrainConfig)
# Settings a space may not vary or fix, and what to do instead.
REFUSED_MODEL = {"vocab_size": "the vocabulary size is set by data.vocab_size"}
REFUSED_TRAIN = dict.fromkeys(
    BUDGET_KEYS, "budgets are set by search.target and the rungs, or trial (and data.adapt)"
)
GENE_TYPES: dict[str, Any] = {
    **{k: v for k, v in MODEL_TYPES.items() if k not in REFUSED_MODEL},
    **{k: v for k, v in TRAIN_TYPES.items() if k not in REFUSED_TRAIN},
    **SPECIAL_GENES,
}


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter({**MODEL_TYPES, **TRAIN_TYPES, **SPECIAL_GENES}[name])


class _Problem(ValueError):
    """A problem found by a validator, at a key path below the validator's own location."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class Rng(Protocol):
    """What sampling needs from a random source: a `random.Random` or the `random` module."""

    def randrange(self, stop: int, /) -> int: ...

    def uniform(self, a: float, b: float, /) -> float: ...


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domain(_Section):
    """The values of one gene: `{int: [low, high], step: 1}` (both ends included),
    `{float: [low, high], log: false}` or `{choice: [...]}`."""

    int_range: tuple[int, int] | None = Field(
        None,
        alias="int",
        description="Whole numbers from low to high, both included, every step-th. "
        "Mutation moves a step or two, sometimes jumps anywhere.",
    )
    step: int | None = Field(
        None, ge=1, description="The int domain's step; null: 1. Only with int."
    )
    float_range: tuple[float, float] | None = Field(
        None,
        alias="float",
        description="Real numbers from low to high. Mutation is Gaussian, in log space "
        "when log is set.",
    )
    log: bool | None = Field(
        None,
        description="Sample and mutate the float domain in log space (low must be above 0); "
        "null: false. Only with float.",
    )
    choice: list[Any] | None = Field(
        None,
        min_length=1,
        description="A list of values, each once. Mutation takes a neighbouring value for "
        "ordered numbers, else any other.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict) or sum(k in data for k in ("int", "float", "choice")) != 1:
            raise _Problem(
                (),
                "expected one of {int: [low, high], step: 1}, {float: [low, high], log: false}"
                " or {choice: [...]}",
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> Domain:
        if self.step is not None and self.int_range is None:
            raise _Problem(("step",), "step applies only to int domains")
        if self.log is not None and self.float_range is None:
            raise _Problem(("log",), "log applies only to float domains")
        if self.kind == "choice":
            assert self.choice is not None
            for i, value in enumerate(self.choice):
                if value in self.choice[:i]:
                    raise _Problem(("choice", i), f"{value!r} is listed twice")
            return self
        low, high = self.bounds
        if low > high:
            raise _Problem((self.kind,), f"low ({low}) is above high ({high})")
        if self.log and low <= 0:
            raise _Problem(("float",), f"a log domain needs low > 0 (got {low})")
        # Explicit defaults, so that the recorded space says exactly what was searched.
        if self.kind == "int" and self.step is None:
            self.step = 1
        if self.kind == "float" and self.log is None:
            self.log = False
        return self

    @property
    def kind(self) -> Literal["int", "float", "choice"]:
        if self.int_range is not None:
            return "int"
        return "float" if self.float_range is not None else "choice"

    @property
    def bounds(self) -> tuple[float, float]:
        """Low and high of an int or float domain."""
        bounds = self.int_range or self.float_range
        assert bounds is not None, "a choice domain has no bounds"
        return bounds

    @property
    def size(self) -> float:
        """The number of values; infinite for a float range wider than a point."""
        if self.choice is not None:
            return len(self.choice)
        low, high = self.bounds
        if self.int_range is not None:
            return (int(high) - int(low)) // (self.step or 1) + 1
        return math.inf if high > low else 1

    @property
    def is_numeric_choice(self) -> bool:
        """A choice among numbers, which has an order to step along."""
        return self.choice is not None and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in self.choice
        )

    def values(self) -> list[Any]:
        """Every value of an int or choice domain, in order (numeric choices sorted)."""
        if self.choice is not None:
            return sorted(self.choice) if self.is_numeric_choice else list(self.choice)
        low, high = self.bounds
        return list(range(int(low), int(high) + 1, self.step or 1))

    def grid(self) -> list[Any]:
        """A few values that stand for the domain when checking whether a space is feasible."""
        if self.float_range is None:
            return self.values()
        low, high = self.float_range
        middle = math.sqrt(low * high) if self.log else (low + high) / 2
        return sorted({low, middle, high})

    def contains(self, value: Any) -> bool:
        if self.choice is not None:
            return value in self.choice
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        low, high = self.bounds
        if self.int_range is not None:
            return (
                isinstance(value, int) and low <= value <= high and (value - low) % self.step == 0
            )
        return low <= value <= high

    def sample(self, rng: Rng) -> Any:
        if self.float_range is None:
            values = self.choice if self.choice is not None else self.values()
            return values[rng.randrange(len(values))]
        low, high = self.float_range
        if not self.log:
            return rng.uniform(low, high)
        # exp(log(high)) can land a rounding error above high.
        return min(max(math.exp(rng.uniform(math.log(low), math.log(high))), low), high)

    def describe(self) -> str:
        if self.choice is not None:
            return f"choice {self.choice}"
        low, high = self.bounds
        if self.int_range is not None:
            return f"int [{low}, {high}]" + (f" step {self.step}" if self.step != 1 else "")
        return f"float [{low}, {high}]" + (" log" if self.log else "")


def _type_error(err: ValidationError) -> str:
    return err.errors()[0]["msg"]


def _check_gene(name: str, domain: Domain) -> Domain:
    """Check a domain against the type of the setting it varies; returns it with the choices
    converted to that type (YAML reads `3e-4` as a string)."""
    adapter = _adapter(name)
    if domain.choice is not None:
        converted = []
        for i, value in enumerate(domain.choice):
            try:
                converted.append(adapter.validate_python(value))
            except ValidationError as err:
                raise _Problem(
                    (name, "choice", i), f"{value!r} is not a valid {name}: {_type_error(err)}"
                ) from None
        return domain.model_copy(update={"choice": converted})
    if domain.kind == "float":
        try:
            adapter.validate_python(0.5)
        except ValidationError:
            raise _Problem(
                (name, "float"), f"{name} takes no fractional values; use an int or choice domain"
            ) from None
    for i, bound in enumerate(domain.bounds):
        try:
            # Strict for ints, so that an int range cannot stand for a bool or a name.
            adapter.validate_python(bound, strict=domain.kind == "int")
        except ValidationError as err:
            raise _Problem(
                (name, domain.kind, i), f"{bound!r} is not a valid {name}: {_type_error(err)}"
            ) from None
    return domain


def _check_settings(
    settings: dict[str, Any], types: dict[str, Any], refused: dict[str, str]
) -> dict[str, Any]:
    """Check fixed settings by name and type; returns them converted to their types."""
    out = {}
    for key, value in settings.items():
        if key in refused:
            raise _Problem((key,), f"cannot be fixed here: {refused[key]}")
        if key not in types:
            valid = ", ".join(k for k in types if k not in refused)
            raise _Problem((key,), f"unknown setting; expected one of: {valid}")
        try:
            out[key] = _adapter(key).validate_python(value)
        except ValidationError as err:
            raise _Problem((key,), _type_error(err)) from None
    return out


class Fixed(_Section):
    """Model and training settings shared by every trial (fields of ModelConfig, TrainConfig)."""

    model: dict[str, Any] = Field(
        default_factory=dict,
        description="Model settings every trial shares: any field of the model config that "
        "is not a gene (not vocab_size, which data.vocab_size sets).",
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Training settings every trial shares: any field of the training config "
        "that is not a gene (precision, device, threads, eval_max_batches, …), but no "
        "budget (max_steps, max_tokens, max_seconds: search.target and the rungs, or trial, "
        "set it).",
    )

    @field_validator("model")
    @classmethod
    def _model_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(value, MODEL_TYPES, REFUSED_MODEL)

    @field_validator("train")
    @classmethod
    def _train_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(value, TRAIN_TYPES, REFUSED_TRAIN)


class Constraints(_Section):
    """Ceilings a valid genome stays under, besides ModelConfig's own rules (d_model
    divisible by n_heads, n_heads divisible by n_kv_heads, an even head size for RoPE, …):
    the operators repair every genome they make."""

    max_params: int | None = Field(
        None, gt=0, description="The most parameters a genome's model may have."
    )
    max_flops_per_token: int | None = Field(
        None, gt=0, description="The most training FLOPs per token a genome's model may take."
    )


class _Limits(_Section):
    """When a training stage stops: at whichever set limit it reaches first."""

    max_steps: int | None = Field(None, gt=0, description="Training steps.")
    max_tokens: int | None = Field(None, gt=0, description="Training tokens.")
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Seconds of training. Steps or tokens make results reproducible; "
        "seconds compare genomes at equal time.",
    )

    def budget(self) -> dict[str, float]:
        """The limits that are set, as TrainConfig fields."""
        return {key: getattr(self, key) for key in BUDGET_KEYS if getattr(self, key) is not None}


class _Budget(_Limits):
    """Limits of which at least one is set."""

    @model_validator(mode="after")
    def _has_budget(self) -> _Budget:
        if not self.budget():
            raise _Problem((), "set a budget: max_steps, max_tokens or max_seconds")
        return self


class Target(_Budget):
    """The training budget the promoted model gets: one of max_steps, max_tokens or
    max_seconds. Rung budgets are in its unit."""

    @model_validator(mode="after")
    def _one_unit(self) -> Target:
        if len(self.budget()) > 1:
            raise _Problem((), "set one of max_steps, max_tokens or max_seconds, not several")
        return self

    @property
    def unit(self) -> BudgetKey:
        (key,) = self.budget()
        return typing.cast(BudgetKey, key)

    @property
    def value(self) -> float:
        return float(getattr(self, self.unit))


class Adapt(_Budget):
    """A second stage: fine-tune each pretrained model on another corpus."""

    corpus: str = Field(description="The corpus to adapt to, written as data.corpus is.")
    learning_rate: float | None = Field(
        None, gt=0, description="The adapt stage's learning rate; null: pretraining's."
    )
    batch_size: int | None = Field(
        None, gt=0, description="The adapt stage's batch size; null: pretraining's."
    )
    quantize: Literal["nf4"] | None = Field(
        None,
        description="QLoRA: under LoRA (lora_rank > 0), the frozen base weights are stored "
        "in 4-bit NormalFloat while the adapters train; null: as trained.",
    )


class Data(_Section):
    """The text and its tokens, fixed for the whole run, so that every trial's bits per
    byte is comparable."""

    corpus: str = Field(
        "builtin:python-docs", description="The pretraining corpus (as the data config's)."
    )
    tokenizer: TokenizerKind = Field("bpe", description="The tokenizer kind.")
    vocab_size: int = Field(
        2048, ge=2, description="A target: a trained tokenizer may end up smaller."
    )
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="The share of documents held out for validation."
    )
    max_val_tokens: int | None = Field(
        262144,
        gt=0,
        description="Every trial is scored on the first max_val_tokens of each validation "
        "split, with their exact byte count (null: all of it), so evaluation stays a small, "
        "fixed share of a trial on large corpora.",
    )
    adapt: Adapt | None = Field(
        None,
        description="A second stage, after pretraining. With one, the metrics a trial "
        "reports are those of the adapt corpus; the pretraining ones are kept beside them.",
    )


class Resources(_Section):
    """What one trial reserves on the Ray cluster; fractions of a GPU share it."""

    cpus: float = Field(1.0, ge=0, description="CPU cores one trial reserves.")
    gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs one trial reserves: 0.5 puts two trials on each GPU; above 1, a "
        "whole number.",
    )

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> Resources:
        if self.gpus > 1 and not self.gpus.is_integer():
            raise _Problem(("gpus",), f"more than one GPU must be a whole number (got {self.gpus})")
        return self


class Trial(_Limits):
    """One trial: what it reserves, when it is given up, how often a lost worker is
    retried, whether idle workers lend it their cores, and its budget when the search
    has no rungs."""

    resources: Resources = Field(
        default_factory=Resources, description="What one trial reserves on the Ray cluster."
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds after which a trial is given up; null: three times the longest "
        "trial's time budget plus a minute, or 600 s when a stage has no time budget.",
    )
    retries: int = Field(
        2, ge=0, description="How often a trial whose worker or node was lost is retried."
    )
    lend_cores: bool = Field(
        True,
        description="Idle workers lend their cores to the trials still running at the end "
        "of the budget (CPU trials with a budget of steps or tokens, on the driver's "
        "machine); false when a promotion must reproduce a trial bit for bit.",
    )


class SearchBudget(_Section):
    """What a search may spend before it ends, whichever limit comes first: training
    steps or tokens over all its trials, worker-seconds (a trial's wall time times the
    workers it holds, one each), or a number of trials (one per genome and rung)."""

    steps: int | None = Field(
        None, gt=0, description="Training steps over every trial, cool-downs and failures included."
    )
    tokens: int | None = Field(
        None, gt=0, description="Training tokens over every trial, as steps."
    )
    worker_seconds: float | None = Field(
        None,
        gt=0,
        description="Each trial's wall time on the worker it holds, lost attempts included. "
        "A trial's seconds cannot be known beforehand, so the trials in flight when the limit "
        "is reached may pass it, as may trials under a time budget.",
    )
    trials: int | None = Field(
        None,
        gt=0,
        description="Decisions: a genome trained to a rung (a lost worker's retry is the "
        "same trial).",
    )

    def limits(self) -> dict[str, float]:
        names = ("steps", "tokens", "worker_seconds", "trials")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class Objective(_Section):
    """A TrialResult metric to optimise; written `{metric: m, direction: min}` or just `m`."""

    metric: str = Field(description="A metric's name (the table of objectives below).")
    direction: Direction | None = Field(
        None, description="min or max; null: the metric's natural direction."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"metric": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known_metric(self) -> Objective:
        if self.metric not in OBJECTIVE_METRICS:
            valid = ", ".join(OBJECTIVE_METRICS)
            raise _Problem(("metric",), f"unknown metric {self.metric!r}; expected one of: {valid}")
        if self.direction is None:
            self.direction = METRICS[self.metric].direction
        return self

    @property
    def _direction(self) -> Direction:
        assert self.direction is not None  # set by validation
        return self.direction

    @property
    def sign(self) -> float:
        """+1 to minimise, -1 to maximise: sign × value is a cost, lower is better."""
        return cost_sign(self._direction)

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` is strictly better than `b`."""
        return better(self._direction, a, b)

    def best(self, values: Any) -> float:
        """The best of the finite values; NaN when there is none."""
        return best(self._direction, values)


Mode = Literal["steady_state", "generational"]
DEFAULT_GENERATIONS = 5


class SearchSettings(_Section):
    """How the search proceeds (the `search` section): its mode, the budget it trains
    genomes towards (`target`), the rungs it scores them at, what it may spend, and the
    evolution's own settings."""

    mode: Mode = Field(
        "steady_state",
        description="steady_state: a decision whenever a worker is free, over rungs. "
        "generational: generations of population offspring, every trial at the trial's "
        "single budget, the best of parents and offspring surviving (NSGA-II for several "
        "objectives).",
    )
    population: int = Field(
        16,
        ge=2,
        description="The aging population's size at each rung (steady state), or the "
        "population (generational).",
    )
    generations: int | None = Field(
        None,
        ge=1,
        description="Generational mode only: generations, generation 0 included; null: 5.",
    )
    target: Target | None = Field(
        None,
        description="The training budget the promoted model gets; evo promote trains for it "
        "by default, and rung budgets are in its unit.",
    )
    rungs: list[float] | None = Field(
        None,
        min_length=1,
        description="Steady state: the rungs' budgets, increasing, in the target's unit. "
        "With one rung (or no target: the trial's budget) the search is steady-state "
        "without rungs. Several rungs need schedule: wsd (the default then), and the lowest "
        "rung's stable phase must outlast warmup (where a gene sets warmup, the cool-down share "
        "or the tokens of a step, a genome whose warmup does not is invalid, and repaired).",
    )
    min_budget: float | None = Field(
        None,
        gt=0,
        description="Instead of rungs: the lowest rung; as many rungs as fit between it and "
        "max_budget, each eta times the one below.",
    )
    max_budget: float | None = Field(
        None, gt=0, description="With min_budget: the top rung; null: the target."
    )
    eta: float = Field(
        3.0,
        ge=2,
        description="A genome in the top 1/eta of its rung advances to the next; with "
        "min_budget, the ratio between rungs.",
    )
    budget: SearchBudget = Field(
        default_factory=SearchBudget,
        description="What the search may spend. A trial is started only if its planned steps "
        "and tokens still fit. Required in steady-state mode; in generational mode it ends "
        "the run between generations.",
    )
    initial: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Genomes to train first, as a list of {gene: value} (Optuna's "
        "enqueue_trial, Ray Tune's points_to_evaluate): a known-good config the search should "
        "start from and try to beat. Genes left out are taken from the initial design; each "
        "value must lie in its gene's domain, and a genome over the constraints is refused "
        "by evo run before the run is created.",
    )
    _rungs: list[float] | None = PrivateAttr(None)
    crossover_prob: float = Field(
        0.9, ge=0, le=1, description="The probability of crossover, per pair of parents."
    )
    mutation_prob: float = Field(
        1.0, ge=0, le=1, description="The probability of mutation, per offspring, after crossover."
    )
    mutation_gene_prob: float | None = Field(
        None,
        gt=0,
        le=1,
        description="A mutated offspring changes each gene with this probability, and at "
        "least one; null: 1 / number of genes.",
    )
    selection: Literal["auto", "nsga2", "tournament"] = Field(
        "auto",
        description="auto: NSGA-II ranking for several objectives, tournament for one.",
    )
    tournament_size: int = Field(3, ge=2, description="Genomes per tournament.")
    seed: int = Field(0, description="The seed of every decision of the search.")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="bits_per_byte")],
        min_length=1,
        description="What the search optimises, each written {metric: m, direction: "
        "min|max} or just m for its natural direction; several make the search "
        "multi-objective (Pareto front, then crowding).",
    )

    @model_validator(mode="after")
    def _check(self) -> SearchSettings:
        metrics = [o.metric for o in self.objectives]
        for i, metric in enumerate(metrics):
            if metric in metrics[:i]:
                raise _Problem(("objectives", i), f"{metric} is listed twice")
        if self.selection == "auto":
            self.selection = "nsga2" if len(self.objectives) > 1 else "tournament"
        if self.selection == "tournament" and len(self.objectives) > 1:
            raise _Problem(
                ("selection",), "tournament selection needs a single objective; use nsga2"
            )
        if self.mode == "generational":
            self._check_generational()
        else:
            self._check_steady_state()
        return self

    def _check_generational(self) -> None:
        for key in ("rungs", "min_budget", "max_budget"):
            if getattr(self, key) is not None:
                raise _Problem((key,), "rungs need mode: steady_state")
        if self.generations is None:
            self.generations = DEFAULT_GENERATIONS

    def _check_steady_state(self) -> None:
        if self.generations is not None:
            raise _Problem(
                ("generations",),
                "applies to mode: generational; a steady_state search ends at search.budget",
            )
        if not self.budget.limits():
            raise _Problem(
                ("budget",),
                "set what the search may spend (steps, tokens, worker_seconds and/or trials),"
                " or set mode: generational",
            )
        if self.rungs is not None and self.min_budget is not None:
            raise _Problem(("rungs",), "set rungs or min_budget, not both")
        if self.max_budget is not None and self.min_budget is None:
            raise _Problem(("max_budget",), "max_budget needs min_budget")
        if (self.rungs is not None or self.min_budget is not None) and self.target is None:
            raise _Problem(("target",), "rungs need a target budget, in the rungs' unit")
        if self.target is not None:
            self._rungs = self._rung_budgets(self.target)

    @property
    def rung_values(self) -> list[float] | None:
        """The rungs' budgets in the target's unit, lowest first; None without a target."""
        return self._rungs

    def _rung_budgets(self, target: Target) -> list[float]:
        """Check and resolve the rungs: explicit, geometric from min_budget by eta, or
        the target alone."""
        whole = target.unit != "max_seconds"
        if self.rungs is not None:
            rungs = self.rungs
            for i, rung in enumerate(rungs):
                if rung <= 0 or (whole and rung != int(rung)):
                    kind = "a positive whole number" if whole else "positive"
                    raise _Problem(("rungs", i), f"a rung must be {kind} (got {rung})")
                if i and rung <= rungs[i - 1]:
                    raise _Problem(("rungs", i), "rungs must increase")
            top = rungs[-1]
            where: tuple[str | int, ...] = ("rungs", len(rungs) - 1)
        elif self.min_budget is not None:
            top = self.max_budget if self.max_budget is not None else target.value
            where = ("max_budget",) if self.max_budget is not None else ("target",)
            if self.min_budget > top:
                raise _Problem(("min_budget",), f"is above the top rung ({top:g})")
            count = math.floor(math.log(top / self.min_budget, self.eta) + 1e-9) + 1
            rungs = [top / self.eta ** (count - 1 - k) for k in range(count)]
            if whole:
                rungs = sorted({max(1, round(r)) for r in rungs})
        else:
            return [target.value]
        if top > target.value:
            raise _Problem(where, f"the top rung ({top:g}) is above the target ({target.value:g})")
        return [float(int(r)) if whole else float(r) for r in rungs]


@pydantic_dataclass(kw_only=True, config=ConfigDict(extra="forbid"))
class SearchSpace:
    """A validated search space. (A pydantic dataclass rather than a BaseModel, because
    BaseModel reserves the name `model_config`, which here builds a genome's ModelConfig.)"""

    genes: Annotated[
        dict[str, Domain],
        Field(
            min_length=1,
            description="What varies: each gene, a field of the model or training config "
            "(or a special gene), with its domain.",
        ),
    ]
    fixed: Fixed = Field(
        default_factory=Fixed, description="Model and training settings every trial shares."
    )
    constraints: Constraints = Field(
        default_factory=Constraints, description="Ceilings on size and cost."
    )
    data: Data = Field(
        default_factory=Data, description="Corpus, tokenizer, and an optional adapt stage."
    )
    trial: Trial = Field(
        default_factory=Trial,
        description="The resources of one trial, and its budget when there are no rungs.",
    )
    search: SearchSettings = Field(
        default_factory=SearchSettings,
        description="The mode, the target, the rungs, the search's own budget, the "
        "operators and the objectives.",
    )

    @field_validator("genes")
    @classmethod
    def _known_genes(cls, genes: dict[str, Domain]) -> dict[str, Domain]:
        for name in genes:
            if name in REFUSED_MODEL or name in REFUSED_TRAIN:
                reason = {**REFUSED_MODEL, **REFUSED_TRAIN}[name]
                raise _Problem((name,), f"cannot be a gene: {reason}")
            if name not in GENE_TYPES:
                valid = ", ".join(GENE_TYPES)
                raise _Problem((name,), f"unknown gene; genes can be: {valid}")
        return {name: _check_gene(name, domain) for name, domain in genes.items()}

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        for section, settings in (("model", self.fixed.model), ("train", self.fixed.train)):
            for key in settings:
                if key in self.genes:
                    raise _Problem(("fixed", section, key), f"{key} is also a gene; keep one")
        if "d_ff_mult" in self.genes and ("d_ff" in self.genes or "d_ff" in self.fixed.model):
            raise _Problem(("genes", "d_ff_mult"), "set d_ff or d_ff_mult, not both")
        if "lora_rank" in self.genes and self.data.adapt is None:
            raise _Problem(
                ("genes", "lora_rank"), "lora_rank applies to the adapt stage; set data.adapt"
            )
        if self.search.mutation_gene_prob is None:
            self.search.mutation_gene_prob = 1 / len(self.genes)
        self._check_initial()
        self._check_trial_budget()
        self._check_measured()
        if len(self.rung_budgets()) > 1:
            self._check_continuable()
        if self.trial.timeout_s is None:
            self.trial.timeout_s = self._default_timeout()
        infeasible = self._infeasibility()
        if infeasible:
            raise _Problem(("genes",), infeasible)
        return self

    def _check_initial(self) -> None:
        """Every initial genome names genes of the space, with values in their domains."""
        for i, genome in enumerate(self.search.initial):
            for name, value in genome.items():
                path = ("search", "initial", i, name)
                domain = self.genes.get(name)
                if domain is None:
                    raise _Problem(path, f"not a gene of this space ({', '.join(self.genes)})")
                try:
                    genome[name] = _adapter(name).validate_python(value)
                except ValidationError as err:
                    raise _Problem(path, _type_error(err)) from None
                if not domain.contains(genome[name]):
                    raise _Problem(path, f"{value!r} is outside the domain {domain.describe()}")

    def _check_trial_budget(self) -> None:
        """A trial's budget comes from the trial section or from the rungs, never both."""
        has_budget = bool(self.trial.budget())
        if self.search.rung_values is not None and has_budget:
            key = next(iter(self.trial.budget()))
            raise _Problem(
                ("trial", key),
                "search.target and the rungs set each trial's budget; remove it here",
            )
        if self.search.rung_values is None and not has_budget:
            raise _Problem(
                ("trial",),
                "set a budget: max_steps, max_tokens or max_seconds (or search.target)",
            )

    def _check_measured(self) -> None:
        """No objective that trials on a CPU leave unmeasured: none would have a value."""
        if self.fixed.train.get("device") != "cpu":
            return
        for i, objective in enumerate(self.search.objectives):
            if METRICS[objective.metric].gpu_only:
                raise _Problem(
                    ("search", "objectives", i),
                    f"{objective.metric} is measured on a GPU only, and fixed.train.device is cpu",
                )

    def _check_continuable(self) -> None:
        """Rungs continue a genome from the checkpoint where its cool-down began, which
        only a wsd schedule has; its stable phase must outlast warmup at the lowest rung."""
        if "schedule" in self.genes:
            raise _Problem(("genes", "schedule"), "rungs need schedule: wsd; it cannot vary")
        if self.fixed.train.get("schedule", "wsd") != "wsd":
            raise _Problem(
                ("fixed", "train", "schedule"), "rungs continue trials, which needs schedule: wsd"
            )
        varying = {"warmup_steps", "decay_fraction"}
        if "max_tokens" in self.rung_budgets()[0]:
            varying |= {"batch_size", "seq_len", "grad_accum"}  # the tokens of a step
        if varying & set(self.genes):
            return  # checked genome by genome (`problems`), where repair can make it fit
        train = self.train_config({})
        overrun = self._warmup_overrun(train)
        if overrun is not None:
            lowest, stable = overrun
            raise _Problem(
                ("search", "rungs" if self.search.min_budget is None else "min_budget"),
                f"the lowest rung ({lowest:g} steps) cools down after {stable:g} steps, "
                f"before warmup ({train.warmup_steps} steps) ends; raise it or lower "
                "fixed.train.warmup_steps",
            )

    def _default_timeout(self) -> float:
        """Three times the time budget of the longest trial plus a minute for start-up;
        10 minutes when a stage has no time budget."""
        longest = self.rung_budgets()[-1]
        stages = [longest, *([self.data.adapt.budget()] if self.data.adapt else [])]
        seconds = [stage.get("max_seconds") for stage in stages]
        if any(s is None for s in seconds):
            return 600.0
        return 3 * math.fsum(s for s in seconds if s is not None) + 60

    def rung_budgets(self) -> list[dict[str, float]]:
        """The budget of each rung, lowest first, as TrainConfig fields (max_steps, …): the
        search's rungs in the target's unit, or the trial's budget as a single rung."""
        target, rungs = self.search.target, self.search.rung_values
        if rungs is None or target is None:
            return [self.trial.budget()]
        whole = target.unit != "max_seconds"
        return [{target.unit: int(r) if whole else r} for r in rungs]

    def target_budget(self) -> dict[str, float] | None:
        """The budget the promoted model trains for, when the space names one."""
        target = self.search.target
        return None if target is None else target.budget()

    def _infeasibility(self) -> str | None:
        """Why no genome of this space is valid, or None when one is. Floats are checked at
        three points: they matter to validity only through range rules like dropout < 1."""
        grids = [domain.grid() for domain in self.genes.values()]
        total = math.prod(len(grid) for grid in grids)
        genomes: Iterator[dict[str, Any]]
        if total <= MAX_ENUMERATED:
            genomes = (
                dict(zip(self.genes, values, strict=True)) for values in itertools.product(*grids)
            )
            how = f"all combinations ({total}) checked"
        else:
            # A fixed seed: whether a space loads must not depend on chance.
            rng = random.Random(0)
            genomes = (self.sample(rng) for _ in range(FEASIBILITY_SAMPLES))
            how, total = f"{FEASIBILITY_SAMPLES} random genomes checked", FEASIBILITY_SAMPLES
        counts: Counter[str] = Counter()
        for genome in genomes:
            problems = self.problems(genome, self.data.vocab_size)
            if not problems:
                return None
            # Drop the numbers so that one rule counts once: "d_model must be divisible by n_heads".
            counts.update({re.sub(r" \([^)]*\)", "", p) for p in problems})
        common = ", ".join(f"'{kind}' (in {n} of {total})" for kind, n in counts.most_common(3))
        return f"no valid genome ({how}); the constraints violated most often: {common}"

    @property
    def gene_names(self) -> list[str]:
        return list(self.genes)

    def sample(self, rng: Rng) -> dict[str, Any]:
        """A random genome, uniform over each gene's domain; not necessarily valid."""
        return {name: domain.sample(rng) for name, domain in self.genes.items()}

    def problems(self, genome: dict[str, Any], vocab_size: int) -> list[str]:
        """Every reason the genome is invalid, as sentences (empty when it is valid)."""
        return self._assess(genome, vocab_size)[0]

    def is_valid(self, genome: dict[str, Any], vocab_size: int) -> bool:
        return not self.problems(genome, vocab_size)

    def violation(self, genome: dict[str, Any], vocab_size: int) -> tuple[int, float]:
        """How far from valid a genome is: its number of problems, then how far (relative)
        it is over the ceilings. (0, 0.0) exactly when it is valid; repair minimises this."""
        problems, excess = self._assess(genome, vocab_size)
        return len(problems), excess

    def _assess(self, genome: dict[str, Any], vocab_size: int) -> tuple[list[str], float]:
        missing = [name for name in self.genes if name not in genome]
        unknown = [name for name in genome if name not in self.genes]
        if missing or unknown:
            return [f"genome lacks genes {missing} or has unknown genes {unknown}"], 0.0
        outside = [
            f"{name} = {genome[name]!r} is outside {domain.describe()}"
            for name, domain in self.genes.items()
            if not domain.contains(genome[name])
        ]
        if outside:
            return outside, 0.0
        model, train = self.model_config(genome, vocab_size), self.train_config(genome)
        problems = model.problems() + train.problems() + pairing_problems(model, train)
        if problems:  # sizes of a malformed model (n_heads 0) cannot be computed
            return problems, 0.0
        excess = 0.0
        for name, value, ceiling in (
            ("params", model.param_count().total, self.constraints.max_params),
            (
                "flops_per_token",
                model.flops_per_token(train.seq_len),
                self.constraints.max_flops_per_token,
            ),
        ):
            if ceiling is not None and value > ceiling:
                problems.append(f"{name} ({value:,}) is above max_{name} ({ceiling:,})")
                excess += value / ceiling - 1
        overrun = self._warmup_overrun(train)
        if overrun is not None:
            _, stable = overrun
            # The excess shrinks as warmup does, so that repair steps it down to fit.
            problems.append(
                f"warmup_steps ({train.warmup_steps}) must end before the lowest rung "
                f"cools down, after {stable:g} steps"
            )
            excess += (train.warmup_steps + 1 - stable) / max(stable, 1)
        return problems, excess

    def _warmup_overrun(self, train: TrainConfig) -> tuple[float, float] | None:
        """(The lowest rung's steps, its stable phase's) when warmup under `train` lasts
        past the stable phase of the lowest rung, which every higher rung continues from;
        None when it ends in time, or with a single rung or a budget in seconds."""
        budgets = self.rung_budgets()
        if len(budgets) < 2 or "max_seconds" in budgets[0]:
            return None
        lowest = budgets[0].get("max_steps") or budgets[0]["max_tokens"] / train.tokens_per_step
        stable = (1 - train.decay_fraction) * lowest
        return (lowest, stable) if train.warmup_steps >= stable else None

    def model_config(self, genome: dict[str, Any], vocab_size: int | None) -> ModelConfig:
        """The genome's model: fixed.model, then the model genes, with d_ff from d_ff_mult."""
        genes = {k: v for k, v in genome.items() if k in MODEL_TYPES}
        config = ModelConfig(**{**self.fixed.model, **genes, "vocab_size": vocab_size})
        if "d_ff_mult" in genome:
            d_ff = max(1, round(genome["d_ff_mult"] * config.d_model))
            config = dataclasses.replace(config, d_ff=d_ff)
        return config

    def train_config(
        self, genome: dict[str, Any], budget: dict[str, float] | None = None
    ) -> TrainConfig:
        """The genome's pretraining: fixed.train, then the training genes, then `budget`
        (default: the top rung's). With several rungs the schedule is wsd, whose stable
        phase lets a trial continue to a larger budget. Trials run eagerly unless
        fixed.train.compile says otherwise: a warm-up per genome rarely pays off over a
        trial, and compiled and eager steps differ in the last bits."""
        genes = {k: v for k, v in genome.items() if k in TRAIN_TYPES}
        budgets = self.rung_budgets()
        defaults: dict[str, Any] = {"compile": False}
        if len(budgets) > 1:
            defaults["schedule"] = "wsd"
        limits = dict.fromkeys(BUDGET_KEYS) | (budget if budget is not None else budgets[-1])
        return TrainConfig(**{**defaults, **self.fixed.train, **genes, **limits})

    def adapt_train_config(self, genome: dict[str, Any]) -> TrainConfig | None:
        """The adapt stage's training: as pretraining, with its own budget and optionally its
        own learning rate and batch size; None when the space has no adapt stage."""
        adapt = self.data.adapt
        if adapt is None:
            return None
        train = self.train_config(genome)
        return dataclasses.replace(
            train,
            **{**dict.fromkeys(BUDGET_KEYS), **adapt.budget()},
            learning_rate=adapt.learning_rate or train.learning_rate,
            batch_size=adapt.batch_size or train.batch_size,
        )

    def data_config(self) -> DataConfig:
        """The pretraining corpus and tokenizer as the stack's DataConfig."""
        data = self.data
        return DataConfig(
            corpus=data.corpus,
            tokenizer=data.tokenizer,
            vocab_size=data.vocab_size,
            val_fraction=data.val_fraction,
        )

    def adapt_quantize(self) -> str | None:
        """How the adapt stage stores the frozen weights under LoRA (None: as trained)."""
        return self.data.adapt.quantize if self.data.adapt is not None else None

    def lora_rank(self, genome: dict[str, Any]) -> int:
        """The adapt stage's LoRA rank; 0 (full fine-tuning) when it is not a gene."""
        return int(genome.get("lora_rank", 0))

    def objective_weights(self) -> tuple[float, ...]:
        """DEAP fitness weights: -1.0 to minimise an objective, +1.0 to maximise it."""
        return tuple(-o.sign for o in self.search.objectives)

    def canonical_yaml(self) -> str:
        """The validated space, defaults and overrides resolved, as YAML that loads back to it."""
        data = _ADAPTER.dump_python(self, mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


_ADAPTER = TypeAdapter(SearchSpace)

# Friendlier words for pydantic's most common complaints.
_MESSAGES = {
    "extra_forbidden": "unknown key",
    "unexpected_keyword_argument": "unknown key",
    "missing": "required key missing",
    "missing_keyword_only_argument": "required key missing",
}


def key_path(loc: tuple[str | int, ...]) -> str:
    """A pydantic error location as a key path: ("genes", "x", "choice", 2) -> genes.x.choice[2]."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: ValidationError) -> str:
    parts = []
    for error in err.errors():
        loc = tuple(error["loc"])
        problem = error.get("ctx", {}).get("error")
        if isinstance(problem, _Problem):
            loc, message = loc + problem.path, problem.message
        else:
            message = _MESSAGES.get(error["type"], error["msg"])
        path = key_path(loc)
        parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)


def space_from_dict(data: dict[str, Any], where: str = "<space>") -> SearchSpace:
    """Validate plain data as a search space; `where` names it in errors (usually the file)."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_describe(err)}") from None


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Read a search space YAML, apply `key.path=value` overrides, then validate it."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return space_from_dict(data, str(path))
