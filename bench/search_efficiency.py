"""Search efficiency: the GA against random search and Optuna's samplers, on the same
space and the same trial function.

Every method looks for the lowest value of one metric (`--metric`, bits per byte by
default), so the GA runs here with that single objective, whatever the space's file
says: a best value is what is compared, and a GA that also spends trials on a second
objective would be measured on a task it does not do. For each seed the GA runs a search
of N = population × generations trials (through the real driver, in-process); random
search trains 2N genomes drawn from the same space; Optuna's NSGA-II and TPE samplers,
when optuna is installed, get N trials each through an ask/tell loop. Every method
trains a genome the same way (`trial_job`, seeded by the genome), so a genome gets the
same result under any of them. The (method, seed) runs share `--workers` processes.

Prints the best value after each trial count for each method (median over seeds); then
the worker utilization of a real run of the space file as written (no --set), on a local
Ray instance with one worker per core (skip it with --no-utilization); and, last,
`ratio=<GA best after N / random best after 2N>` (for a metric to minimise, at most 1
means the GA is worth twice the trials of random search).

    python bench/search_efficiency.py --seeds 3 --set trial.max_steps=60
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from evo.driver import Search, open_run, prepare_data, trial_seed
from evo.executor import LocalExecutor, TrialJob, execute_job, make_executor
from evo.operators import make_toolbox, repair, to_genome, to_individual
from evo.space import Domain, SearchSpace, load_space
from evo.storage import Storage

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None
METHODS = ["GA", *(["optuna-nsga2", "optuna-tpe"] if HAS_OPTUNA else []), "random"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--metric", default="bits_per_byte")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument(
        "--no-utilization",
        dest="utilization",
        action="store_false",
        help="skip the real run of the space file that measures worker utilization",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=METHODS,
        help="the methods to run (GA and random are always among them: the ratio needs both)",
    )
    args = p.parse_args()
    args.methods = [m for m in METHODS if m in {"GA", "random", *args.methods}]
    return args


def bench_space(args: argparse.Namespace, seed: int) -> SearchSpace:
    single = [f"search.objectives=[{args.metric}]", "search.selection=auto"]
    return load_space(args.space, [*args.overrides, *single, f"search.seed={seed}"])


class Trials:
    """The trial function every method calls: a genome in, the metric's value out (inf
    for a failed trial, so that it is never the best)."""

    def __init__(self, space: SearchSpace, metric: str) -> None:
        self.space, self.metric = space, metric
        self.data, self.vocab = prepare_data(space)

    def __call__(self, genes: dict[str, Any]) -> float:
        result = execute_job(trial_job(self.space, genes, self.vocab), self.data).result
        value = result.metric(self.metric)
        return math.inf if value is None else value


def trial_job(space: SearchSpace, genes: dict[str, Any], vocab: int) -> TrialJob:
    return TrialJob(
        genome_id=0,
        model=space.model_config(genes, vocab),
        train=space.train_config(genes),
        seed=trial_seed(space.search.seed, genes),
        adapt_train=space.adapt_train_config(genes),
        lora_rank=space.lora_rank(genes),
    )


def ga_values(space: SearchSpace, trials: Trials, n: int, folder: Path) -> list[float]:
    storage = Storage(f"sqlite:///{folder / f'ga-{space.search.seed}.db'}")
    open_run(storage, "ga", space)
    Search(space, "ga", storage, LocalExecutor(), trials.data, trials.vocab).run()
    records = sorted(storage.trials("ga"), key=lambda t: t.id)
    values = [t.metric(trials.metric) for t in records if t.status != "running"]
    return [math.inf if v is None else v for v in values][:n]


def random_values(space: SearchSpace, trials: Trials, n: int, folder: Path) -> list[float]:
    toolbox = make_toolbox(space, trials.vocab)
    return [trials(to_genome(space, toolbox.individual())) for _ in range(n)]


def optuna_distribution(domain: Domain) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if domain.kind == "float":
        low, high = domain.bounds
        return FloatDistribution(low, high, log=bool(domain.log))
    if domain.kind == "int":
        values = domain.values()
        return IntDistribution(values[0], values[-1], step=domain.step or 1)
    return CategoricalDistribution(domain.values())


def optuna_values(sampler_name: str) -> Callable[[SearchSpace, Trials, int, Path], list[float]]:
    def run(space: SearchSpace, trials: Trials, n: int, folder: Path) -> list[float]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = space.search.seed
        sampler = (
            # Generations of the GA's size: with Optuna's default of 50, a budget of a few
            # dozen trials would never leave the random first generation.
            optuna.samplers.NSGAIISampler(population_size=space.search.population, seed=seed)
            if sampler_name == "nsga2"
            else optuna.samplers.TPESampler(seed=seed)
        )
        direction = {"min": "minimize", "max": "maximize"}[space.search.objectives[0].direction]
        study = optuna.create_study(direction=direction, sampler=sampler)
        distributions = {name: optuna_distribution(d) for name, d in space.genes.items()}
        values = []
        for _ in range(n):
            trial = study.ask(distributions)
            # Optuna cannot express our constraints (head counts dividing d_model, the
            # parameter ceiling), so a sampled genome is repaired with the GA's own repair
            # and trained. Optuna is told the repaired genome's value for the genome it
            # proposed (Baldwinian repair): its record stays a set of its own proposals,
            # which its samplers need, while every proposal costs exactly one trial, as a
            # GA offspring does. Reporting an invalid proposal as failed instead would spend
            # a trial on training nothing, and teach the sampler to shy away from the
            # parameter ceiling, which is where the best genomes of a size-capped space lie.
            proposal = to_individual(space, trial.params)
            value = trials(to_genome(space, repair(proposal, space, trials.vocab)))
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            values.append(value)
        return values

    return run


RUNNERS: dict[str, Callable[[SearchSpace, Trials, int, Path], list[float]]] = {
    "GA": ga_values,
    "optuna-nsga2": optuna_values("nsga2"),
    "optuna-tpe": optuna_values("tpe"),
    "random": random_values,
}


def run_method(
    args: argparse.Namespace, method: str, seed: int, n: int, folder: str
) -> tuple[str, int, list[float], float]:
    """One method's search for one seed, in a worker process; its values in trial order."""
    started = time.perf_counter()
    space = bench_space(args, seed)
    random.seed(seed)
    values = RUNNERS[method](space, Trials(space, args.metric), n, Path(folder))
    return method, seed, values, time.perf_counter() - started


