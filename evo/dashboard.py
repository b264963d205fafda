"""`evo dashboard`: a live web view of the runs in a results database.

It reads the database read-only (`Storage(read_only=True)`: SQLite's query_only, never a
migration or a write lock), so it can watch a search while the search writes. Pages:

- `/`: every run, with its status, trials, budget spent and best value;
- `/runs/NAME`: the run's report (the views of `evo report`: rungs, best against compute,
  Pareto front or history, genes, learning curves, the sortable table of trials, workers,
  failures, validation, promotions), redrawn when the run changes; `?front=A,B` draws the
  front on objectives A and B (links to every pair when a run has more than two);
- `/runs/NAME/trials/ID`: one trial: its genes, its metrics at every rung its genome
  reached, its learning curve across them, its error if it failed.

The same data as JSON: `/api/runs`, `/api/runs/NAME` (with `version`, which changes when
the run does; the run page polls it every few seconds) and `/api/runs/NAME/trials`.
plotly.js is served from the installed plotly package: no page needs the network. plotly
is imported where a page draws, not with this module, so that the runs list and the API
answer without loading it.

Off the loopback interface a token is required (`--token` or EVO_DASHBOARD_TOKEN), sent as
`?token=` once (the dashboard then keeps it in a cookie) or as `Authorization: Bearer`.
"""

from __future__ import annotations

import hmac
import html
import math
import os
from collections.abc import Callable
from typing import Annotated, Any

import pandas as pd
import uvicorn
from fastapi import Cookie, Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from evo.report.markup import PAGE_CSS, format_value, html_table
from evo.storage import RunInfo, Storage
from evo.summary import run_space, spent_text, stalled, successful_trials, top_rung
from llm.errors import UserError
from llm.net import is_loopback, listening_socket

TOKEN_ENV = "EVO_DASHBOARD_TOKEN"
POLL_SECONDS = 5
PLOTLY_PATH = "/static/plotly.min.js"
_PLOTLY_TAG = f'<script type="text/javascript" src="{PLOTLY_PATH}" charset="utf-8"></script>'


def live_head(name: str) -> str:
    """Markup for a run page's head: it polls the run's version and redraws on a change,
    and links each row of the trials table to its trial's page."""
    api = f"/api/runs/{html.escape(name)}"
    return f"""<script>
let version = null;
async function poll() {{
  try {{
    const reply = await fetch("{api}");
    if (reply.ok) {{
      const run = await reply.json();
      if (version !== null && run.version !== version) location.reload();
      version = run.version;
    }}
  }} catch (err) {{}}
  setTimeout(poll, {POLL_SECONDS * 1000});
}}
document.addEventListener("DOMContentLoaded", () => {{
  poll();
  for (const row of document.querySelectorAll("#trials tbody tr")) {{
    const cell = row.cells[0];
    const link = document.createElement("a");
    link.href = "/runs/{html.escape(name)}/trials/" + cell.textContent;
    link.textContent = cell.textContent;
    cell.replaceChildren(link);
  }}
}});
</script>"""


