"""Search efficiency at equal compute: evo's steady-state search against random search,
random search with ASHA, Optuna's TPE with its Hyperband pruner, and Optuna's NSGA-II.

Every method gets the same budget of training tokens (the space's `search.budget.tokens`,
counting every trial's tokens, cool-downs and pruned trials included), searches the same
space, trains a genome with the same trial function (`execute_job`, seeded by the genome),
and is scored by the best bits per byte it found at the top rung. Methods that can use
rungs use the space's rungs, continuing each genome from its checkpoint:

- evo: the space's search as `evo run` runs it (aging evolution, ASHA advancing).
- random+asha: the same scheduler with random proposals instead of offspring.
- random: random genomes, each trained straight to the top rung.
- tpe+hyperband: Optuna's TPESampler (10 random start-up trials, its default) with a
  HyperbandPruner over the rungs (a trial reports each rung and stops when pruned).
- nsga2: Optuna's NSGAIISampler with a population of a quarter of the trials the budget
  buys at the top rung, each trial trained straight to the top rung (it cannot prune).

Every method starts from the space's `search.initial` genomes (Optuna's through
`enqueue_trial`). Optuna cannot express the space's constraints, so its proposals are
repaired with evo's own repair before training, and Optuna is told the repaired genome's
value. Each (method, seed) runs in its own process on one core; `--workers` of them at a
time.

Prints each method's final best over the seeds (median, interquartile mean with a
bootstrap 95% interval), a Wilcoxon signed-rank test of evo against each, writes the
anytime curves (best so far against tokens spent; interquartile mean and interval over
the seeds) as a plotly HTML page, and last `ratio=<evo median / best other median>`.

    python bench/search_efficiency.py --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from scipy import stats

from evo.checkpoints import CheckpointStore
from evo.data import TrialData, prepare_data
from evo.driver import open_run
from evo.executor import LocalExecutor, execute_job
from evo.metrics import TrialStatus
from evo.operators import initial_population, repair, to_genome, to_individual
from evo.search.steady_state import SteadyStateSearch
from evo.search.trials import make_job
from evo.space import Domain, SearchSpace, load_space
from evo.storage import Storage
from evo.summary import anytime_curve
from llm.optim import planned_steps

METHODS = ["evo", "random+asha", "random", "tpe+hyperband", "nsga2"]
Curve = list[tuple[float, float]]  # (tokens spent, best value so far), after each result


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--html", default="results/search_efficiency.html")
    p.add_argument("--json", help="also write every run's curve here")
    args = p.parse_args()
    args.methods = [m for m in METHODS if m in {"evo", *args.methods}]
    return args


def bench_space(args: argparse.Namespace, seed: int, extra: list[str] | None = None) -> SearchSpace:
    single = ["search.objectives=[bits_per_byte]", "search.selection=auto"]
    return load_space(args.space, [*args.overrides, *single, f"search.seed={seed}", *(extra or [])])


def top_only(args: argparse.Namespace, seed: int) -> SearchSpace:
    """The space with its top rung as the only one."""
    space = bench_space(args, seed)
    top = space.rung_budgets()[-1]
    value = next(iter(top.values()))
    return bench_space(
        args, seed, [f"search.rungs=[{value}]", "search.min_budget=null", "search.max_budget=null"]
    )


def tokens_limit(space: SearchSpace) -> float:
    limit = space.search.budget.tokens
    assert limit is not None, "the space needs search.budget.tokens"
    return float(limit)


# evo's own scheduler, with offspring or random proposals


def scheduler_run(space: SearchSpace, proposer: str, folder: Path, name: str) -> Curve:
    storage = Storage(f"sqlite:///{folder / (name + '.db')}")
    open_run(storage, name, space)
    data, vocab = prepare_data(space)
    checkpoints = CheckpointStore(folder / name)
    search = SteadyStateSearch(
        space,
        name,
        storage,
        LocalExecutor(),
        data,
        vocab,
        proposer=proposer,  # type: ignore[arg-type]
        checkpoints=checkpoints,
    )
    search.run()
    curve = anytime_curve(storage.trial_summaries(name), space, space.search.objectives[0])
    return [(float(p.tokens), math.nan if p.best is None else p.best) for p in curve]


# Optuna


def optuna_distribution(domain: Domain) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if domain.kind == "float":
        low, high = domain.bounds
        return FloatDistribution(low, high, log=bool(domain.log))
    if domain.kind == "int":
        values = domain.values()
        return IntDistribution(values[0], values[-1], step=domain.step or 1)
    return CategoricalDistribution(domain.values())


class Trainer:
    """Trains genomes rung by rung and counts the tokens spent against the budget."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.data: TrialData
        self.data, self.vocab = prepare_data(space)
        self.limit = tokens_limit(space)
        self.spent = 0.0
        self.best = math.inf
        self.curve: Curve = []
        self.store = CheckpointStore(tempfile.mkdtemp(prefix="evo-chain-"))

    def cost(self, genes: dict[str, Any], rung: int, continued: bool = True) -> float:
        """The tokens of training `genes` to `rung`: from the rung below's stable
        checkpoint when `continued`, else from scratch."""
        train = self.space.train_config(genes, self.space.rung_budgets()[rung])
        planned = planned_steps(train)
        assert planned is not None, "the comparison needs step or token rungs"
        start = 0
        if rung and continued:
            below = planned_steps(
                self.space.train_config(genes, self.space.rung_budgets()[rung - 1])
            )
            start = below[0] if below else 0
        return (planned[1] - start) * train.tokens_per_step

    def fits(self, genes: dict[str, Any], rung: int, continued: bool = True) -> bool:
        return self.spent + self.cost(genes, rung, continued) <= self.limit

    def train(self, genes: dict[str, Any], rung: int, resume: Any) -> tuple[float | None, Any]:
        job = make_job(self.space, self.vocab, 0, genes, rung, resume, self.store)
        outcome = execute_job(job, self.data)
        self.spent += outcome.result.metrics["tokens"]
        done = outcome.status is TrialStatus.DONE
        value = outcome.result.metric("bits_per_byte") if done else None
        if value is not None and rung == len(self.space.rung_budgets()) - 1:
            self.best = min(self.best, value)
        self.curve.append((self.spent, self.best))
        return value, outcome.checkpoint

    def proposal(self, study: Any, distributions: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        trial = study.ask(distributions)
        individual = to_individual(self.space, trial.params)
        return trial, to_genome(self.space, repair(individual, self.space, self.vocab))


def enqueue_initial(study: Any, space: SearchSpace, vocab: int) -> None:
    """The space's initial genomes are Optuna's first trials, as they are evo's: every
    method starts from the same given point (Optuna's `enqueue_trial`)."""
    for individual in initial_population(space, vocab, 0):
        study.enqueue_trial(to_genome(space, individual))


def tpe_hyperband(space: SearchSpace, folder: Path, name: str) -> Curve:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rungs = len(space.rung_budgets())
    pruner = optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=rungs, reduction_factor=int(space.search.eta)
    )
    sampler = optuna.samplers.TPESampler(seed=space.search.seed)
    # Hyperband picks a trial's bracket from a hash of the study's name: fixed, so that a
    # seed is reproducible.
    study = optuna.create_study(
        study_name=name, direction="minimize", sampler=sampler, pruner=pruner
    )
    distributions = {name: optuna_distribution(d) for name, d in space.genes.items()}
    trainer = Trainer(space)
    enqueue_initial(study, space, trainer.vocab)
    while True:
        trial, genes = trainer.proposal(study, distributions)
        if not trainer.fits(genes, 0):
            break
        resume, state, value = None, optuna.trial.TrialState.FAIL, None
        for rung in range(rungs):
            if not trainer.fits(genes, rung):
                break
            value, resume = trainer.train(genes, rung, resume)
            if value is None:
                break
            trial.report(value, rung + 1)
            if rung == rungs - 1:
                state = optuna.trial.TrialState.COMPLETE
            elif trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        if state == optuna.trial.TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
        if state != optuna.trial.TrialState.COMPLETE and not trainer.fits(genes, 0):
            break
    return trainer.curve


