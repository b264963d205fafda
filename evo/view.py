"""What `evo run` shows while it works: a live panel on a terminal, plain lines elsewhere.

A search talks to its view through `SearchView`: progress (a generation's trials, or
the share of the search's budget spent), each trial's start and end, and notes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from evo.metrics import TrialStatus
from evo.space import SearchSpace
from evo.storage import genome_hash
from llm.tracking import open_tracker

if TYPE_CHECKING:
    from evo.executor import TrialOutcome
    from evo.storage import TrialRecord
    from llm.trial import TrialResult


class SearchView(Protocol):
    """What a live display is told by a search."""

    def progress(self, description: str, done: float, total: float) -> None: ...
    def trial_started(self, genes: dict[str, Any], rung: int, attempt: int) -> None: ...
    def trial_finished(self, genes: dict[str, Any], rung: int, outcome: TrialOutcome) -> None: ...
    def note(self, text: str) -> None: ...
    def earlier_results(self, trials: Sequence[TrialRecord]) -> None:
        """The run's trials recorded before this process started (a resumed run's): the
        best so far counts them."""


class QuietView:
    """A view that shows nothing (library use, benchmarks, tests)."""

    def progress(self, description: str, done: float, total: float) -> None:
        pass

    def trial_started(self, genes: dict[str, Any], rung: int, attempt: int) -> None:
        pass

    def trial_finished(self, genes: dict[str, Any], rung: int, outcome: TrialOutcome) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def earlier_results(self, trials: Sequence[TrialRecord]) -> None:
        pass


def genes_text(genes: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in genes.items()
    )


class Best:
    """The best value of each objective at the highest rung reached so far."""

    def __init__(self, space: SearchSpace) -> None:
        self.objectives = space.search.objectives
        self.rungs = len(space.rung_budgets())
        self.rung = -1
        self.values: dict[str, float] = {}

    def update(self, rung: int, outcome: TrialOutcome) -> None:
        self.add(rung, outcome.status, outcome.result)

    def earlier(self, trials: Sequence[TrialRecord]) -> None:
        for trial in trials:
            self.add(trial.rung, trial.status, trial)

    def add(self, rung: int, status: TrialStatus, result: TrialResult | TrialRecord) -> None:
        if status is not TrialStatus.DONE or rung < self.rung:
            return
        if rung > self.rung:
            self.rung, self.values = rung, {}
        for objective in self.objectives:
            value = result.metric(objective.metric)
            if value is None:
                continue
            old = self.values.get(objective.metric)
            if old is None or objective.better(value, old):
                self.values[objective.metric] = value

    def text(self) -> str:
        values = ", ".join(
            f"{o.metric} {self.values[o.metric]:.4g}"
            for o in self.objectives
            if o.metric in self.values
        )
        if not values or self.rungs == 1:
            return values
        return f"{values} (rung {self.rung + 1} of {self.rungs})"


class LiveView:
    """Progress, the trials running now, and the best value per objective."""

    def __init__(self, space: SearchSpace, name: str, console: Console | None = None) -> None:
        self.space, self.name = space, name
        self.console = console or Console(stderr=True)
        self.best = Best(space)
        self.running: dict[str, float] = {}
        self.failures = 0
        self.progress_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.progress_bar.add_task("starting", total=1)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    def _render(self) -> Group:
        table = Table(title="running trials", expand=True, show_edge=False)
        table.add_column("genome")
        table.add_column("rung", justify="right")
        table.add_column("seconds", justify="right")
        now = time.time()
        for key, started in self.running.items():
            genes, rung = key.rsplit("@", 1)
            table.add_row(genes, rung, f"{now - started:.0f}")
        best = self.best.text() or "no successful trial yet"
        summary = f"[bold]{self.name}[/]  best: {best}  failed: {self.failures}"
        return Group(self.progress_bar, summary, table)

    def progress(self, description: str, done: float, total: float) -> None:
        self.progress_bar.update(self.task, description=description, completed=done, total=total)
        self.live.update(self._render())

    def trial_started(self, genes: dict[str, Any], rung: int, attempt: int) -> None:
        self.running[f"{genes_text(genes)}@{rung + 1}"] = time.time()
        self.live.update(self._render())

    def trial_finished(self, genes: dict[str, Any], rung: int, outcome: TrialOutcome) -> None:
        self.running.pop(f"{genes_text(genes)}@{rung + 1}", None)
        self.best.update(rung, outcome)
        self.failures += outcome.status is not TrialStatus.DONE
        self.live.update(self._render())

    def note(self, text: str) -> None:
        self.console.log(f"{text}; best: {self.best.text()}")
        self.live.update(self._render())

    def earlier_results(self, trials: Sequence[TrialRecord]) -> None:
        self.best.earlier(trials)


class LineView:
    """One line per finished trial and note, for logs and pipes."""

    def __init__(self, space: SearchSpace, name: str) -> None:
        self.space, self.name = space, name
        self.best = Best(space)
        self.rungs = len(space.rung_budgets())

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def progress(self, description: str, done: float, total: float) -> None:
        pass

    def trial_started(self, genes: dict[str, Any], rung: int, attempt: int) -> None:
        pass

    def trial_finished(self, genes: dict[str, Any], rung: int, outcome: TrialOutcome) -> None:
        self.best.update(rung, outcome)
        metrics = " ".join(
            f"{o.metric}={outcome.result.metric(o.metric):.4g}"
            for o in self.space.search.objectives
            if outcome.result.metric(o.metric) is not None
        )
        detail = metrics if outcome.status is TrialStatus.DONE else (outcome.result.error or "")
        where = f"rung {rung + 1}/{self.rungs} " if self.rungs > 1 else ""
        status = outcome.status.value
        print(f"  {where}{status:8} {detail}  [{genes_text(genes)}]", file=sys.stderr)

    def note(self, text: str) -> None:
        print(f"[{self.name}] {text}; best: {self.best.text()}", file=sys.stderr)

    def earlier_results(self, trials: Sequence[TrialRecord]) -> None:
        self.best.earlier(trials)


def make_view(space: SearchSpace, name: str, quiet: bool = False) -> LiveView | LineView:
    if not quiet and sys.stderr.isatty():
        return LiveView(space, name)
    return LineView(space, name)


class TrackedView:
    """`view`, which also writes each finished trial's learning curve as a run of its own
    for a tracker (`evo run --tracker tensorboard|wandb`), under `folder`, named
    GENOME-rung-N after the genome's hash (so a resumed search adds to the same runs) and
    grouped under the search's `name`."""

    def __init__(self, view: SearchView, tracker: str, folder: Path, name: str) -> None:
        self.view, self.tracker, self.folder, self.name = view, tracker, folder, name

    def progress(self, description: str, done: float, total: float) -> None:
        self.view.progress(description, done, total)

    def trial_started(self, genes: dict[str, Any], rung: int, attempt: int) -> None:
        self.view.trial_started(genes, rung, attempt)

    def trial_finished(self, genes: dict[str, Any], rung: int, outcome: TrialOutcome) -> None:
        self.view.trial_finished(genes, rung, outcome)
        name = f"{genome_hash(genes)[:12]}-rung-{rung + 1}"
        config = {"genes": genes, "rung": rung + 1, "search": self.name}
        tracking = open_tracker(
            self.tracker, self.folder, project="evo", run=name, group=self.name, config=config
        )
        try:
            tracking.text("genes", genes_text(genes))
            for point in outcome.result.curve:
                tracking.record({"kind": "train", "step": point.step, "loss": point.train_loss})
                if point.val_loss is not None:
                    tracking.record(
                        {"kind": "eval", "step": point.step, "val_loss": point.val_loss}
                    )
            result = outcome.result
            final = {name: result.metric(name) for name in ("bits_per_byte", "accuracy")}
            tracking.record({"kind": "eval", "step": result.metrics["steps"], **final})
        finally:
            tracking.close()

    def note(self, text: str) -> None:
        self.view.note(text)

    def earlier_results(self, trials: Sequence[TrialRecord]) -> None:
        self.view.earlier_results(trials)
