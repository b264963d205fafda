"""Build the table of real trial results that `bench/replay.py` runs search methods against.

Configurations of a space are trained for real, with evo's own trial function
(`execute_job`), at every rung of the space's ladder and with several seeds: each
(configuration, seed) trains to the lowest rung, then continues from that rung's stable
checkpoint to the next, as an advanced genome does in a search. The configurations are:

1. the space's `search.initial` genomes (the defaults a search starts from);
2. a scrambled Sobol sample of the space (`--sobol`, a power of two), each point mapped
   onto every gene's axis (log axes for log domains) and repaired to a valid genome;
3. the neighbourhoods of the good regions: `--neighbours` mutations (evo's own operator)
   of the best quarter of 1 and 2 by their mean top-rung value.

Every finished (configuration, seed) chain is appended to a journal as one JSON line, so
an interrupted build resumes where it stopped (`--journal`; a torn last line is
ignored). At the end the table is written to `--out` as parquet (temp name, then
renamed), one row per (configuration, seed, rung), with the space, the command and the
build's seconds in the file's metadata.

    python bench/build_table.py --set search.target.max_tokens=225000 \
        --set 'search.rungs=[25000, 75000, 225000]'
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import qmc

from evo.checkpoints import CheckpointStore
from evo.data import TrialData, prepare_data
from evo.driver import space_hash
from evo.executor import execute_job
from evo.metrics import TrialStatus
from evo.operators import initial_population, mutate, repair, to_genome, to_individual, value_at
from evo.search.trials import make_job, trial_seed
from evo.space import SearchSpace, load_space
from evo.storage import genome_hash

Chain = list[dict[str, Any]]  # one row per rung reached


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--sobol", type=int, default=16, help="Sobol points (a power of two)")
    p.add_argument("--neighbours", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--journal", default="results/table/journal.jsonl")
    p.add_argument("--out", default="bench/data/tiny_table.parquet")
    return p.parse_args()


def table_space(space_path: str, overrides: tuple[str, ...], seed: int) -> SearchSpace:
    single = ["search.objectives=[bits_per_byte]", "search.selection=auto"]
    return load_space(space_path, [*overrides, *single, f"search.seed={seed}"])


@cache
def _data(space_path: str, overrides: tuple[str, ...]) -> tuple[TrialData, int]:
    return prepare_data(table_space(space_path, overrides, 0))


def run_chain(
    space_path: str, overrides: tuple[str, ...], seed: int, genes: dict[str, Any]
) -> Chain:
    """Train `genes` with `seed` through every rung, each continuing the one below."""
    space = table_space(space_path, overrides, seed)
    data, vocab = _data(space_path, overrides)
    rows: Chain = []
    resume = None
    store = CheckpointStore(tempfile.mkdtemp(prefix="evo-chain-"))
    for rung, budget in enumerate(space.rung_budgets()):
        outcome = execute_job(make_job(space, vocab, 0, genes, rung, resume, store), data)
        result = outcome.result
        rows.append(
            {
                "rung": rung,
                "budget": next(iter(budget.values())),
                "status": outcome.status.value,
                **{
                    name: result.metrics.get(name)
                    for name in ("bits_per_byte", "val_loss", "params", "tokens", "steps")
                },
                "wall_seconds": result.metrics["wall_seconds"],
                "trial_seed": trial_seed(seed, genes),
            }
        )
        if outcome.status is not TrialStatus.DONE:
            break
        resume = outcome.checkpoint
    shutil.rmtree(store.url, ignore_errors=True)
    return rows


def sobol_configs(space: SearchSpace, vocab: int, n: int) -> list[dict[str, Any]]:
    points = qmc.Sobol(d=len(space.genes), scramble=True, seed=0).random(n)
    domains = list(space.genes.values())
    return [
        to_genome(space, repair(to_individual(space, _genes(space, domains, p)), space, vocab))
        for p in points
    ]


def _genes(space: SearchSpace, domains: list[Any], point: Any) -> dict[str, Any]:
    values = [value_at(d, float(u)) for d, u in zip(domains, point, strict=True)]
    return dict(zip(space.gene_names, values, strict=True))


def neighbour_configs(
    space: SearchSpace, vocab: int, best: list[dict[str, Any]], n: int, seen: set[str]
) -> list[dict[str, Any]]:
    """`n` new genomes, each one mutation (about one gene in three) of a genome of `best`,
    in turn."""
    found: list[dict[str, Any]] = []
    state = random.getstate()
    random.seed(1)  # DEAP-style operators draw from the global stream
    try:
        for attempt in range(100 * n):
            if len(found) == n:
                break
            parent = to_individual(space, best[attempt % len(best)])
            (child,) = mutate(parent, space, gene_prob=1 / 3)
            genes = to_genome(space, repair(child, space, vocab))
            key = genome_hash(genes)
            if key not in seen:
                seen.add(key)
                found.append(genes)
    finally:
        random.setstate(state)
    return found


class Journal:
    """Finished chains, one JSON line each, read back on a resumed build."""

    def __init__(self, path: Path, space: str) -> None:
        self.path, self.space = path, space
        self.done: dict[tuple[str, int], dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a kill tore
                if entry["space"] != space:
                    sys.exit(f"{path}: made for another space or --set; use another --journal")
                self.done[(genome_hash(entry["genes"]), entry["seed"])] = entry

    def add(self, entry: dict[str, Any]) -> None:
        entry = {"space": self.space, **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[(genome_hash(entry["genes"]), entry["seed"])] = entry


def train_all(
    args: argparse.Namespace,
    journal: Journal,
    configs: list[tuple[str, dict[str, Any]]],
) -> None:
    """Every (configuration, seed) chain not in the journal yet, `--workers` at a time."""
    todo = [
        (origin, genes, seed)
        for origin, genes in configs
        for seed in range(args.seeds)
        if (genome_hash(genes), seed) not in journal.done
    ]
    context = get_context("spawn")  # torch's thread pools do not survive fork
    overrides = tuple(args.overrides)
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        jobs = {
            pool.submit(run_chain, args.space, overrides, seed, genes): (origin, genes, seed)
            for origin, genes, seed in todo
        }
        for count, job in enumerate(as_completed(jobs), 1):
            origin, genes, seed = jobs[job]
            rows = job.result()
            journal.add({"origin": origin, "genes": genes, "seed": seed, "rows": rows})
            top = rows[-1]["bits_per_byte"]
            print(f"[{count}/{len(todo)}] {origin} seed {seed}: {top} after {len(rows)} rungs")


def mean_top(journal: Journal, genes: dict[str, Any], seeds: int, top: int) -> float:
    values = []
    for seed in range(seeds):
        rows = journal.done[(genome_hash(genes), seed)]["rows"]
        last = rows[-1]
        ok = last["rung"] == top and last["bits_per_byte"] is not None
        values.append(last["bits_per_byte"] if ok else float("inf"))
    return sum(values) / len(values)


def table(journal: Journal) -> pd.DataFrame:
    """One row per (configuration, seed, rung), configurations numbered in journal order."""
    numbers: dict[str, int] = {}
    records = []
    for entry in journal.done.values():
        config = numbers.setdefault(genome_hash(entry["genes"]), len(numbers))
        for row in entry["rows"]:
            records.append(
                {
                    "config": config,
                    "origin": entry["origin"],
                    **entry["genes"],
                    "seed": entry["seed"],
                    **row,
                }
            )
    frame = pd.DataFrame.from_records(records)
    return frame.sort_values(["config", "seed", "rung"]).reset_index(drop=True)


def write_parquet(frame: pd.DataFrame, path: Path, meta: dict[str, str]) -> None:
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(arrow, temporary, compression="zstd")
    temporary.replace(path)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    space = table_space(args.space, tuple(args.overrides), 0)
    _, vocab = prepare_data(space, progress=True)  # fills the cache the workers read
    journal = Journal(Path(args.journal), space_hash(space))
    seen: set[str] = set()
    configs: list[tuple[str, dict[str, Any]]] = []
    random.seed(0)  # repair draws from the global stream: a resumed build gets the same set
    initial = [to_genome(space, i) for i in initial_population(space, vocab, 0)]
    sobol = sobol_configs(space, vocab, args.sobol)
    for origin, genes_list in (("initial", initial), ("sobol", sobol)):
        for genes in genes_list:
            if genome_hash(genes) not in seen:
                seen.add(genome_hash(genes))
                configs.append((origin, genes))
    train_all(args, journal, configs)
    top = len(space.rung_budgets()) - 1
    ranked = sorted(configs, key=lambda c: mean_top(journal, c[1], args.seeds, top))
    best = [genes for _, genes in ranked[: max(1, len(ranked) // 4)]]
    neighbours = neighbour_configs(space, vocab, best, args.neighbours, seen)
    train_all(args, journal, [("neighbour", genes) for genes in neighbours])
    frame = table(journal)
    seconds = time.perf_counter() - started
    worker_seconds = float(frame["wall_seconds"].sum())
    meta = {
        "evo.space": space.canonical_yaml(),
        "evo.command": " ".join(sys.argv),
        "evo.worker_seconds": f"{worker_seconds:.0f}",
        "evo.vocab_size": str(vocab),
    }
    write_parquet(frame, Path(args.out), meta)
    size = Path(args.out).stat().st_size
    print(
        f"{frame['config'].nunique()} configurations x {args.seeds} seeds, {len(frame)} rows, "
        f"{frame['tokens'].sum():,} tokens trained, {worker_seconds:.0f} worker-seconds "
        f"({seconds:.0f} s this invocation); {args.out}: {size / 1024:.0f} KiB"
    )


if __name__ == "__main__":
    main()
