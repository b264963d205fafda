"""`evo status NAME`: where a run stands, readable while the run is writing."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from evo.report import pareto_front, run_space
from evo.storage import Storage
from evo.view import genes_text

FRONT_ROWS = 10


def print_status(storage: Storage, name: str, console: Console) -> None:
    run = storage.require_run(name)
    space = run_space(run)
    objectives = space.search.objectives
    trials = storage.trials(name)
    generations = storage.generations(name)
    done = len(generations)
    console.print(
        f"[bold]{name}[/]: {run.status}, generation {done}/{space.search.generations} complete, "
        f"updated {run.updated_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    counts = Counter(t.status for t in trials)
    console.print("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

    busy = [g.stats.get("utilization") for g in generations if g.stats.get("utilization")]
    if busy:
        console.print(
            f"worker utilization: {100 * sum(busy) / len(busy):.0f}% (mean per generation)"
        )

    frame = storage.trials_frame(name)
    front = pareto_front(frame, objectives)
    for objective in objectives:
        if len(front):
            best = objective.best(front[objective.metric])
            console.print(f"best {objective.metric} ({objective.direction}): {best:.4g}")
    table = Table(title="Pareto front" if len(objectives) > 1 else "best trials")
    table.add_column("genome", justify="right")
    for objective in objectives:
        table.add_column(objective.metric, justify="right")
    table.add_column("genes")
    gene_columns = [c for c in frame.columns if c.startswith("gene.")]
    for _, row in front.head(FRONT_ROWS).iterrows():
        genes = {c.removeprefix("gene."): row[c] for c in gene_columns if row[c] == row[c]}
        values = [f"{row[o.metric]:.4g}" for o in objectives]
        table.add_row(str(row["genome_id"]), *values, genes_text(genes))
    if len(front):
        console.print(table)
    running = [t for t in trials if t.status == "running"]
    if running:
        console.print(f"running now: {len(running)} trials")
    for promotion in storage.promotions(name):
        metrics = promotion.metrics or {}
        bpb = metrics.get("bits_per_byte")
        detail = f", bits per byte {bpb:.4g}" if bpb is not None else ""
        genome, where = promotion.genome_id, promotion.out_dir
        console.print(f"promoted genome {genome}: {promotion.status}{detail} -> {where}")