class Dashboard:
    """The pages and the API, over one read-only database."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def run_info(self, name: str) -> RunInfo:
        info = self.storage.get_run(name)
        if info is None:
            raise HTTPException(404, f"no run named {name!r}")
        return info

    def run_summary(self, info: RunInfo) -> dict[str, Any]:
        frame = self.storage.trials_frame(info.name)
        space = run_space(info)
        objective = space.search.objectives[0]
        # The best where scores are comparable and count: at the top rung, not stalled.
        learned = frame[~stalled(frame, info.unigram_bits_per_byte)]
        values = successful_trials(top_rung(learned, space), [objective])[objective.metric]
        best = objective.best(values.to_numpy(dtype=float)) if len(values) else math.nan
        last = frame["recorded"].max() if not frame.empty else None
        limits = space.search.budget.limits()
        return {
            "name": info.name,
            "status": info.status,
            "mode": space.search.mode,
            "trials": len(frame),
            "objective": objective.metric,
            "best": None if math.isnan(best) else best,
            "spent": spent_text(self.storage.spent(info.name), limits) if limits else "",
            "updated": info.updated_at.isoformat(),
            # Changes whenever a trial starts or ends, or the run's status does.
            "version": f"{info.updated_at.isoformat()}|{len(frame)}|{last}|{info.status}",
        }

    def runs_page(self) -> str:
        rows = [self.run_summary(info) for info in self.storage.list_runs()]
        cells = "".join(
            f'<tr><td><a href="/runs/{html.escape(r["name"])}">{html.escape(r["name"])}</a></td>'
            f"<td>{html.escape(r['status'])}</td><td>{html.escape(r['mode'])}</td>"
            f"<td>{r['trials']}</td><td>{html.escape(r['spent'])}</td>"
            f"<td>{format_value(r['best'])} {html.escape(r['objective'])}</td>"
            f"<td>{html.escape(r['updated'][:19])}</td></tr>"
            for r in rows
        )
        header = "<tr><th>run</th><th>status</th><th>mode</th><th>trials</th><th>spent</th>"
        header += "<th>best at the top rung</th><th>updated</th></tr>"
        body = f"<table>{header}{cells}</table>" if rows else "<p>No runs in this database.</p>"
        return _page("evo dashboard", f"<h1>Runs</h1>{body}", refresh=True)

    def run_page(self, name: str, front: str | None = None) -> str:
        from evo.report.page import render_report  # draws: loads plotly

        info = self.run_info(name)
        objectives = [o.metric for o in run_space(info).search.objectives]
        pair = None  # the first two objectives' front; with one, the optimisation history
        if front is not None:
            axes = front.split(",")
            if len(objectives) < 2 or len(axes) != 2 or not set(axes) <= set(objectives):
                raise HTTPException(400, f"front={front}: name two of the objectives {objectives}")
            pair = (axes[0], axes[1])
        return render_report(self.storage, info, _PLOTLY_TAG, head=live_head(name), front=pair)

    def trial_page(self, name: str, trial_id: int) -> str:
        self.run_info(name)
        frame = self.storage.trials_frame(name)
        match = frame[frame["trial_id"] == trial_id]
        if match.empty:
            raise HTTPException(404, f"run {name!r} has no trial {trial_id}")
        trial = match.iloc[0]
        genome = frame[frame["genome_id"] == trial["genome_id"]].sort_values(["rung", "trial_id"])
        genes = {c.removeprefix("gene."): trial[c] for c in frame if c.startswith("gene.")}
        metrics = ["rung", "status", "bits_per_byte", "val_loss", "tokens", "wall_seconds"]
        shown = [m for m in ["trial_id", *metrics] if m in genome]
        rungs = genome[shown].assign(rung=genome["rung"] + 1)
        parts = [
            f'<p><a href="/runs/{html.escape(name)}">← run {html.escape(name)}</a></p>',
            f"<h1>Trial {trial_id} (genome {int(trial['genome_id'])})</h1>",
            "<h2>Genes</h2>" + _table(pd.DataFrame([genes])),
            "<h2>At every rung its genome reached</h2>" + _table(rungs),
            "<h2>Learning curve</h2>" + self.curve_figure(genome),
        ]
        error = trial.get("error")
        if isinstance(error, str) and error:
            parts.append(f"<h2>Error</h2><pre>{html.escape(error)}</pre>")
        return _page(f"evo {name}: trial {trial_id}", "".join(parts), script=_PLOTLY_TAG)

    def curve_figure(self, genome: pd.DataFrame) -> str:
        """Training loss against tokens of every trial of the genome: the rungs continue
        one another, so together they are one run; an adapt stage, which counts its
        tokens from zero again, is a dashed line of its own."""
        import plotly.graph_objects as go  # draws: loads plotly

        fig = go.Figure()
        for trial_id, rung in genome[["trial_id", "rung"]].itertuples(index=False):
            points = pd.DataFrame(self.storage.curve(int(trial_id)))
            if points.empty or "train_loss" not in points:
                continue
            stages = points.groupby("stage", sort=False) if "stage" in points else [("", points)]
            for stage, part in stages:
                adapt = stage == "adapt"
                fig.add_scatter(
                    x=part["tokens"],
                    y=part["train_loss"],
                    mode="lines",
                    name=f"rung {rung + 1}" + (", adapt" if adapt else ""),
                    line={"dash": "dash"} if adapt else {},
                )
        if not fig.data:
            return "<p>No learning curve was recorded.</p>"
        fig.update_layout(
            xaxis_title="tokens trained",
            yaxis_title="training loss (nats per token)",
            template="plotly_white",
            height=420,
        )
        return fig.to_html(full_html=False, include_plotlyjs=False)

    def trials_json(self, name: str) -> list[dict[str, Any]]:
        self.run_info(name)
        frame = self.storage.trials_frame(name)
        return [
            {key: _json_value(value) for key, value in row.items()}
            for row in frame.to_dict(orient="records")
        ]


def build_app(storage: Storage, token: str | None = None) -> FastAPI:
    """The dashboard's app. With `token`, every route but the plotly.js script needs it."""
    board = Dashboard(storage)
    app = FastAPI(title="evo dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    auth = [Depends(token_check(token))] if token else []

    def page(text: str) -> Response:
        response = HTMLResponse(text)
        if token:  # a browser that came with ?token= keeps it for the next pages
            response.set_cookie("evo_token", token, httponly=True, samesite="strict")
        return response

    @app.get("/", dependencies=auth)
    def runs() -> Response:
        return page(board.runs_page())

    @app.get("/runs/{name}", dependencies=auth)
    def run(name: str, front: str | None = None) -> Response:
        return page(board.run_page(name, front))

    @app.get("/runs/{name}/trials/{trial_id}", dependencies=auth)
    def trial(name: str, trial_id: int) -> Response:
        return page(board.trial_page(name, trial_id))

    def runs_json() -> list[dict[str, Any]]:
        return [board.run_summary(info) for info in storage.list_runs()]

    def run_json(name: str) -> dict[str, Any]:
        return board.run_summary(board.run_info(name))

    def plotly_js() -> Response:
        from plotly.offline import get_plotlyjs

        return Response(get_plotlyjs(), media_type="text/javascript")

    app.add_api_route("/api/runs", runs_json, methods=["GET"], dependencies=auth)
    app.add_api_route("/api/runs/{name}", run_json, methods=["GET"], dependencies=auth)
    app.add_api_route(
        "/api/runs/{name}/trials", board.trials_json, methods=["GET"], dependencies=auth
    )
    app.add_api_route(PLOTLY_PATH, plotly_js, methods=["GET"])

    @app.exception_handler(UserError)
    async def user_error(_request: Any, err: Exception) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=400)

    return app