def nsga2(space: SearchSpace, folder: Path, name: str) -> Curve:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    top = len(space.rung_budgets()) - 1
    trainer = Trainer(space)
    # A population of a quarter of the trials the budget buys, as NSGA-II needs several
    # generations to work; Optuna's default of 50 would never leave the random first one.
    rng = random.Random(0)
    typical = statistics.mean(
        trainer.cost(
            to_genome(space, repair(to_individual(space, space.sample(rng)), space, trainer.vocab)),
            top,
            continued=False,
        )
        for _ in range(20)
    )
    population = max(4, int(trainer.limit / typical) // 4)
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=space.search.seed)
    study = optuna.create_study(study_name=name, direction="minimize", sampler=sampler)
    distributions = {name: optuna_distribution(d) for name, d in space.genes.items()}
    enqueue_initial(study, space, trainer.vocab)
    while True:
        trial, genes = trainer.proposal(study, distributions)
        if not trainer.fits(genes, top, continued=False):
            break
        value, _ = trainer.train(genes, top, None)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    return trainer.curve


RUNNERS: dict[str, Callable[[argparse.Namespace, int, Path], Curve]] = {
    "evo": lambda a, s, f: scheduler_run(bench_space(a, s), "evolution", f, f"evo-{s}"),
    "random+asha": lambda a, s, f: scheduler_run(bench_space(a, s), "random", f, f"asha-{s}"),
    "random": lambda a, s, f: scheduler_run(top_only(a, s), "random", f, f"random-{s}"),
    "tpe+hyperband": lambda a, s, f: tpe_hyperband(bench_space(a, s), f, f"tpe-{s}"),
    "nsga2": lambda a, s, f: nsga2(bench_space(a, s), f, f"nsga2-{s}"),
}


