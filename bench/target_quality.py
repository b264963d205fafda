"""Quality at the target budget: does the search find a better model than a person, or a
cheaper search, would for the same training run?

For each seed, three models are trained to the space's target budget (`search.target`)
with `evo promote`'s trainer, on the same corpus, tokenizer and validation text, and
scored in bits per byte on the whole validation split:

- ours: the best genome of the space's own search (steady-state, rungs; its budget as
  the space states it), run on a local Ray instance as `evo run` does, then promoted.
  `tiny.yaml` starts its search from (a)'s shape (`search.initial`): the search is asked
  to improve on the default, not to rediscover it.
- (a): a model of configs/tiny.yaml's shape and training settings (the hand-picked
  default), trained for the target budget.
- (b): the best genome of a generational search of single-fidelity 150-step trials
  (population 6 × 8 generations, the previous default), promoted the same way. It is
  given the same space, initial genomes included: only the method differs.

Our promotion trains with the warmup-stable-decay schedule of the rungs, while (a) and
(b) keep the cosine schedule of their settings; so that the search's share of a gain can
be told from the schedule's, (a) and (b) are also trained with wsd, as (a') and (b').

Prints each model's score and what each search spent, then the ratio against the best of
(a') and (b') (same schedule), and last `ratio=<ours / best of (a), (b)>` (the median
over seeds; below 1 is better).

`--far`: a target 9x beyond the top rung, where the search must pick for a run it never
trained (issue 23): rungs of 74k, 222k and 444k tokens and a 4M-token target (under one
pass of python-code's 4.4M training tokens), 3 seeds by default. For each seed, the
search's pick (`evo promote`'s, by prediction where the search makes one) and the naive
pick (the best measured score at the top rung) are promoted to the target, against (a')
alone: configs/tiny.yaml's model trained on the same tokens with the same wsd schedule,
so that the schedule alone does not count. Prints `ratio=<ours / (a')>` and the naive
pick's ratio beside (medians over seeds). Hours on 2 cores; `--quick` runs the same
comparison at a 72k-token target (rungs of 8k and 24k tokens, a 200k-token search, no
initial genome, 1 seed) in minutes, a check that it runs, not a result.

    python bench/target_quality.py --seeds 1
    python bench/target_quality.py --far            # 3 seeds, hours
    python bench/target_quality.py --far --quick    # minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from evo.data import prepare_data
from evo.driver import make_search, open_run
from evo.executor import make_executor
from evo.metrics import TrialStatus
from evo.promote import promote, promotion_config
from evo.space import SearchSpace, load_space
from evo.storage import Storage
from evo.summary import utilization
from llm.config import RunConfig, load_run_config
from llm.run import train_run

GENERATIONAL = [
    "search.mode=generational",
    "search.rungs=null",
    "search.min_budget=null",
    "search.max_budget=null",
    "search.budget={}",
    "search.population=6",
    "search.generations=8",
    "trial.max_steps=150",
]
# A target 9x beyond the top rung. The lowest rung is the shortest in which the initial
# genome's warmup (20 steps of 2,048 tokens) ends before its cool-down: 49k tokens, a
# third of the next, would leave it 19 steps.
FAR = ["search.target.max_tokens=4000000", "search.rungs=[74000, 222000, 444000]"]
# Minutes: rungs too short for the initial genome's 20 warmup steps, so the search starts
# from its Latin hypercube alone (repaired to fit).
FAR_QUICK = [
    "search.target.max_tokens=72000",
    "search.rungs=[8000, 24000]",
    "search.budget.tokens=200000",
    "search.initial=[]",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--baseline", default="configs/tiny.yaml", help="the hand-picked config (a)")
    p.add_argument("--seeds", type=int, help="default: 1, or 3 with --far")
    p.add_argument("--far", action="store_true", help="rungs up to 444k tokens, a 4M target")
    p.add_argument("--quick", action="store_true", help="with --far: minutes, 1 seed")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    if args.quick and not args.far:
        p.error("--quick goes with --far")
    if args.seeds is None:
        args.seeds = 3 if args.far and not args.quick else 1
    return args


@dataclass(frozen=True)
class Searched:
    bits_per_byte: float
    genes: dict[str, object]
    trials: int
    tokens: int
    worker_seconds: float
    seconds: float  # wall time of the search alone
    utilization: float | None  # busy worker-seconds over available ones


def search(space: SearchSpace, name: str, folder: Path) -> tuple[Storage, float]:
    """Run the space's search on a local Ray instance; its storage and wall seconds."""
    storage = Storage(f"sqlite:///{folder / 'evo.db'}")
    open_run(storage, name, space)
    data, vocab = prepare_data(space)
    executor = make_executor(space, local=False)
    started = time.perf_counter()
    try:
        make_search(space, name, storage, executor, data, vocab).run()
    finally:
        executor.close()
    return storage, time.perf_counter() - started