def objective_sign(space: SearchSpace) -> float:
    """+1 for a first objective to minimise, -1 for one to maximise."""
    return 1.0 if space.search.objectives[0].direction == "min" else -1.0


def best_so_far(values: list[float], sign: float) -> list[float]:
    out, best = [], math.inf
    for value in values:
        best = min(best, sign * value)
        out.append(sign * best)
    return out


def median_curve(curves: list[list[float]]) -> list[float]:
    length = min(len(c) for c in curves)
    return [statistics.median(c[i] for c in curves) for i in range(length)]


@dataclass(frozen=True)
class RealRun:
    """What a real run of a space file showed."""

    utilization: float  # busy worker-seconds over available ones, mean per generation
    workers: int
    seconds: float
    metric: str  # the space's first objective
    best: list[float]  # its best value after each generation


def real_run(space_file: str) -> RealRun:
    """Run the space file's search on a local Ray instance, as `evo run` does."""
    space = load_space(space_file)
    executor = make_executor(space, local=False)
    data, vocab = prepare_data(space)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        storage = Storage(f"sqlite:///{Path(folder) / 'utilization.db'}")
        open_run(storage, "utilization", space)
        try:
            Search(space, "utilization", storage, executor, data, vocab).run()
        finally:
            executor.close()
        generations = storage.generations("utilization")
    busy = [g.stats["utilization"] for g in generations if g.stats.get("utilization")]
    first = space.search.objectives[0].metric
    extreme = "min" if objective_sign(space) > 0 else "max"
    best = [g.stats["objectives"][first][extreme] for g in generations]
    seconds = time.perf_counter() - started
    return RealRun(statistics.mean(busy), int(executor.capacity), seconds, first, best)


def main() -> None:
    args = parse_args()
    space = bench_space(args, 0)
    n = space.search.population * space.search.generations
    sign = objective_sign(space)
    prepare_data(space, progress=True)  # fills the disk cache the workers read from
    methods = args.methods
    budgets = {method: 2 * n if method == "random" else n for method in methods}
    curves: dict[str, list[list[float]]] = {method: [] for method in methods}
    started = time.perf_counter()
    context = get_context("spawn")  # torch's thread pools do not survive fork
    with (
        tempfile.TemporaryDirectory() as folder,
        ProcessPoolExecutor(args.workers, mp_context=context) as pool,
    ):
        # The longest runs first, so the last to finish is short.
        jobs = [
            pool.submit(run_method, args, method, seed, budgets[method], folder)
            for method in sorted(methods, key=lambda m: -budgets[m])
            for seed in range(args.seeds)
        ]
        for job in as_completed(jobs):
            method, seed, values, seconds = job.result()
            curves[method].append(best_so_far(values, sign))
            print(
                f"seed {seed} {method}: {len(values)} trials, best {curves[method][-1][-1]:.4f}"
                f" ({seconds:.0f} s)",
                flush=True,
            )
    medians = {method: median_curve(c) for method, c in curves.items()}
    print(f"{args.metric}, best after each trial count (median over {args.seeds} seeds):")
    print("trials " + " ".join(f"{m:>12}" for m in methods))
    for i in range(max(len(c) for c in medians.values())):
        cells = [f"{c[i]:12.4f}" if i < len(c) else f"{'-':>12}" for c in medians.values()]
        print(f"{i + 1:6d} " + " ".join(cells))
    ga, ga_trials = medians["GA"][-1], len(medians["GA"])
    for method in methods[1:]:
        other, trials = medians[method][-1], len(medians[method])
        print(f"GA after {ga_trials} / {method} after {trials}: {ga / other:.3f}")
    print(f"{time.perf_counter() - started:.0f} s in all, {args.workers} workers")
    if args.utilization:
        run = real_run(args.space)
        bests = ", ".join(f"{value:.3f}" for value in run.best)
        print(f"a real run of {args.space} as written, {run.workers} Ray workers:")
        print(f"  {run.seconds:.0f} s after the data preparation")
        print(f"  best {run.metric} after each generation: {bests}")
        print(f"  worker utilization: {100 * run.utilization:.0f}%")
    print(f"ratio={ga / medians['random'][-1]:.3f}")


if __name__ == "__main__":
    main()