def run_method(args: argparse.Namespace, method: str, seed: int) -> tuple[str, int, Curve, float]:
    started = time.perf_counter()
    random.seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        curve = RUNNERS[method](args, seed, Path(folder))
    return method, seed, curve, time.perf_counter() - started


# Statistics


def iqm(values: np.ndarray) -> float:
    """The interquartile mean: the mean of the middle half."""
    ordered = np.sort(values)
    cut = len(ordered) // 4
    return float(ordered[cut : len(ordered) - cut].mean())


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    samples = rng.choice(values, size=(2000, len(values)), replace=True)
    estimates = np.array([iqm(sample) for sample in samples])
    return float(np.percentile(estimates, 2.5)), float(np.percentile(estimates, 97.5))


def on_grid(curve: Curve, grid: np.ndarray) -> np.ndarray:
    """The best value so far at each point of a grid of tokens spent."""
    spent = np.array([point[0] for point in curve])
    best = np.array([point[1] for point in curve])
    index = np.searchsorted(spent, grid, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.inf)


def write_curves(
    path: Path, curves: dict[str, list[Curve]], limit: float, rng: np.random.Generator
) -> None:
    grid = np.linspace(limit / 50, limit, 50)
    fig = go.Figure()
    for method, runs in curves.items():
        values = np.array([on_grid(curve, grid) for curve in runs])
        middle, low, high = [], [], []
        for column in values.T:
            finite = column[np.isfinite(column)]
            if len(finite) < len(column):  # not every seed has a top-rung result yet
                middle.append(None), low.append(None), high.append(None)
                continue
            middle.append(iqm(finite))
            lo, hi = bootstrap_interval(finite, rng)
            low.append(lo), high.append(hi)
        fig.add_trace(go.Scatter(x=grid, y=middle, mode="lines", name=method))
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([grid, grid[::-1]]),
                y=high + low[::-1],
                fill="toself",
                opacity=0.15,
                line={"width": 0},
                name=f"{method} 95% interval",
                showlegend=False,
            )
        )
    fig.update_layout(
        title="Best top-rung bits per byte against training tokens spent (IQM over seeds)",
        xaxis_title="training tokens spent",
        yaxis_title="best bits per byte at the top rung (lower is better)",
        template="plotly_white",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)


def main() -> None:
    args = parse_args()
    space = bench_space(args, 0)
    limit = tokens_limit(space)
    prepare_data(space, progress=True)  # fills the disk cache the workers read from
    curves: dict[str, list[Curve]] = {method: [] for method in args.methods}
    started = time.perf_counter()
    context = get_context("spawn")  # torch's thread pools do not survive fork
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        jobs = [
            pool.submit(run_method, args, method, seed)
            for seed in range(args.seeds)
            for method in args.methods
        ]
        for job in as_completed(jobs):
            method, seed, curve, seconds = job.result()
            curves[method].append(curve)
            best = curve[-1][1] if curve else math.inf
            spent = curve[-1][0] if curve else 0
            print(
                f"seed {seed} {method}: best {best:.4f} after {spent:,.0f} tokens ({seconds:.0f} s)"
            )
    print(f"{time.perf_counter() - started:.0f} s in all, {args.workers} workers")
    if args.json:
        Path(args.json).write_text(json.dumps(curves))
    rng = np.random.default_rng(0)
    finals = {
        m: np.array([c[-1][1] if c else math.inf for c in runs]) for m, runs in curves.items()
    }
    print(f"best top-rung bits per byte after {limit:,.0f} tokens, over {args.seeds} seeds:")
    print(f"{'method':>14} {'median':>8} {'IQM':>8} {'95% interval':>17} {'Wilcoxon p':>11}")
    for method, values in finals.items():
        finite = values[np.isfinite(values)]
        low, high = bootstrap_interval(finite, rng) if len(finite) else (math.nan, math.nan)
        p = math.nan
        if method != "evo" and len(values) == len(finals["evo"]) and len(values) > 1:
            p = stats.wilcoxon(finals["evo"], values).pvalue
        print(
            f"{method:>14} {np.median(values):8.4f} {iqm(finite) if len(finite) else math.nan:8.4f}"
            f" [{low:.4f}, {high:.4f}] {p:11.3f}"
        )
    write_curves(Path(args.html), curves, limit, rng)
    print(f"anytime curves: {args.html}")
    others = [float(np.median(v)) for m, v in finals.items() if m != "evo"]
    if others:
        print(f"ratio={float(np.median(finals['evo'])) / min(others):.4f}")


if __name__ == "__main__":
    main()
