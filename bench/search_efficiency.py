"""Search efficiency: the GA against random search on the same space and trial function.

For each seed, the GA runs a search of N trials (in-process, through the real driver),
and random search trains 2N valid genomes drawn from the same space. Both use the same
`run_trial`, so a genome gets the same result under either method. Prints the best
bits per byte after each trial count for each method (median over seeds) and, last,
`ratio=<GA best after N / random best after 2N>` (below 1 means the GA is better).

    python bench/search_efficiency.py --seeds 3 --set trial.max_steps=30
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

from evo.driver import Search, open_run, prepare_data, trial_seed
from evo.executor import LocalExecutor, TrialData, TrialJob, execute_job
from evo.operators import make_toolbox, to_genome
from evo.space import SearchSpace, load_space
from evo.storage import Storage

METRIC = "bits_per_byte"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    return p.parse_args()


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], float("inf")
    for value in values:
        best = min(best, value)
        out.append(best)
    return out


def ga_curve(space: SearchSpace, data: TrialData, vocab: int, folder: Path, seed: int) -> list:
    storage = Storage(f"sqlite:///{folder / f'ga-{seed}.db'}")
    open_run(storage, "ga", space)
    Search(space, "ga", storage, LocalExecutor(), data, vocab).run()
    trials = sorted(storage.trials("ga"), key=lambda t: t.id)
    return best_so_far([t.bits_per_byte or float("inf") for t in trials])


def random_curve(space: SearchSpace, data: TrialData, vocab: int, seed: int, n: int) -> list:
    toolbox = make_toolbox(space, vocab)
    random.seed(seed)
    values = []
    for _ in range(n):
        genes = to_genome(space, toolbox.individual())
        job = TrialJob(
            genome_id=0,
            model=space.model_config(genes, vocab),
            train=space.train_config(genes),
            seed=trial_seed(space.search.seed, genes),
            adapt_train=space.adapt_train_config(genes),
            lora_rank=space.lora_rank(genes),
        )
        values.append(execute_job(job, data).result.metric(METRIC) or float("inf"))
    return best_so_far(values)


def median_curve(curves: list[list[float]], length: int) -> list[float]:
    return [statistics.median(c[min(i, len(c) - 1)] for c in curves) for i in range(length)]


def main() -> None:
    args = parse_args()
    ga_curves, random_curves = [], []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            space = load_space(args.space, [*args.overrides, f"search.seed={seed}"])
            data, vocab = prepare_data(space)
            ga = ga_curve(space, data, vocab, Path(folder), seed)
            ga_curves.append(ga)
            random_curves.append(random_curve(space, data, vocab, seed, 2 * len(ga)))
            print(
                f"seed {seed}: GA {len(ga)} trials best {ga[-1]:.4f}; "
                f"random {2 * len(ga)} trials best {random_curves[-1][-1]:.4f}"
            )
    n = min(len(c) for c in ga_curves)
    ga, rnd = median_curve(ga_curves, n), median_curve(random_curves, 2 * n)
    print("trials  GA_best  random_best  (median over seeds)")
    for i in range(2 * n):
        ga_value = f"{ga[i]:.4f}" if i < n else "-"
        print(f"{i + 1:6d}  {ga_value:>7}  {rnd[i]:.4f}")
    print(f"ratio={ga[n - 1] / rnd[2 * n - 1]:.3f}")


if __name__ == "__main__":
    main()
