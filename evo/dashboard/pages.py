"""The dashboard's pages, each a `View`: its sections and the version of the data they
show. The app serves a view whole, as HTML, and as JSON for the page's live updates."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException

from evo.dashboard.api import digest, run_summary, run_version
from evo.dashboard.database import Database
from evo.describe import mode_text, run_space, spent_text
from evo.report.markup import format_value, html_table, link, note, section, time_text
from evo.storage import RunInfo, Storage, TrialRecord

NO_RUNS = "No runs yet"


@dataclass(frozen=True)
class View:
    """A page: its title, the markup above the title (`nav`), what makes its sections (made
    only when asked for: a poll that finds the same `version` needs none), whether they
    draw (and so need plotly.js), and `version`, which changes when what they show does."""

    title: str
    version: str
    sections: Callable[[], list[str]]
    nav: str = ""
    draws: bool = False


def run_path(name: str) -> str:
    return f"/runs/{quote(name, safe='')}"


class Pages:
    """The views, over the dashboard's database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def storage(self) -> Storage:
        """The storage, for a page that needs a run: none is there before the database."""
        storage = self.database.storage()
        if storage is None:
            raise HTTPException(404, f"{NO_RUNS}: {self.database.url} is not made yet")
        return storage

    def run_info(self, name: str) -> RunInfo:
        info = self.storage().get_run(name)
        if info is None:
            raise HTTPException(404, f"no run named {name!r}")
        return info

    def trial_record(self, name: str, trial_id: int) -> TrialRecord:
        self.run_info(name)
        record = next((t for t in self.storage().trials(name) if t.id == trial_id), None)
        if record is None:
            raise HTTPException(404, f"run {name!r} has no trial {trial_id}")
        return record

    def runs(self) -> View:
        storage = self.database.storage()
        how = "Every run in the database: its trials, the budget spent and its best value."
        if storage is None:
            waiting = f"{NO_RUNS}: waiting for {self.database.url}, which `evo run` creates."
            return View(
                "evo dashboard", "none", lambda: [section("runs", "Runs", how, note(waiting))]
            )
        rows, versions = [], []
        for info in storage.list_runs():
            summary = run_summary(storage, info, storage.trial_summaries(info.name))
            versions.append(summary["version"])
            limits = run_space(info).search.budget.limits()
            rows.append(
                [
                    link(run_path(info.name), info.name),
                    info.shown_status,
                    mode_text(summary["mode"]),
                    summary["trials"],
                    summary["active"],
                    spent_text(storage.spent(info.name), limits) if limits else "—",
                    f"{format_value(summary['best'])} {summary['objective']}",
                    time_text(info.updated_at),
                ]
            )
        header = (
            *("run", "status", "mode", "trials", "queued or running"),
            *("spent", "best at the top rung", "updated"),
        )
        table = f'<div class="wide">{html_table(rows, header)}</div>'
        body = table if rows else note(NO_RUNS + ".")
        sections = [section("runs", "Runs", how, body)]
        return View("evo dashboard", digest("|".join(versions)), lambda: sections)

    def run(self, name: str, front: str | None) -> View:
        from evo.report.page import report_sections  # draws: loads plotly

        info = self.run_info(name)
        objectives = [o.metric for o in run_space(info).search.objectives]
        pair = None  # the first two objectives' front; with one, the optimisation history
        if front is not None:
            axes = front.split(",")
            if len(objectives) < 2 or len(axes) != 2 or not set(axes) <= set(objectives):
                raise HTTPException(400, f"front={front}: name two of the objectives {objectives}")
            pair = (axes[0], axes[1])
        storage = self.storage()
        version = run_version(info, storage.trial_summaries(name))
        trial_url = run_path(name) + "/trials/{}"
        nav = '<nav><a href="/">← all runs</a></nav>'
        return View(
            f"evo run {name}",
            version,
            lambda: report_sections(storage, info, pair, trial_url),
            nav,
            draws=True,
        )

    def trial(self, name: str, trial_id: int) -> View:
        from evo.dashboard.trial import trial_sections

        info = self.run_info(name)
        storage = self.storage()
        record = self.trial_record(name, trial_id)
        version = run_version(info, storage.trial_summaries(name))
        nav = (
            f'<nav><a href="/">all runs</a> › <a href="{html.escape(run_path(name))}">'
            f"run {html.escape(name)}</a></nav>"
        )
        return View(
            f"evo run {name}: trial {trial_id}",
            version,
            lambda: trial_sections(storage, info, record, run_path(name) + "/trials/{}"),
            nav,
            draws=True,
        )