def token_check(token: str) -> Callable[..., None]:
    expected = token.encode("utf-8")

    def check(
        token: Annotated[str | None, Query()] = None,
        evo_token: Annotated[str | None, Cookie()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        scheme, _, bearer = (authorization or "").partition(" ")
        given = [token, evo_token, bearer.strip() if scheme.lower() == "bearer" else None]
        if not any(g and hmac.compare_digest(g.encode("utf-8"), expected) for g in given):
            raise HTTPException(401, "missing or wrong token: open the dashboard with ?token=…")

    return check


def serve_dashboard(
    storage_url: str, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None
) -> None:
    """Serve the dashboard until interrupted; off loopback only with a token."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise UserError(
            f"evo dashboard on {host} needs a token (--token or {TOKEN_ENV}): anyone who can "
            "reach it would see every run"
        )
    storage = Storage(storage_url, create=False, read_only=True)
    with listening_socket(host, port) as sock:
        print(f"evo dashboard: http://{host}:{port}/", flush=True)
        config = uvicorn.Config(
            build_app(storage, token), host=host, port=port, log_level="warning"
        )
        uvicorn.Server(config).run(sockets=[sock])


def _page(title: str, body: str, *, script: str = "", refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{POLL_SECONDS}">' if refresh else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>{script}</head>"
        f"<body>{body}</body></html>\n"
    )


def _table(frame: pd.DataFrame) -> str:
    rows = [[format_value(value) for value in row] for row in frame.itertuples(index=False)]
    return html_table(rows, [str(c) for c in frame.columns])


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
