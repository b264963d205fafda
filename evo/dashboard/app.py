"""The dashboard's web app: its routes, static files, errors and token, and the server."""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Cookie, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from evo.dashboard.api import run_detail, run_summary, trial_records
from evo.dashboard.database import Database
from evo.dashboard.pages import Pages, View
from evo.describe import run_space
from evo.report.markup import html_page, note, section, time_text
from evo.storage import Storage
from llm.errors import UserError
from llm.net import is_loopback, listening_socket

TOKEN_ENV = "EVO_DASHBOARD_TOKEN"
POLL_SECONDS = 5.0
STATIC = Path(__file__).parent / "static"
# A versioned URL's content never changes: a browser keeps it for a year, asking nothing.
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    """A static file, served under a name that changes with its content."""

    name: str
    media_type: str
    content: bytes

    @functools.cached_property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.content).hexdigest()[:16] + '"'

    @property
    def path(self) -> str:
        return f"/static/{self.name}"


@functools.cache
def plotly_asset() -> Asset:
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    name = f"plotly-{get_plotlyjs_version()}.min.js"
    return Asset(name, "text/javascript", get_plotlyjs().encode("utf-8"))


@functools.cache
def live_asset() -> Asset:
    content = (STATIC / "live.js").read_bytes()
    return Asset(f"live-{hashlib.sha256(content).hexdigest()[:12]}.js", "text/javascript", content)


@functools.cache
def favicon_asset() -> Asset:
    return Asset("favicon.svg", "image/svg+xml", (STATIC / "favicon.svg").read_bytes())


def page_html(view: View, poll_seconds: float) -> str:
    """The whole page of `view`, with what keeps it current (static/live.js)."""
    head = f'<link rel="icon" href="/favicon.ico" type="{favicon_asset().media_type}">'
    if view.draws:
        from evo.report.page import plotly_template  # draws: loads plotly

        head += f'<script src="{plotly_asset().path}" charset="utf-8"></script>{plotly_template()}'
    head += (
        f'<script src="{live_asset().path}" data-seconds="{poll_seconds:g}" '
        f'data-version="{html.escape(view.version)}"></script>'
    )
    return html_page(view.title, _subtitle(), head, view.sections(), view.nav)


def view_json(view: View, since: str | None) -> dict[str, Any]:
    """A view for the page's live updates: its version and the moment it was read, and its
    sections only when its version is not `since`."""
    answer = {"version": view.version, "subtitle": _subtitle()}
    if since == view.version:
        return answer
    return answer | {"sections": view.sections()}


def _subtitle() -> str:
    return f"as of {time_text(datetime.now(timezone.utc))}; kept current while open"