def promoted(
    storage: Storage, name: str, folder: Path, seconds: float, genome_id: int | None = None
) -> Searched:
    """The genome `evo promote` picks (or `genome_id`) trained to the target, and what
    the search spent (`seconds`: its wall time)."""
    out = folder / f"{name}-promoted{'' if genome_id is None else f'-{genome_id}'}"
    promote(storage, name, genome_id=genome_id, out=out)
    promotion = storage.promotions(name)[-1]
    assert promotion.metrics is not None, f"the promotion of {name} {promotion.status}"
    spent = storage.spent(name)
    busy = utilization(storage.trial_summaries(name), storage.run_sessions(name))
    return Searched(
        bits_per_byte=promotion.metrics["bits_per_byte"],
        genes=storage.genomes(name)[promotion.genome_id],
        trials=spent.trials,
        tokens=spent.tokens,
        worker_seconds=spent.worker_seconds,
        seconds=seconds,
        utilization=busy,
    )


def search_then_promote(space: SearchSpace, name: str, folder: Path) -> Searched:
    storage, seconds = search(space, name, folder)
    return promoted(storage, name, folder, seconds)


def naive_pick(storage: Storage, name: str, space: SearchSpace) -> int:
    """The genome with the best measured score at the highest rung reached, by the first
    objective: the pick of a search that cannot see past its top rung (kept here, as
    `evo promote`'s own pick may rank by prediction)."""
    objective = space.search.objectives[0]
    metric = objective.metric
    scores = {
        (t.rung, t.genome_id): objective.sign * (t.metric(metric) or 0.0)
        for t in storage.trials(name)
        if t.status is TrialStatus.DONE and t.metric(metric) is not None
    }
    top = max(rung for rung, _ in scores)
    return min((key for key in scores if key[0] == top), key=scores.__getitem__)[1]


def hand_picked(
    space: SearchSpace, config_file: str, seed: int, folder: Path, schedule: str
) -> float:
    """configs/tiny.yaml's model and training, on the space's data, for the target."""
    config = load_run_config(config_file)
    target = space.target_budget()
    assert target is not None, "the space needs search.target"
    budget = {"max_steps": None, "max_tokens": None, "max_seconds": None, **target}
    train = dataclasses.replace(
        config.train, **budget, seed=seed, eval_interval=0, schedule=schedule
    )
    run = dataclasses.replace(config, data=space.data_config(), train=train)
    return trained(run, folder / f"hand-picked-{schedule}-{seed}")


def with_wsd(space: SearchSpace, genes: dict[str, object], folder: Path) -> float:
    """A genome promoted as `evo promote` does, but with the wsd schedule."""
    target = space.target_budget()
    assert target is not None, "the space needs search.target"
    config = promotion_config(space, genes, target, None)
    run = dataclasses.replace(config, train=dataclasses.replace(config.train, schedule="wsd"))
    return trained(run, folder)


def trained(run: RunConfig, folder: Path) -> float:
    outcome = train_run(run, folder, progress=False)
    assert outcome.final is not None, f"{folder.name} diverged"
    return outcome.final.bits_per_byte


def describe(searched: Searched) -> str:
    genes = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in searched.genes.items()
    )
    return (
        f"{searched.bits_per_byte:.4f}  (search: {searched.trials} trials, "
        f"{searched.tokens:,} tokens, {searched.worker_seconds:,.0f} worker-s, "
        f"{searched.seconds:.0f} s, utilization {100 * (searched.utilization or 0):.0f}%; "
        f"genome {genes})"
    )


