"""Rung fidelity: how well a genome's score at each rung predicts its score at the target
budget, under the two schedules a multi-fidelity search could use.

For `--genomes` genomes of the space (a Latin hypercube, repaired, seeded), each trained
to the space's target budget twice:

- wsd, continued: the search's own way. The genome trains to each rung in turn, each rung
  continuing the stable checkpoint of the one below and scored after its own short
  cool-down; the last "rung" is the target itself.
- cosine, truncated: one run with a cosine schedule over the target budget, scored at the
  rung budgets on the way (at a learning rate still high), and at the end.

Prints, for each rung and schedule, Spearman's ρ and Kendall's τ between the genomes'
scores at that rung and at the target under the same schedule; the median target score
of each schedule (which trains the better final models); and the compute each spent.
With `--genome` (repeatable) the genomes are the ones given instead, and every genome's
scores are printed, rung by rung. With `--out`, each genome's scores are written there as
it finishes (the file replaced whole each time), and a run started again with the same
arguments and file trains only the genomes the file lacks: a long run cut off keeps what
it measured.

    python bench/rung_fidelity.py --genomes 16
    python bench/rung_fidelity.py --schedules wsd \
        --genome n_layers=4,n_heads=4,d_model=128,d_ff_mult=3,pos_encoding=rope,\
batch_size=16,learning_rate=0.003 --genome ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

import yaml
from scipy import stats

from evo.checkpoints import CheckpointStore
from evo.data import prepare_data
from evo.executor import execute_job
from evo.operators import initial_population, to_genome
from evo.search.trials import make_job
from evo.space import SearchSpace, load_space
from llm.atomic import write_json


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--genomes", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", help="write every genome's scores here as JSON (and resume from it)")
    p.add_argument(
        "--genome",
        dest="genomes_given",
        action="append",
        default=[],
        metavar="GENE=VALUE,...",
        help="a genome to score (repeatable) instead of a sample of the space",
    )
    p.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    return p.parse_args()


def parse_genome(text: str, space: SearchSpace) -> dict[str, Any]:
    """`n_layers=4,learning_rate=0.003,...` as genes, each value read as YAML."""
    genes = dict(item.split("=", 1) for item in text.split(","))
    return {name: yaml.safe_load(genes[name]) for name in space.gene_names}


def ladder_space(args: argparse.Namespace) -> SearchSpace:
    """The space with the target as its top rung (one more rung, when the top is below)."""
    space = load_space(args.space, args.overrides)
    target = space.search.target
    assert target is not None and space.search.rung_values is not None, "the space needs rungs"
    rungs = [r for r in space.search.rung_values if r < target.value] + [target.value]
    extra = [f"search.rungs={json.dumps(rungs)}", "search.min_budget=null"]
    return load_space(args.space, [*args.overrides, "search.max_budget=null", *extra])


def wsd_scores(space: SearchSpace, vocab: int, data: Any, genes: dict[str, Any]) -> dict:
    scores, tokens, resume = [], 0, None
    store = CheckpointStore(tempfile.mkdtemp(prefix="evo-chain-"))
    for rung in range(len(space.rung_budgets())):
        outcome = execute_job(make_job(space, vocab, 0, genes, rung, resume, store), data)
        scores.append(outcome.result.metric("bits_per_byte"))
        tokens += outcome.result.metrics["tokens"]
        resume = outcome.checkpoint
        if resume is None and rung < len(space.rung_budgets()) - 1:
            scores += [None] * (len(space.rung_budgets()) - rung - 1)
            break
    shutil.rmtree(store.url, ignore_errors=True)
    return {"scores": scores, "tokens": tokens}


def cosine_scores(space: SearchSpace, vocab: int, data: Any, genes: dict[str, Any]) -> dict:
    """One cosine run over the target, its validation loss read at each rung budget (bits
    per byte are a fixed multiple of it on one validation text, so ranks agree)."""
    budgets = space.rung_budgets()
    job = make_job(space, vocab, 0, genes, len(budgets) - 1)
    per_step = job.train.tokens_per_step
    steps = [math.ceil(next(iter(b.values())) / per_step) for b in budgets]
    interval = math.gcd(*steps[:-1]) if len(steps) > 1 else steps[0]
    train = dataclasses.replace(job.train, schedule="cosine", eval_interval=max(1, interval))
    outcome = execute_job(dataclasses.replace(job, train=train, keep_stable=False), data)
    losses = {p.step: p.val_loss for p in outcome.result.curve if p.val_loss is not None}
    bits_per_byte, val_loss = (outcome.result.metric(n) for n in ("bits_per_byte", "val_loss"))
    scale = bits_per_byte / val_loss if bits_per_byte is not None and val_loss else 1
    scores = []
    for step in steps:
        nearest = min(losses, key=lambda s: abs(s - step)) if losses else None
        scores.append(None if nearest is None else losses[nearest] * scale)
    scores[-1] = bits_per_byte
    return {"scores": scores, "tokens": outcome.result.metrics["tokens"]}


SCHEDULES = {"wsd": wsd_scores, "cosine": cosine_scores}


def run_genome(args: argparse.Namespace, index: int, genes: dict[str, Any]) -> dict:
    space = ladder_space(args)
    data, vocab = prepare_data(space)
    started = time.perf_counter()
    row: dict[str, Any] = {"index": index, "genes": genes}
    for schedule in args.schedules:
        row[schedule] = SCHEDULES[schedule](space, vocab, data, genes)
    row["seconds"] = time.perf_counter() - started
    return row


def correlations(rows: list[dict], schedule: str, rung: int) -> tuple[float, float, int]:
    pairs = [
        (r[schedule]["scores"][rung], r[schedule]["scores"][-1])
        for r in rows
        if r[schedule]["scores"][rung] is not None and r[schedule]["scores"][-1] is not None
    ]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    low, target = zip(*pairs, strict=True)
    return stats.spearmanr(low, target)[0], stats.kendalltau(low, target)[0], len(pairs)


def measured_rows(out: str | None, genomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows `out` holds already (none when there is no such file), each checked to be
    of the genome this run gives its index."""
    if out is None or not os.path.exists(out):
        return []
    with open(out, encoding="utf-8") as f:
        rows = json.load(f)
    for row in rows:
        index = row["index"]
        if index >= len(genomes) or row["genes"] != genomes[index]:
            raise SystemExit(f"{out}: genome {index} is not this run's; give another --out")
    if rows:
        print(f"{len(rows)} genomes already measured in {out}")
    return rows


