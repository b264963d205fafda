"""The report page: its sections in order, with plotly.js inside the page or beside it."""

from __future__ import annotations

import functools
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import plotly.io as pio
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from evo.describe import run_space
from evo.report.curves import curves_section
from evo.report.front import history_section, pareto_section
from evo.report.genes import genes_section, importance_section
from evo.report.markup import html_page, template_tag, time_text
from evo.report.overview import summary_section
from evo.report.predictions import predictions_section
from evo.report.progress import anytime_section, generations_section, rungs_section
from evo.report.retrained import promotions_section, validation_section
from evo.report.run import Run
from evo.report.trials import failures_section, trials_section, workers_section
from evo.storage import RunInfo, Storage
from evo.summary import stalled
from evo.validate import validation_report
from llm.atomic import write_text
from llm.errors import UserError

PlotlyMode = Literal["inline", "file"]
PLOTLY_MODES: tuple[PlotlyMode, ...] = ("inline", "file")
TEMPLATE = "plotly_white"  # every figure's look


def write_report(
    storage: Storage, run: str, out_path: str | Path, plotly: PlotlyMode = "inline"
) -> Path:
    """Write the run's report as one HTML page that needs no network to open: with
    plotly.js inside it ("inline"), or beside it in a file the page names ("file")."""
    if plotly not in PLOTLY_MODES:
        raise UserError(f"unknown plotly mode {plotly!r}; expected inline or file")
    path = Path(out_path)
    info = storage.require_run(run)
    page = render_report(storage, info, _plotly_script(path, plotly))
    write_text(path, page)
    return path


def render_report(
    storage: Storage,
    info: RunInfo,
    script: str,
    head: str = "",
    front: tuple[str, str] | None = None,
    nav: str = "",
    trial_url: str = "",
) -> str:
    """The report page of run `info`, with `script` (the tag that loads plotly.js) and any
    `head` markup (the dashboard's live updates) in its head, and `nav` (links to other
    pages) above its title; see `report_sections` for `front` and `trial_url`."""
    sections = report_sections(storage, info, front, trial_url)
    head = script + plotly_template() + head
    return html_page(f"evo run {info.name}", generated_text(), head, sections, nav)


def report_sections(
    storage: Storage, info: RunInfo, front: tuple[str, str] | None = None, trial_url: str = ""
) -> list[str]:
    """The report's sections in page order, each one `<section>` with an id. `front` names
    the two objectives the Pareto front is drawn on (default: the first two); given, the
    page also links every other pair (`?front=A,B`), as the dashboard serves it.
    `trial_url` (a format taking a trial id) makes every trial id a link to it."""
    run = info.name
    frame, trials = storage.trials_frame(run), storage.trial_summaries(run)
    stuck = stalled(trials, info.unigram_bits_per_byte)
    data = Run(info, run_space(info), trials, frame, stuck, trial_url)
    validated = validation_report(storage, run, data.space)
    sections = [
        summary_section(data, storage),
        rungs_section(data) if data.rungs else "",
        generations_section(data) if data.space.search.mode == "generational" else "",
        anytime_section(data),
        history_section(data) if len(data.objectives) == 1 else pareto_section(data, front),
        genes_section(data),
        importance_section(data),
        predictions_section(data, storage, validated),
        curves_section(data, storage),
        trials_section(data),
        workers_section(data.frame),
        failures_section(data),
        validation_section(validated),
        promotions_section(data, storage.promotions(run), storage.genomes(run), validated),
    ]
    return [s for s in sections if s]


def generated_text() -> str:
    return f"generated at {time_text(datetime.now(timezone.utc))}"


@functools.cache
def plotly_template() -> str:
    """The tag with the one plotly template of the page's figures (see markup.figure)."""
    return template_tag(to_json_plotly(pio.templates[TEMPLATE]))


def _plotly_script(page: Path, mode: PlotlyMode) -> str:
    """The page's plotly.js: inline, or a file beside the page written once per plotly.js
    version (so that a page made by another version keeps the script it was made with)."""
    if mode == "inline":
        return f'<script type="text/javascript">{get_plotlyjs()}</script>'
    name = f"plotly-{get_plotlyjs_version()}.min.js"
    script = page.parent / name
    if not script.exists():
        write_text(script, get_plotlyjs())
    return f'<script type="text/javascript" src="{html.escape(name)}" charset="utf-8"></script>'
