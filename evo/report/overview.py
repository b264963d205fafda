"""The report's first section: the run as recorded, its budgets, its trials by outcome,
the workers' utilization and the best value of each objective."""

from __future__ import annotations

from evo.describe import budget_text, mode_text, spent_text
from evo.generations import generations_complete
from evo.report.frames import ranked
from evo.report.labels import gene_lines
from evo.report.markup import format_value, html_table, section, time_text
from evo.report.run import Run
from evo.storage import RunStatus, Storage
from evo.summary import ACTIVE, FAILURES, LOST, SUCCESS, worker_time


def summary_section(run: Run, storage: Storage) -> str:
    info, space = run.info, run.space
    rows: list[tuple[str, str]] = [
        ("run", info.name),
        ("status", info.status),
        ("mode", mode_text(space.search.mode)),
        ("created", time_text(info.created_at)),
        ("updated", time_text(info.updated_at)),
        ("seed", str(info.seed)),
    ]
    target = space.target_budget()
    if target is not None:
        rows.append(("target (what evo promote trains)", budget_text(target)))
    rows.append(("rungs", " / ".join(budget_text(b) for b in space.rung_budgets())))
    limits = space.search.budget.limits()
    if limits:
        rows.append(("spent", spent_text(storage.spent(info.name), limits)))
    if space.search.mode == "generational":
        rows.append(
            ("generations complete", f"{generations_complete(info)} of {space.search.generations}")
        )
    rows.append(("trials", _trial_counts(run)))
    rows.append(("unigram baseline", _baseline_text(info.unigram_bits_per_byte)))
    workers = worker_time(run.trials, storage.run_sessions(info.name))
    if workers.utilization is not None:
        running = info.status == RunStatus.RUNNING.value
        rows.append(("worker utilization", workers.describe(running)))
    rows.append(("objectives", ", ".join(f"{o.metric} ({o.direction})" for o in run.objectives)))
    for objective in run.objectives:
        best = "—"
        if not run.finished.empty:
            row = ranked(run.finished, objective).iloc[0]
            genes = ", ".join(gene_lines(row))
            best = f"{format_value(row[objective.metric])} (trial {row['trial_id']}: {genes})"
        rows.append((f"best {objective.metric}{run.where}", best))
    return section(
        "summary",
        "Summary",
        "The run as recorded in the results database; each best value comes with the "
        "trial and genome that reached it.",
        html_table(rows),
    )


def _trial_counts(run: Run) -> str:
    statuses, stuck = run.frame["status"], int(run.stalled.sum())
    done = f"{int((statuses == SUCCESS).sum())} done"
    if stuck:
        done += f" ({stuck} of them stalled)"
    return (
        f"{done}, {int(statuses.isin(FAILURES).sum())} failed, "
        f"{int(statuses.isin(ACTIVE).sum())} queued or running, {int(statuses.isin(LOST).sum())}"
        " lost to a dead worker or an interruption and run again"
    )


def _baseline_text(baseline: float | None) -> str:
    if baseline is None:
        return (
            "not recorded (a run made before evo stored it; `evo resume` or `evo validate` "
            "stores it), so no trial is judged stalled"
        )
    return f"{baseline:.4g} bits/byte (a trial no better than this stalled; see Failures)"