def near(args: argparse.Namespace) -> None:
    """The target is the top rung: ours against (a), (b) and their wsd versions."""
    ratios, same_schedule = [], []
    for seed in range(args.seeds):
        space = load_space(args.space, [*args.overrides, f"search.seed={seed}"])
        single = load_space(args.space, [*args.overrides, *GENERATIONAL, f"search.seed={seed}"])
        prepare_data(space, progress=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            ours = search_then_promote(space, f"bench-ours-{seed}", folder)
            print(f"seed {seed} ours: {describe(ours)}", flush=True)
            a = hand_picked(space, args.baseline, seed, folder, "cosine")
            print(f"seed {seed} (a) {args.baseline}: {a:.4f}", flush=True)
            a_wsd = hand_picked(space, args.baseline, seed, folder, "wsd")
            print(f"seed {seed} (a') {args.baseline} with wsd: {a_wsd:.4f}", flush=True)
            b = search_then_promote(single, f"bench-single-{seed}", folder)
            print(f"seed {seed} (b) 150-step generational search: {describe(b)}", flush=True)
            b_wsd = with_wsd(single, b.genes, folder / f"single-wsd-{seed}")
            print(f"seed {seed} (b') its genome with wsd: {b_wsd:.4f}", flush=True)
        ratios.append(ours.bits_per_byte / min(a, b.bits_per_byte))
        same_schedule.append(ours.bits_per_byte / min(a_wsd, b_wsd))
        print(
            f"seed {seed}: ratio {ratios[-1]:.4f}; with the same schedule {same_schedule[-1]:.4f}",
            flush=True,
        )
    print(f"ratio against (a') and (b'), the same schedule: {statistics.median(same_schedule):.4f}")
    print(f"ratio={statistics.median(ratios):.4f}")


def far(args: argparse.Namespace) -> None:
    """The target 9x beyond the top rung: the search's pick and the naive pick, each
    promoted to the target, against (a') trained on the same tokens with wsd."""
    ladder = FAR_QUICK if args.quick else FAR
    ours_ratios, naive_ratios = [], []
    for seed in range(args.seeds):
        space = load_space(args.space, [*ladder, *args.overrides, f"search.seed={seed}"])
        if seed == 0:
            print(
                f"rungs {space.rung_budgets()}, target {space.target_budget()}, search budget "
                f"{space.search.budget.limits()}",
                flush=True,
            )
        prepare_data(space, progress=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder, name = Path(tmp), f"bench-far-{seed}"
            storage, seconds = search(space, name, folder)
            ours = promoted(storage, name, folder, seconds)
            print(f"seed {seed} ours: {describe(ours)}", flush=True)
            naive_id = naive_pick(storage, name, space)
            ours_id = storage.promotions(name)[-1].genome_id
            naive = (
                ours if naive_id == ours_id else promoted(storage, name, folder, seconds, naive_id)
            )
            same = " (the same genome)" if naive_id == ours_id else ""
            print(f"seed {seed} naive (best at the top rung){same}: {describe(naive)}", flush=True)
            started = time.perf_counter()
            a_wsd = hand_picked(space, args.baseline, seed, folder, "wsd")
            minutes = (time.perf_counter() - started) / 60
            print(f"seed {seed} (a') {args.baseline} with wsd: {a_wsd:.4f} ({minutes:.1f} min)")
        ours_ratios.append(ours.bits_per_byte / a_wsd)
        naive_ratios.append(naive.bits_per_byte / a_wsd)
        print(f"seed {seed}: ratio {ours_ratios[-1]:.4f}; naive {naive_ratios[-1]:.4f}", flush=True)
    print(f"naive pick's ratio against (a'): {statistics.median(naive_ratios):.4f}")
    print(f"ratio={statistics.median(ours_ratios):.4f}")


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    (far if args.far else near)(args)
    print(f"{(time.perf_counter() - started) / 60:.1f} min in all")


if __name__ == "__main__":
    main()
