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

    python bench/target_quality.py --seeds 1
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--baseline", default="configs/tiny.yaml", help="the hand-picked config (a)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    return p.parse_args()


@dataclass(frozen=True)
class Searched:
    bits_per_byte: float
    genes: dict[str, object]
    trials: int
    tokens: int
    worker_seconds: float
    seconds: float  # wall time of the search alone
    utilization: float | None  # busy worker-seconds over available ones


def search_then_promote(space: SearchSpace, name: str, folder: Path) -> Searched:
    storage = Storage(f"sqlite:///{folder / 'evo.db'}")
    open_run(storage, name, space)
    data, vocab = prepare_data(space)
    executor = make_executor(space, local=False)
    started = time.perf_counter()
    try:
        make_search(space, name, storage, executor, data, vocab).run()
    finally:
        executor.close()
    seconds = time.perf_counter() - started
    promote(storage, name, out=folder / f"{name}-promoted")
    promotion = storage.promotions(name)[-1]
    assert promotion.metrics is not None, f"the promotion of {name} {promotion.status}"
    spent = storage.spent(name)
    busy = utilization(storage.trials_frame(name), storage.run_sessions(name))
    return Searched(
        bits_per_byte=promotion.metrics["bits_per_byte"],
        genes=storage.genomes(name)[promotion.genome_id],
        trials=spent.trials,
        tokens=spent.tokens,
        worker_seconds=spent.worker_seconds,
        seconds=seconds,
        utilization=busy,
    )


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


def main() -> None:
    args = parse_args()
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


if __name__ == "__main__":
    main()
