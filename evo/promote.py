"""Promotion: train a genome of a search properly, as a model directory that `llm eval`
and `llm generate` accept.

By default the genome is the best validated one when `evo validate` has run, else the
best at the highest rung the search reached (the rung nearest the budget that matters),
by the first objective; the budget is the space's `search.target`. The promoted run
trains with the genome's own seed and schedule, so when the top rung is the target, the
promoted model is the one the search scored.

A promotion may also be wider or deeper than the genome searched (`Scaling`;
`ModelConfig.widened` says how a model widens, under μP by default so that the genome's
learning rate and init carry over), and longer than the rung its learning rate was
chosen at, with the rate lowered for it (`HorizonRate`). Where the model came from is
written beside it (`provenance.json`) and into the promotion's record (under
`provenance` in its metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo.describe import budget_text
from evo.driver import load_run_space
from evo.metrics import EVAL_TOKENS, TrialStatus
from evo.search.trials import trial_seed
from evo.space import SearchSpace
from evo.storage import RunStatus, Storage, TrialRecord
from evo.validate import search_ranking, validation_report
from llm.atomic import make_folder, read_json_object, write_json
from llm.checkpoint import check_out_dir
from llm.cli_support import EXIT_INTERRUPTED
from llm.config import ModelConfig, Parametrization, RunConfig, TrainConfig, to_dict
from llm.data import prepare
from llm.distributed import check_divisible, launch
from llm.errors import UserError
from llm.evaluate import EVAL_METRICS
from llm.run import METRICS_FILE, check_same_run, model_config_for, train_run

Metrics = dict[str, Any] | None
PROMOTION_CONFIG = "promotion.json"  # the run's config, for the processes of --nproc
PROVENANCE_FILE = "provenance.json"  # where the promoted model came from
PROVENANCE = "provenance"  # the same, as a key of the promotion's recorded metrics


@dataclass(frozen=True)
class Budget:
    max_steps: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value is not None and not value > 0:
                flag = name.removeprefix("max_")
                raise UserError(f"--{flag} must be positive (got {value})")

    def is_set(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


DEFAULT_BUDGET = Budget(max_steps=2000)  # for a space without a target


@dataclass(frozen=True)
class Scaling:
    """How the promoted model differs in shape from the genome searched: its width
    (heads at the genome's head size, d_ff by its multiplier), its depth, and its
    parametrization (None: μP when the width changes, else the genome's own). μP
    promises that the learning rate and init carry over across width, not depth."""

    width: int | None = None
    layers: int | None = None
    parametrization: Parametrization | None = None

    def __post_init__(self) -> None:
        for name in ("width", "layers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be at least 1 (got {value})")

    def apply(self, model: ModelConfig, genes: dict[str, Any]) -> ModelConfig:
        """The genome's model `model` scaled thus (unchanged when nothing is asked)."""
        if self.width is not None or self.parametrization is not None:
            width = self.width or model.d_model
            model = model.widened(width, genes.get("d_ff_mult"), self.parametrization)
        if self.layers is not None:
            model = dataclasses.replace(model, n_layers=self.layers)
        return model

    def folder_suffix(self, searched: ModelConfig) -> str:
        """What the default folder name adds to tell this promotion from a plain one."""
        parts = []
        if self.width is not None and self.width != searched.d_model:
            parts.append(f"-width-{self.width}")
        if self.layers is not None and self.layers != searched.n_layers:
            parts.append(f"-layers-{self.layers}")
        if self.parametrization is not None and self.parametrization != searched.parametrization:
            parts.append(f"-{self.parametrization}")
        return "".join(parts)


@dataclass(frozen=True)
class HorizonRate:
    """The learning rate of a run longer (or shorter) than the rung the genome was scored
    at: its rate times (the run's tokens / the rung's)^(−exponent). The best rate falls as
    a run gets longer (Bjorck et al., 2025, "Scaling Optimal LR Across Token Horizons"),
    and a search picks its rate by scores at its top rung; μP carries a rate across
    width, not across the length of a run. 0 keeps the genome's rate."""

    exponent: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.exponent) or not 0 <= self.exponent <= 1:
            raise UserError(f"--lr-horizon must be between 0 and 1 (got {self.exponent})")

    def factor(self, scored_tokens: float, tokens: float) -> float:
        """What the genome's rate is multiplied by for a run of `tokens`, its rate having
        been chosen at `scored_tokens`."""
        return (tokens / scored_tokens) ** -self.exponent

    def folder_suffix(self) -> str:
        """What the default folder name adds to tell this promotion from a plain one."""
        return f"-lr-horizon-{self.exponent:g}" if self.exponent else ""


def budget_tokens(budget: dict[str, float], train: TrainConfig, flag: str) -> float:
    """A budget of steps or tokens in tokens (`train`'s tokens per step); `flag` names the
    option that needs it, in the error for a budget of seconds."""
    if "max_tokens" in budget:
        return budget["max_tokens"]
    if "max_steps" in budget:
        return budget["max_steps"] * train.tokens_per_step
    raise UserError(f"{flag} needs a budget in steps or tokens, not {budget_text(budget)}")


def pick_trial(
    storage: Storage, run: str, space: SearchSpace, genome_id: int | None, objective: str | None
) -> TrialRecord:
    """The successful trial of `genome_id` at its highest rung, else the best by
    `objective` at the highest rung with a success; by the first objective (the default),
    the search's best is its pick (`evo.validate.search_ranking`: predicted at a target
    beyond the top rung) and this its best trial at the highest rung it reached."""
    done = [t for t in storage.trials(run) if t.status is TrialStatus.DONE]
    if genome_id is not None:
        done = [t for t in done if t.genome_id == genome_id]
        if not done:
            raise UserError(f"run {run!r} has no successful trial of genome {genome_id}")
        return max(done, key=lambda t: (t.rung, t.id))
    objectives = {o.metric: o for o in space.search.objectives}
    metric = objective or space.search.objectives[0].metric
    if metric not in objectives:
        raise UserError(f"{metric!r} is not an objective of run {run!r}: {', '.join(objectives)}")
    scored = [t for t in done if t.metric(metric) is not None]
    if not scored:
        raise UserError(f"run {run!r} has no successful trial to promote yet")
    if metric == space.search.objectives[0].metric:
        pick = search_ranking(storage, run, space)[0].genome_id
        scored = [t for t in scored if t.genome_id == pick]
    top = max(t.rung for t in scored)
    sign = objectives[metric].sign
    return min((t for t in scored if t.rung == top), key=lambda t: sign * (t.metric(metric) or 0.0))


def pick_genome(
    storage: Storage, run: str, space: SearchSpace, genome_id: int | None, objective: str | None
) -> tuple[int, str]:
    """The genome to promote and why: `genome_id` when given; else the best validated mean
    when the run has validations (`evo validate`) and no other objective is asked for;
    else the search's best (see pick_trial)."""
    first = space.search.objectives[0]
    if genome_id is None and objective in (None, first.metric):
        report = validation_report(storage, run, space)
        if report is not None and report.genomes:
            best = min(report.genomes, key=lambda g: first.sign * g.mean)
            seeds = len(best.values)
            return best.candidate.genome_id, (
                f"the best of {len(report.genomes)} validated genomes: {first.metric} "
                f"{best.mean:.4g} (mean of {seeds} seed{'s' * (seeds > 1)} at "
                f"{budget_text(report.budget)})"
            )
    trial = pick_trial(storage, run, space, genome_id, objective)
    if genome_id is not None:
        return trial.genome_id, f"genome {genome_id}, as asked"
    metric = objective or first.metric
    predicted = storage.forecast(run) if metric == first.metric else None
    prediction = predicted.predictions.get(trial.genome_id) if predicted else None
    if predicted is not None and prediction is not None:
        return trial.genome_id, (
            f"the search's best predicted at {budget_text(predicted.budget)}: {metric} "
            f"{prediction.mean:.4g} ({predicted.level:.0%} interval {prediction.low:.4g} to "
            f"{prediction.high:.4g}; {trial.metric(metric):.4g} at rung {trial.rung + 1}; "
            "not validated, see `evo validate`)"
        )
    return trial.genome_id, (
        f"the search's best at rung {trial.rung + 1}: {metric} {trial.metric(metric):.4g}"
        " (not validated; see `evo validate`)"
    )


def promotion_budget(space: SearchSpace, budget: Budget) -> dict[str, float]:
    """The budget asked for, else the space's target, else DEFAULT_BUDGET."""
    if budget.is_set():
        return budget.limits()
    return space.target_budget() or DEFAULT_BUDGET.limits()


def promotion_config(
    space: SearchSpace,
    genes: dict[str, Any],
    budget: dict[str, float],
    corpus: str | None,
    scaling: Scaling = Scaling(),
    rate_factor: float = 1.0,
) -> RunConfig:
    """The genome's model, scaled, and training settings with a pretraining budget (its
    learning rate times `rate_factor`), on the search's corpus and tokenizer (or on
    `corpus`, with a tokenizer of the same kind trained for it)."""
    searched = space.model_config(genes, vocab_size=None)  # the tokenizer sets the vocabulary
    model = scaling.apply(searched, genes)
    train = space.train_config(genes, budget)
    steps = train.max_steps or 1000
    train = dataclasses.replace(
        train,
        learning_rate=train.learning_rate * rate_factor,
        eval_interval=max(1, steps // 10),
        checkpoint_interval=max(1, steps // 5),
        threads=None,
        device="auto",
        seed=trial_seed(space.search.seed, genes),
    )
    data = space.data_config()
    if corpus is not None:
        data = dataclasses.replace(data, corpus=corpus)
    return RunConfig(data=data, model=model, train=train)


def promote(
    storage: Storage,
    run: str,
    *,
    genome_id: int | None = None,
    objective: str | None = None,
    budget: Budget = Budget(),
    scaling: Scaling = Scaling(),
    horizon: HorizonRate = HorizonRate(),
    corpus: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    nproc: int = 1,
    say: Callable[[str], None] = lambda line: None,
) -> Path:
    """Train the chosen genome (see pick_genome), scaled, into `out` (default:
    results/RUN/promoted-genome-G…), recorded in `storage`; `say` is told which genome
    and why, the promoted model's shape when it was scaled, and its learning rate when
    `horizon` changed it. Returns the folder."""
    space = load_run_space(storage, run)
    chosen, reason = pick_genome(storage, run, space, genome_id, objective)
    say(f"promoting genome {chosen}, {reason}")
    genes = storage.genomes(run)[chosen]
    limits = promotion_budget(space, budget)
    rate = horizon_rate(storage, run, space, (chosen, genes), limits, horizon)
    config = promotion_config(space, genes, limits, corpus, scaling, rate["factor"])
    searched = space.model_config(genes, vocab_size=None)
    folder = f"promoted-genome-{chosen}{scaling.folder_suffix(searched)}{horizon.folder_suffix()}"
    out_dir = Path(out) if out else Path("results") / run / folder
    check_promotion(config, out_dir, resume, nproc)
    if config.model != searched:
        say(f"scaled from {shape_text(searched)} to {shape_text(config.model)}")
    if rate["factor"] != 1:
        say(
            f"learning rate {config.train.learning_rate:.3g}: the genome's "
            f"{rate['searched']:.3g} × {rate['factor']:.3g}, for {rate['tokens']:,.0f} tokens "
            f"where its rung trained {rate['scored_tokens']:,.0f} (--lr-horizon "
            f"{horizon.exponent:g})"
        )
    provenance = {
        "run": run,
        "genome_id": chosen,
        "genes": genes,
        "chosen": reason,
        "searched": model_shape(searched),
        "promoted": model_shape(config.model),
        "budget": limits,
        "learning_rate": {**rate, "promoted": config.train.learning_rate},
    }
    make_folder(out_dir)
    write_json(out_dir / PROVENANCE_FILE, provenance)
    recorded = {PROVENANCE: provenance}
    promotion = storage.record_promotion(run, chosen, str(out_dir), RunStatus.RUNNING, recorded)
    try:
        if nproc > 1:
            status, metrics = train_in_processes(config, out_dir, resume, nproc)
        else:
            status, metrics = train_here(config, out_dir, resume)
    except BaseException:
        storage.update_promotion(promotion, RunStatus.FAILED, None)
        raise
    storage.update_promotion(promotion, status, None if metrics is None else metrics | recorded)
    return out_dir


def horizon_rate(
    storage: Storage,
    run: str,
    space: SearchSpace,
    genome: tuple[int, dict[str, Any]],
    limits: dict[str, float],
    horizon: HorizonRate,
) -> dict[str, Any]:
    """The searched learning rate of `genome` (its id and genes), the factor `horizon` puts
    on it for a run of `limits`, and the tokens of that run and of the highest rung the
    genome reached (the budget its rate was judged at): what provenance.json records."""
    genome_id, genes = genome
    train = space.train_config(genes)
    rate: dict[str, Any] = {"searched": train.learning_rate, "factor": 1.0}
    if horizon.exponent == 0:
        return rate
    reached = pick_trial(storage, run, space, genome_id, None).rung
    scored = budget_tokens(space.rung_budgets()[reached], train, "--lr-horizon")
    tokens = budget_tokens(limits, train, "--lr-horizon")
    return rate | {
        "factor": horizon.factor(scored, tokens),
        "horizon_exponent": horizon.exponent,
        "scored_tokens": scored,
        "tokens": tokens,
    }


def check_promotion(config: RunConfig, out_dir: Path, resume: bool, nproc: int) -> None:
    """Refuse whatever can be refused before the promotion is recorded, so that a typo
    leaves no failed promotion behind: the folder, a resume of another config, the
    processes, the data (prepared here, and found in the cache by the run) and the model
    with the tokenizer's vocabulary."""
    check_out_dir(out_dir, resume)
    if resume:
        check_same_run(out_dir, json.loads(json.dumps(to_dict(config))))
    check_divisible(config.train.batch_size, nproc)
    tokenizer = prepare(config.data, progress=False).tokenizer
    model_config_for(config.model, tokenizer.vocab_size)


def shape_text(model: ModelConfig) -> str:
    """A model's shape and parametrization in words, as promotion says it."""
    base = f", base width {model.mup_base_width}" if model.parametrization == "mup" else ""
    heads = f"{model.n_heads} heads" + (
        f" ({model.kv_heads} key/value)" if model.n_kv_heads is not None else ""
    )
    return (
        f"d_model {model.d_model}, {model.n_layers} layers, {heads}, d_ff {model.d_ff} "
        f"({model.parametrization}{base})"
    )


def model_shape(model: ModelConfig) -> dict[str, Any]:
    """What provenance records of a model's shape and parametrization."""
    keys = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "parametrization")
    shape = {key: getattr(model, key) for key in keys}
    if model.parametrization == "mup":
        shape |= {
            "mup_base_width": model.mup_base_width,
            "mup_base_head_dim": model.mup_base_head_dim,
        }
    return shape


def train_here(config: RunConfig, out_dir: Path, resume: bool) -> tuple[RunStatus, Metrics]:
    """Train in this process: how the run ended, and its final metrics (None: none)."""
    outcome = train_run(config, out_dir, resume=resume)
    if outcome.stop_reason == "interrupted":
        return RunStatus.INTERRUPTED, None
    if outcome.final is None:
        return RunStatus.FAILED, None
    return RunStatus.FINISHED, promotion_metrics(out_dir)


def train_in_processes(
    config: RunConfig, out_dir: Path, resume: bool, nproc: int
) -> tuple[RunStatus, Metrics]:
    """Train as `llm train` in `nproc` data-parallel processes, this one recording the
    promotion alone; the run's config is written beside it for them to read."""
    config_file = out_dir / PROMOTION_CONFIG
    write_json(config_file, to_dict(config))
    args = ["train", str(config_file), "--out", str(out_dir), *(["--resume"] * resume)]
    code = launch("llm.cli", args, nproc)
    if code == EXIT_INTERRUPTED:
        return RunStatus.INTERRUPTED, None
    if code != 0:
        return RunStatus.FAILED, None
    return RunStatus.FINISHED, promotion_metrics(out_dir)


def promotion_metrics(out_dir: Path) -> dict[str, Any]:
    """What a promotion records of its finished run's metrics.json (`llm.run.run_metrics`):
    the final evaluation's metrics, the steps and tokens it trained, and the tokens it
    was scored on."""
    saved = read_json_object(out_dir / METRICS_FILE, UserError, f"{out_dir}: no {METRICS_FILE}")
    metrics = {key: saved[key] for key in (*EVAL_METRICS, "steps", "tokens")}
    return {**metrics, EVAL_TOKENS: saved["eval_tokens"]}
