"""The page's HTML, which needs no plotly: its style, tables, sections and the page
around them, and how values are written (`evo dashboard` builds its own pages from these
without loading plotly). A figure is made into markup by `figure`, which only calls the
figure's own `to_html`."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import plotly.graph_objects as go


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
  padding: 0 1em; }
section { margin-bottom: 2.5em; }
p.how { color: #555; font-style: italic; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
table.sortable th { cursor: pointer; }
input.filter { margin-bottom: 0.5em; width: 20em; }
"""


# Sorting and filtering of the trials table, in plain JavaScript: a click on a heading sorts
# by that column (numbers as numbers), again to reverse; the box keeps the rows containing
# its text. Both are kept in the address (#sort=HEADING&filter=TEXT, -HEADING descending),
# so a link shares the view and the dashboard's redraw (a reload) keeps it.
_TABLE_SCRIPT = """<script>
document.addEventListener("DOMContentLoaded", () => {
  const view = new URLSearchParams(location.hash.slice(1));
  const remember = () => history.replaceState(null, "", "#" + view.toString());
  for (const table of document.querySelectorAll("table.sortable")) {
    const body = table.tBodies[0];
    const filter = document.createElement("input");
    filter.className = "filter";
    filter.placeholder = "filter rows";
    const keep = () => {
      const text = filter.value.toLowerCase();
      for (const row of body.rows) {
        row.hidden = !row.textContent.toLowerCase().includes(text);
      }
    };
    filter.addEventListener("input", () => {
      filter.value ? view.set("filter", filter.value) : view.delete("filter");
      remember();
      keep();
    });
    table.parentNode.insertBefore(filter, table);
    table.querySelectorAll("th").forEach((th, column) => {
      th.addEventListener("click", () => {
        const up = th.dataset.order !== "up";
        th.dataset.order = up ? "up" : "down";
        const key = (row) => {
          const text = row.cells[column].textContent.replace(/,/g, "");
          const number = parseFloat(text);
          return isNaN(number) ? text : number;
        };
        const rows = Array.from(body.rows).sort((a, b) => {
          const x = key(a), y = key(b);
          const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
            : (typeof x === "number" ? -1 : 1);
          return up ? order : -order;
        });
        body.append(...rows);
        view.set("sort", (up ? "" : "-") + th.textContent);
        remember();
      });
    });
    const wanted = (view.get("sort") || "").match(/^(-?)(.+)$/);
    const heading = wanted && Array.from(table.querySelectorAll("th"))
      .find((th) => th.textContent === wanted[2]);
    if (heading) {
      heading.click();
      if (wanted[1]) heading.click();
    }
    filter.value = view.get("filter") || "";
    keep();
  }
});
</script>"""


def format_value(value: Any) -> str:
    """A number short enough to read: four significant digits, or from 1000 up the whole
    number with thousands separators (a parameter count reads better than 1.235e+06)."""
    if is_missing(value):
        return "—"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{float(value):.4g}"
    return str(value)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def first_line(error: Any) -> str:
    lines = "" if is_missing(error) else str(error).strip().splitlines()
    return lines[0] if lines else ""


def note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def html_table(
    rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, css_class: str = ""
) -> str:
    head = ""
    if header is not None:
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        head = f"<thead><tr>{cells}</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{attribute}>{head}<tbody>{body}</tbody></table>"


def figure(fig: go.Figure) -> str:
    fig.update_layout(template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def section(anchor: str, title: str, how_to_read: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
        f'<p class="how">{html.escape(how_to_read)}</p>{body}</section>\n'
    )


def html_page(title: str, subtitle: str, script: str, sections: Sequence[str]) -> str:
    # plotly.js in the head, once, before any figure that needs it.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>\n"
        f"{script}\n{_TABLE_SCRIPT}\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="how">{html.escape(subtitle)}</p>\n'
        f"{''.join(sections)}</body></html>\n"
    )
