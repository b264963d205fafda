"""What `evo status NAME` says of a run's trials, below the header `evo.status` prints:
from `Storage.trial_summaries`, without pandas (its import alone takes a third of a
second, and the whole status must take under one at 10,000 trials)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from evo.describe import budget_text
from evo.metrics import TrialStatus
from evo.space import SearchSpace
from evo.storage import RunInfo, RunStatus, Storage
from evo.summary import (
    STALLED,
    ForecastSummary,
    Trials,
    anytime_curve,
    counted,
    forecast_summary,
    pareto_front,
    rung_rows,
    search_scores,
    stalled,
    top_rung,
    worker_time,
)
from evo.validate import ValidationReport, target_seed_noise, validation_report
from evo.view import genes_text

FRONT_ROWS = 10
ANYTIME_POINTS = 5  # the last improvements shown


def print_trials(
    storage: Storage, name: str, run: RunInfo, space: SearchSpace, console: Console
) -> None:
    """What `evo status` says below its header: the trials by status and rung, how busy
    the workers were, the best values or the pick for the target, the validations and
    the promotions."""
    trials = storage.trial_summaries(name)
    stuck = stalled(trials, run.unigram_bits_per_byte)
    counts = Counter(t.status for t in trials)
    if stuck:
        counts[f"{STALLED} (of the done; see evo report)"] = len(stuck)
    console.print("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if len(space.rung_budgets()) > 1:
        console.print(_rung_table(trials, space))
    workers = worker_time(trials, storage.run_sessions(name))
    if workers.utilization is not None:
        running = run.status == RunStatus.RUNNING.value
        console.print(f"worker utilization: {workers.describe(running)}")
    else:  # a run from before sessions were recorded
        per_generation = [g.stats.get("utilization") for g in storage.generations(name)]
        known = [u for u in per_generation if u]
        if known:
            busy = 100 * sum(known) / len(known)
            console.print(f"worker utilization: {busy:.0f}% (busy worker-seconds / available)")
    report = validation_report(storage, name, space)
    forecast = storage.forecast(name)
    shown = forecast_summary(trials, space, forecast, target_seed_noise(report, forecast))
    # Where the target is forecast, the best is the pick for it (one objective) rather
    # than the best score measured at the top rung.
    several = len(space.search.objectives) > 1
    table = shown is None or not shown.genomes or several
    _print_front(storage, name, trials, stuck, space, console, table=table)
    if shown is not None and shown.genomes:
        pick = shown.genomes[0].genome_id
        print_forecast(shown, storage.genomes(name, [pick])[pick], console)
    elif shown is not None:
        console.print("no prediction at the target yet: it waits for a genome scored at two rungs")
    _print_anytime(trials, space, run.unigram_bits_per_byte, console)
    if report is not None:
        print_validation(report, console, table=False)
    running = counts[TrialStatus.RUNNING.value]
    if running:
        console.print(f"running now: {running} trials")
    _print_promotions(storage, name, trials, space, console)


def _print_promotions(
    storage: Storage, name: str, trials: Trials, space: SearchSpace, console: Console
) -> None:
    """Each promotion's first objective beside the genome's score in the search."""
    promotions = storage.promotions(name)
    if not promotions:
        return
    objective = space.search.objectives[0]
    searched = search_scores(trials, objective)
    for promotion in promotions:
        value = (promotion.metrics or {}).get(objective.metric)
        detail = f", {objective.metric} {value:.4g}" if value is not None else ""
        score = searched.get(promotion.genome_id)
        if score is not None:
            detail += f" (search: {score.value:.4g} at rung {score.rung + 1})"
        genome, where = promotion.genome_id, promotion.out_dir
        console.print(f"promoted genome {genome}: {promotion.status}{detail} -> {where}")


def _print_anytime(
    trials: Trials, space: SearchSpace, baseline: float | None, console: Console
) -> None:
    """Where the best value improved, against the tokens spent until then (the anytime
    curve, in a line; `evo report` draws it)."""
    objective = space.search.objectives[0]
    improved, last = [], None
    for point in anytime_curve(trials, space, objective, baseline):
        if point.best is not None and point.best != last:
            improved.append(point)
            last = point.best
    if not improved:
        return
    points = ", ".join(
        f"{p.best:.4g} after {p.tokens:,.0f} tokens" for p in improved[-ANYTIME_POINTS:]
    )
    console.print(f"best {objective.metric} against compute: {points}")


def _rung_table(trials: Trials, space: SearchSpace) -> Table:
    table = Table(title="rungs", title_justify="left")
    headers = ("rung", "budget", "trials", "done", "failed", "queued or running", "advanced")
    for column in headers:
        table.add_column(column, justify="left" if column == "budget" else "right")
    rows = rung_rows(trials, space)
    for row in rows:
        advanced = "—" if row.rung == len(rows) - 1 else str(row.advanced)
        table.add_row(
            str(row.rung + 1),
            budget_text(row.budget),
            str(row.trials),
            str(row.done),
            str(row.failed),
            str(row.active),
            advanced,
        )
    return table


def _print_front(
    storage: Storage,
    name: str,
    trials: Trials,
    stuck: set[int],
    space: SearchSpace,
    console: Console,
    *,
    table: bool,
) -> None:
    """The best values at the top rung, leaving out the `stuck` (stalled) trials, and with
    `table` their trials: the Pareto front for several objectives."""
    objectives = space.search.objectives
    top = top_rung(trials, space)
    front = pareto_front(counted(trials, space, stuck), objectives)
    stalled_count = sum(t.trial_id in stuck for t in top)
    where = " at the top rung" if len(space.rung_budgets()) > 1 else ""
    if not front:
        if stalled_count:
            console.print(
                f"no trial{where} has learned yet ({stalled_count} succeeded but stalled; "
                "see evo report)"
            )
        else:
            console.print(f"no successful trial{where} yet")
        return
    for objective in objectives:
        best = objective.best([t.metrics[objective.metric] for t in front])
        console.print(f"best {objective.metric} ({objective.direction}){where}: {best:.4g}")
    if not table:
        return
    title = ("Pareto front" if len(objectives) > 1 else "best trials") + where
    table = Table(title=title)
    table.add_column("genome", justify="right")
    for objective in objectives:
        table.add_column(objective.metric, justify="right")
    table.add_column("genes")
    genes = storage.genomes(name, (t.genome_id for t in front[:FRONT_ROWS]))
    for trial in front[:FRONT_ROWS]:
        values = [f"{trial.metrics[o.metric]:.4g}" for o in objectives]
        table.add_row(str(trial.genome_id), *values, genes_text(genes[trial.genome_id]))
    console.print(table)


def print_forecast(
    forecast: ForecastSummary, pick_genes: dict[str, object], console: Console
) -> None:
    """The search's pick for the target (its genes: `pick_genes`) and its best genomes:
    each one's measured rung scores beside its prediction at the target and the
    interval."""
    pick = forecast.genomes[0]
    level = f"{forecast.level:.0%}"
    console.print(
        f"pick for the target: genome {pick.genome_id}, {forecast.metric} {pick.mean:.4g} "
        f"predicted at {budget_text(forecast.budget)} ({level} interval {pick.low:.4g} to "
        f"{pick.high:.4g}): {genes_text(pick_genes)}"
    )
    console.print(_forecast_table(forecast))
    console.print(f"the law: {forecast.describe()}")


def _forecast_table(forecast: ForecastSummary) -> Table:
    rungs = max(rung for g in forecast.genomes for rung in g.scores) + 1
    title = (
        f"{forecast.metric} predicted at {budget_text(forecast.budget)}, "
        f"{forecast.beyond:.3g}× the top rung (the search's order)"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("genome", justify="right")
    for rung in range(rungs):
        table.add_column(f"rung {rung + 1}", justify="right")
    table.add_column("predicted", justify="right")
    table.add_column(f"{forecast.level:.0%} interval", justify="right")
    for genome in forecast.genomes[:FRONT_ROWS]:
        measured = [f"{genome.scores[r]:.4g}" if r in genome.scores else "—" for r in range(rungs)]
        interval = f"{genome.low:.4g} to {genome.high:.4g}"
        table.add_row(str(genome.genome_id), *measured, f"{genome.mean:.4g}", interval)
    return table


def print_validation(report: ValidationReport, console: Console, *, table: bool) -> None:
    """The search's ranking against the validated one: ρ, τ and the noise floor, and with
    `table` every validated genome."""
    seeds = max((len(g.values) for g in report.genomes), default=0)
    console.print(
        f"validation at {budget_text(report.budget)}: {len(report.genomes)} genomes, "
        f"up to {seeds} seeds each"
        + (f"; {report.pending} unfinished (run `evo validate` again)" if report.pending else "")
    )
    if table:
        console.print(_validation_table(report))
        for g in report.genomes:
            console.print(f"genome {g.candidate.genome_id}: {genes_text(g.candidate.genes)}")
    if report.spearman is None or report.kendall is None:
        console.print("rank agreement: needs three validated genomes")
    else:
        console.print(
            f"rank agreement with the search: Spearman ρ {report.spearman:.2f}, "
            f"Kendall τ {report.kendall:.2f}"
        )
    if report.noise is not None and report.gap is not None:
        console.print(
            f"noise floor: seed-to-seed spread (std) {report.noise:.4g} {report.metric}, "
            f"median gap between neighbouring genomes {report.gap:.4g}"
            + (" — most neighbours are within noise" if report.gap < report.noise else "")
        )
    if report.check is not None:
        console.print(f"predictions at the target: {report.check.describe()}")


def _validation_table(report: ValidationReport) -> Table:
    table = Table(title=f"search against validated {report.metric}", title_justify="left")
    for column in (
        "genome",
        "search rank",
        "search",
        "rung",
        "validated",
        "± std",
        "seeds",
        "rank",
    ):
        table.add_column(column, justify="right")
    for g in report.genomes:
        table.add_row(
            str(g.candidate.genome_id),
            str(g.candidate.rank),
            f"{g.candidate.value:.4g}",
            str(g.candidate.rung + 1),
            f"{g.mean:.4g}",
            "—" if g.spread is None else f"{g.spread:.2g}",
            str(len(g.values)),
            str(g.rank),
        )
    return table