def build_app(
    source: Database | Storage | str, token: str | None = None, poll_seconds: float = POLL_SECONDS
) -> FastAPI:
    """The dashboard's app over a read-only storage, or the URL of a database that may not
    exist yet. With `token`, every route but the static files needs it."""
    database = source if isinstance(source, Database) else Database(source)
    pages = Pages(database)
    app = FastAPI(title="evo dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    auth = [Depends(token_check(token))] if token else []

    def page(view: View) -> Response:
        response = HTMLResponse(page_html(view, poll_seconds))
        if token:  # a browser that came with ?token= keeps it for the next pages
            response.set_cookie("evo_token", token, httponly=True, samesite="strict")
        return response

    @app.get("/", dependencies=auth)
    def runs() -> Response:
        return page(pages.runs())

    @app.get("/runs/{name}", dependencies=auth)
    def run(name: str, front: str | None = None) -> Response:
        return page(pages.run(name, front))

    @app.get("/runs/{name}/trials/{trial_id}", dependencies=auth)
    def trial(name: str, trial_id: int) -> Response:
        return page(pages.trial(name, trial_id))

    @app.get("/api/view/", dependencies=auth)
    def runs_view(since: str | None = None) -> dict[str, Any]:
        return view_json(pages.runs(), since)

    @app.get("/api/view/runs/{name}", dependencies=auth)
    def run_view(name: str, front: str | None = None, since: str | None = None) -> dict[str, Any]:
        return view_json(pages.run(name, front), since)

    @app.get("/api/view/runs/{name}/trials/{trial_id}", dependencies=auth)
    def trial_view(name: str, trial_id: int, since: str | None = None) -> dict[str, Any]:
        return view_json(pages.trial(name, trial_id), since)

    add_api_routes(app, pages, auth)
    add_static_routes(app)
    add_error_pages(app)
    return app


def add_api_routes(app: FastAPI, pages: Pages, auth: list[Any]) -> None:
    """The JSON for scripts (evo.dashboard.api)."""

    @app.get("/api/runs", dependencies=auth)
    def runs_json() -> list[dict[str, Any]]:
        storage = pages.database.storage()
        if storage is None:
            return []
        return [
            run_summary(storage, info, storage.trial_summaries(info.name))
            for info in storage.list_runs()
        ]

    @app.get("/api/runs/{name}", dependencies=auth)
    def run_json(name: str) -> dict[str, Any]:
        info = pages.run_info(name)
        storage = pages.storage()
        return run_detail(storage, info, storage.trial_summaries(name))

    @app.get("/api/runs/{name}/trials", dependencies=auth)
    def trials_json(name: str) -> list[dict[str, Any]]:
        info = pages.run_info(name)
        return trial_records(pages.storage().trials_frame(name), run_space(info))

    @app.get("/api/runs/{name}/trials/{trial_id}/curve", dependencies=auth)
    def curve_json(name: str, trial_id: int) -> list[dict[str, Any]]:
        """The trial's learning curve: so far, while it runs."""
        pages.trial_record(name, trial_id)
        return pages.storage().curve(trial_id)


def add_static_routes(app: FastAPI) -> None:
    """plotly.js and the live script under versioned names, cached for good; the icon,
    under the name browsers ask for, for a day."""

    def serve(asset: Asset, request: Request, cache: str = IMMUTABLE) -> Response:
        headers = {"Cache-Control": cache, "ETag": asset.etag}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.content, media_type=asset.media_type, headers=headers)

    @app.get("/static/{name}")
    def static(name: str, request: Request) -> Response:
        if name == live_asset().name:
            return serve(live_asset(), request)
        if name.startswith("plotly-") and name == plotly_asset().name:
            return serve(plotly_asset(), request)
        raise HTTPException(404, f"no static file {name!r}")

    @app.get("/favicon.ico")
    def favicon(request: Request) -> Response:
        return serve(favicon_asset(), request, cache="public, max-age=86400")


def add_error_pages(app: FastAPI) -> None:
    """An error is a page for a browser (it asks for text/html) and JSON for a script."""

    def answer(request: Request, status: int, message: str, headers: Any = None) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            nav = '<nav><a href="/">← all runs</a></nav>'
            body = section("error", HTTPStatus(status).phrase, "", note(message))
            text = html_page(f"evo dashboard: {status}", "", "", [body], nav)
            return HTMLResponse(text, status_code=status, headers=headers)
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        return answer(request, err.status_code, str(err.detail), err.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError) -> Response:
        return answer(request, 400, str(err))


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
    """Serve the dashboard until interrupted; off loopback only with a token. A database
    that is not there yet is waited for; one that cannot be read is a UserError."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise UserError(
            f"evo dashboard on {host} needs a token (--token or {TOKEN_ENV}): anyone who can "
            "reach it would see every run"
        )
    database = Database(storage_url)
    if database.storage() is None:
        print(f"evo dashboard: no runs yet; waiting for {database.url} (`evo run` creates it)")
    with listening_socket(host, port) as sock:
        print(f"evo dashboard: http://{host}:{port}/", flush=True)
        app = build_app(database, token)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])
