"""What `evo run` shows while it works: a live panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evo.executor import TrialOutcome
from evo.space import SearchSpace


def genes_text(genes: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in genes.items()
    )


class Best:
    """The best value of each objective over the trials seen so far."""

    def __init__(self, space: SearchSpace) -> None:
        self.objectives = [(o.metric, o.direction) for o in space.search.objectives]
        self.values: dict[str, float] = {}

    def update(self, outcome: TrialOutcome) -> None:
        if outcome.status != "done":
            return
        for metric, direction in self.objectives:
            value = outcome.result.metric(metric)
            if value is None:
                continue
            old = self.values.get(metric)
            better = old is None or (value < old if direction == "min" else value > old)
            if better:
                self.values[metric] = value

    def text(self) -> str:
        return ", ".join(
            f"{m} {self.values[m]:.4g}" for m, _ in self.objectives if m in self.values
        )


class LiveView:
    """Generation progress, the trials running now, and the best value per objective."""

    def __init__(self, space: SearchSpace, name: str, console: Console | None = None) -> None:
        self.space, self.name = space, name
        self.console = console or Console(stderr=True)
        self.best = Best(space)
        self.running: dict[str, float] = {}
        self.failures = 0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("generation", total=1)
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
        table.add_column("seconds", justify="right")
        now = time.time()
        for genes, started in self.running.items():
            table.add_row(genes, f"{now - started:.0f}")
        best = self.best.text() or "no successful trial yet"
        summary = f"[bold]{self.name}[/]  best: {best}  failed: {self.failures}"
        return Group(self.progress, summary, table)

    def generation_started(self, generation: int, trials: int) -> None:
        total = self.space.search.generations
        self.progress.reset(
            self.task, total=max(trials, 1), description=f"generation {generation + 1}/{total}"
        )
        self.live.update(self._render())

    def trial_started(self, genes: dict[str, Any], attempt: int) -> None:
        self.running[genes_text(genes)] = time.time()
        self.live.update(self._render())

    def trial_finished(self, genes: dict[str, Any], outcome: TrialOutcome) -> None:
        self.running.pop(genes_text(genes), None)
        self.best.update(outcome)
        self.failures += outcome.status != "done"
        self.progress.advance(self.task)
        self.live.update(self._render())

    def generation_finished(self, generation: int, stats: dict[str, Any]) -> None:
        self.console.log(f"generation {generation} done; best: {self.best.text()}")
        self.live.update(self._render())


class LineView:
    """One line per finished trial and generation, for logs and pipes."""

    def __init__(self, space: SearchSpace, name: str) -> None:
        self.space, self.name = space, name
        self.best = Best(space)

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def generation_started(self, generation: int, trials: int) -> None:
        print(f"[{self.name}] generation {generation}: {trials} trials to run", file=sys.stderr)

    def trial_started(self, genes: dict[str, Any], attempt: int) -> None:
        pass

    def trial_finished(self, genes: dict[str, Any], outcome: TrialOutcome) -> None:
        self.best.update(outcome)
        metrics = " ".join(
            f"{o.metric}={outcome.result.metric(o.metric):.4g}"
            for o in self.space.search.objectives
            if outcome.result.metric(o.metric) is not None
        )
        detail = metrics if outcome.status == "done" else (outcome.result.error or "")
        print(f"  {outcome.status:8} {detail}  [{genes_text(genes)}]", file=sys.stderr)

    def generation_finished(self, generation: int, stats: dict[str, Any]) -> None:
        print(
            f"[{self.name}] generation {generation} done; best: {self.best.text()}", file=sys.stderr
        )


def make_view(space: SearchSpace, name: str, quiet: bool = False) -> LiveView | LineView:
    if not quiet and sys.stderr.isatty():
        return LiveView(space, name)
    return LineView(space, name)
