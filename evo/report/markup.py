"""The page's HTML, which needs no plotly: its style, tables, sections and the page
around them, and how values are written (`evo dashboard` builds its own pages from these
without loading plotly). A figure is made into markup by `figure`, which only calls the
figure's own `to_json`; the page's script (page.js) draws it."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import plotly.graph_objects as go


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
  padding: 0 1em; }
nav { margin-bottom: 1em; }
section { margin-bottom: 2.5em; }
p.how { color: #555; font-style: italic; }
.wide { overflow-x: auto; }
/* A wide table may use the window's width beyond the text's, centred on it. */
section .wide { width: calc(100vw - 3em); max-width: max-content; position: relative;
  left: 50%; transform: translateX(-50%); min-width: 100%; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
table.sortable th { cursor: pointer; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
input.filter { margin-bottom: 0.5em; width: 22em; max-width: 100%; }
"""

# The page's script (draws the figures, sorts and filters tables): see page.js.
PAGE_SCRIPT = (Path(__file__).parent / "page.js").read_text(encoding="utf-8")


class Html(str):
    """Markup to put in a table cell as it is, not escaped (a link)."""


def link(href: str, text: Any) -> Html:
    return Html(f'<a href="{html.escape(href)}">{html.escape(str(text))}</a>')


def format_value(value: Any) -> str:
    """A number short enough to read: four significant digits, or from 1000 up the whole
    number with thousands separators (a parameter count reads better than 1.235e+06)."""
    if is_missing(value):
        return "—"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{float(value):.4g}"
    return str(value)


def is_missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or value is pd.NA
        or value is pd.NaT
    )


def first_line(error: Any) -> str:
    lines = "" if is_missing(error) else str(error).strip().splitlines()
    return lines[0] if lines else ""


def note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def html_table(
    rows: Iterable[Sequence[Any]],
    header: Sequence[str] | None = None,
    css_class: str = "",
    order: dict[str, str] | None = None,
) -> str:
    """A table of `rows` (cells escaped, but for `Html` ones) under `header`; `order`
    marks the columns the rows are sorted by ("ascending" or "descending", by heading)."""
    head = ""
    if header is not None:
        marks = order or {}
        cells = "".join(
            f'<th aria-sort="{marks[h]}">{_heading(h)}</th>'
            if h in marks
            else f"<th>{_heading(h)}</th>"
            for h in header
        )
        head = f"<thead><tr>{cells}</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{attribute}>{head}<tbody>{body}</tbody></table>"


def _heading(text: str) -> str:
    """A heading that may wrap after its underscores: gene names are long words, and a
    table of a dozen genes then fits a wide window without scrolling sideways."""
    return html.escape(text).replace("_", "_<wbr>")


def _cell(value: Any) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def figure(fig: go.Figure) -> str:
    """The figure's element, drawn by the page's script from its JSON. The JSON leaves out
    the template, which the page holds once (`template_tag`); `uirevision` keeps what a
    reader changed (zoom, legend, selections) when the dashboard redraws the figure."""
    fig.layout.template = None
    fig.update_layout(uirevision="kept")
    height = fig.layout.height
    style = f' style="height:{height}px"' if height else ""
    data = fig.to_json().replace("<", "\\u003c")  # no "</script>" inside the tag
    config = '"config":{"displaylogo":false,"responsive":true}'
    return (
        f'<div class="figure"><div class="plot"{style}></div><script type="application/json" '
        f'class="figure-data">{data[:-1]},{config}}}</script></div>'
    )


def template_tag(template_json: str) -> str:
    """The plotly template of every figure on the page, once (see `figure`)."""
    data = template_json.replace("<", "\\u003c")
    return f'<script type="application/json" id="plotly-template">{data}</script>'


def section(anchor: str, title: str, how_to_read: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
        f'<p class="how">{html.escape(how_to_read)}</p>{body}</section>\n'
    )


def time_text(moment: datetime | pd.Timestamp | None) -> str:
    """A moment as every page writes it: to the second, in UTC, saying so."""
    if moment is None or is_missing(moment):
        return "—"
    when = pd.Timestamp(moment)
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def html_page(title: str, subtitle: str, head: str, sections: Sequence[str], nav: str = "") -> str:
    """A whole page: `head` (plotly.js and anything else the page needs) before the page's
    own script, then `nav`, the title, `subtitle` and the sections."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>\n"
        f"{head}\n<script>{PAGE_SCRIPT}</script>\n</head>\n<body>\n{nav}"
        f'<h1>{html.escape(title)}</h1>\n<p class="how" id="subtitle">{html.escape(subtitle)}</p>\n'
        f"<main>{''.join(sections)}</main></body></html>\n"
    )
