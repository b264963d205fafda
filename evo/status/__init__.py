"""`evo status NAME`: where a run stands, readable while the run is writing. The header
(the run's state, its budgets and what it has spent) is printed before the trials are
read, so a poll sees it at once; the rest is `evo.status.trials`."""

from __future__ import annotations

import time

from rich.console import Console

from evo.describe import budget_text, mode_text, run_space, spent_text, target_lines
from evo.generations import generations_complete
from evo.space import SearchSpace
from evo.storage import RunInfo, RunStatus, Storage
from llm.errors import UserError


def print_status(storage: Storage, name: str, console: Console) -> None:
    run = storage.require_run(name)
    space = run_space(run)
    console.print(f"[bold]{name}[/]: {run.shown_status}, {_progress(run, space)}")
    console.print(f"updated {run.updated_at:%Y-%m-%d %H:%M:%S} UTC")
    if run.driver is not None and run.driver.alive:
        beat = run.driver.heartbeat_at
        console.print(f"driver: {run.driver}, last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC")
    _print_budgets(storage, run, space, console)
    # Imported here, after the header: the trials' summaries and the validations with
    # numpy take a tenth of a second more to load.
    from evo.status.trials import print_trials

    print_trials(storage, name, run, space, console)


def watch_status(storage: Storage, name: str, console: Console, seconds: float) -> None:
    """Redraw the status every `seconds` while the run is running (another process writes
    it), then once more when it has stopped; Ctrl-C ends the watch, not the run."""
    if seconds <= 0:
        raise UserError(f"--watch takes a positive number of seconds (got {seconds:g})")
    try:
        while True:
            run = storage.require_run(name)
            running = run.status == RunStatus.RUNNING.value and run.lost_since is None
            console.clear()
            print_status(storage, name, console)
            if not running:
                return
            time.sleep(seconds)
    except KeyboardInterrupt:
        return


def _progress(run: RunInfo, space: SearchSpace) -> str:
    if space.search.mode == "generational":
        done = generations_complete(run)
        return f"{done} of {space.search.generations} generations complete"
    return f"{mode_text(space.search.mode)} search"


def _print_budgets(storage: Storage, run: RunInfo, space: SearchSpace, console: Console) -> None:
    target = space.target_budget()
    rungs = " / ".join(budget_text(b) for b in space.rung_budgets())
    if target is not None:
        (unit, value), top = next(iter(target.items())), space.rung_budgets()[-1]
        share = top[unit] / value
        console.print(f"target: {budget_text(target)}; rungs: {rungs} (top rung {share:.0%})")
    for line in target_lines(space, run.train_tokens):
        console.print(line)
    limits = space.search.budget.limits()
    if limits:
        console.print(f"spent: {spent_text(storage.spent(run.name), limits)}")