def main() -> None:
    args = parse_args()
    space = ladder_space(args)
    _, vocab = prepare_data(space, progress=True)  # fills the cache the workers read
    if args.genomes_given:
        genomes = [parse_genome(text, space) for text in args.genomes_given]
    else:
        random.seed(args.seed)
        population = initial_population(space, vocab, args.genomes)
        genomes = [to_genome(space, individual) for individual in population]
    started = time.perf_counter()
    rows = measured_rows(args.out, genomes)
    context = get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        done = {row["index"] for row in rows}
        futures = [
            pool.submit(run_genome, args, index, genes)
            for index, genes in enumerate(genomes)
            if index not in done
        ]
        for future in as_completed(futures):
            rows = sorted([*rows, future.result()], key=lambda row: row["index"])
            if args.out:
                write_json(args.out, rows)
    budgets = [next(iter(b.values())) for b in space.rung_budgets()]
    unit = next(iter(space.rung_budgets()[0])).removeprefix("max_")
    print(f"{len(rows)} genomes of {args.space}, {time.perf_counter() - started:.0f} s")
    if args.genomes_given:
        for row in rows:
            for schedule in args.schedules:
                scores = " ".join(f"{v:.4f}" if v else "-" for v in row[schedule]["scores"])
                print(f"{schedule} {scores}  {args.genomes_given[row['index']]}")
    print(f"rank agreement with the target ({budgets[-1]:,.0f} {unit}), same schedule:")
    print(f"{'rung':>12} " + " ".join(f"{s + ' ρ':>9} {s + ' τ':>9}" for s in args.schedules))
    for rung, budget in enumerate(budgets[:-1]):
        cells = []
        for schedule in args.schedules:
            rho, tau, _ = correlations(rows, schedule, rung)
            cells.append(f"{rho:9.3f} {tau:9.3f}")
        print(f"{budget:>12,.0f} " + " ".join(cells))
    for schedule in args.schedules:
        finals = [r[schedule]["scores"][-1] for r in rows if r[schedule]["scores"][-1]]
        tokens = statistics.mean(r[schedule]["tokens"] for r in rows)
        print(
            f"{schedule}: median target bits per byte {statistics.median(finals):.4f}, "
            f"mean tokens trained per genome {tokens:,.0f}"
        )
    if set(SCHEDULES) <= set(args.schedules):
        wins = sum(
            r["wsd"]["scores"][-1] < r["cosine"]["scores"][-1]
            for r in rows
            if r["wsd"]["scores"][-1] and r["cosine"]["scores"][-1]
        )
        print(f"wsd ends below cosine for {wins} of {len(rows)} genomes")


if __name__ == "__main__":
    main()
