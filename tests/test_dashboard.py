"""The dashboard: its pages, JSON API and live updates, on hand-made results databases; a
real browser (headless Chromium, driven through chromedriver) watches a run change."""

from __future__ import annotations

import html
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from conftest import outcome
from fastapi.testclient import TestClient
from test_report import (  # noqa: F401 (fixtures)
    LIVE,
    RUN,
    SPACE_YAML,
    figures,
    live,
    one,
    result,
    run,
    section,
    store,
    tables,
    values,
)

from evo.dashboard import build_app, serve_dashboard
from evo.dashboard.database import Database
from evo.describe import run_space
from evo.storage import Storage
from llm.errors import UserError
from llm.trial import CurvePoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = "no chromium or chromedriver here (apt install chromium chromium-driver)"


@pytest.fixture
def reader(store: Storage, run: dict[str, object]) -> Iterator[Storage]:  # noqa: F811
    with Storage(store.url, create=False, read_only=True) as storage:
        yield storage


def browser_get(client: TestClient, path: str) -> httpx.Response:
    return client.get(path, headers={"Accept": "text/html,application/xhtml+xml"})


def test_the_runs_page_and_api_list_every_run(reader: Storage, run: dict[str, object]) -> None:  # noqa: F811
    client = TestClient(build_app(reader))
    page = client.get("/")
    assert page.status_code == 200
    assert f'<a href="/runs/{RUN}">{RUN}</a>' in page.text
    (summary,) = client.get("/api/runs").json()
    metrics: dict[int, tuple[float, float]] = run["metrics"]  # type: ignore[assignment]
    assert summary["name"] == RUN and summary["trials"] == 10
    assert summary["best"] == pytest.approx(min(v[0] for v in metrics.values()))


def test_the_runs_list_shows_the_best_at_the_top_rung(store: Storage) -> None:  # noqa: F811
    space = yaml.safe_load(SPACE_YAML)
    space["search"] = {"objectives": ["bits_per_byte"], "target": {"max_steps": 900},
                       "rungs": [100, 300, 900], "budget": {"trials": 4}}  # fmt: skip
    del space["trial"]["max_steps"]
    store.create_run(RUN, yaml.safe_dump(space), seed=0)
    client = TestClient(build_app(store))
    first, second = store.genome_id(RUN, {"n_layers": 2}), store.genome_id(RUN, {"n_layers": 3})
    store.finish_trial(
        store.add_trial(RUN, first, rung=0), outcome("done", result(2.9, 1e3, adapt=False))
    )
    (summary,) = client.get("/api/runs").json()
    assert summary["best"] is None  # a lower rung's score is not comparable with the top's
    store.finish_trial(
        store.add_trial(RUN, second, rung=2), outcome("done", result(3.0, 1e3, adapt=False))
    )
    (summary,) = client.get("/api/runs").json()
    assert summary["best"] == pytest.approx(3.0)


def test_a_run_whose_top_rung_trials_all_stalled_has_no_best(store: Storage) -> None:  # noqa: F811
    """Found by the compose check: a short search whose trials at the top rung were all
    worse than the unigram baseline answered 500 from the run's API."""
    space = yaml.safe_load(SPACE_YAML)
    space["search"] = {"objectives": ["bits_per_byte"], "target": {"max_steps": 900},
                       "rungs": [100, 300, 900], "budget": {"trials": 4}}  # fmt: skip
    del space["trial"]["max_steps"]
    store.create_run(RUN, yaml.safe_dump(space), seed=0)
    store.set_unigram_baseline(RUN, 4.7)
    genome = store.genome_id(RUN, {"n_layers": 2})
    store.finish_trial(
        store.add_trial(RUN, genome, rung=2), outcome("done", result(4.9, 1e3, adapt=False))
    )
    client = TestClient(build_app(store))
    detail = client.get(f"/api/runs/{RUN}")
    assert detail.status_code == 200
    assert detail.json()["stalled"] == 1
    assert detail.json()["objectives"][0]["best"] is None
    assert client.get(f"/runs/{RUN}").status_code == 200


def test_the_trials_api_answers_at_every_moment_of_a_run(
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
) -> None:
    client = TestClient(build_app(store))
    reply = client.get(f"/api/runs/{LIVE}/trials")
    assert reply.status_code == 200  # with trials queued and running: no finish time yet
    trials = {t["trial_id"]: t for t in reply.json()}
    assert {t["status"] for t in trials.values()} == {"queued", "running", "failed", "done"}
    queued, running = trials[live["queued"]], trials[live["running"]]
    assert queued["started_at"] is None and queued["finished_at"] is None
    assert running["started_at"].endswith("+00:00") and running["finished_at"] is None
    assert running["bits_per_byte"] is None and running["tokens"] is None
    done = trials[live["top"]]
    assert done["finished_at"] > done["started_at"]
    # Counts and integer genes and metrics are integers, not 3.0.
    for key in ("rung", "genome_id", "recorded", "tokens", "params", "gene.n_layers"):
        assert type(done[key]) is int, key
    assert type(done["gene.d_model"]) is int and type(done["gene.learning_rate"]) is float
    assert done["generation"] is None  # a steady-state run has none


def test_the_run_api_has_what_the_run_page_shows_as_numbers(
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
) -> None:
    client = TestClient(build_app(store))
    (listed,) = client.get("/api/runs").json()
    detail = client.get(f"/api/runs/{LIVE}").json()
    spent = store.spent(LIVE)
    expected = {"tokens": {"spent": spent.tokens, "limit": 15_000_000}}
    assert listed["spent"] == detail["spent"] == expected
    assert type(detail["spent"]["tokens"]["spent"]) is int
    assert detail["mode"] == "steady_state" and detail["active"] == 2
    assert [r["budget"] for r in detail["rungs"]] == [
        {"max_tokens": 222_000}, {"max_tokens": 666_000}, {"max_tokens": 2_000_000}
    ]  # fmt: skip
    assert [(r["trials"], r["done"], r["failed"], r["active"]) for r in detail["rungs"]] == [
        (14, 12, 1, 1), (4, 3, 0, 1), (1, 1, 0, 0)
    ]  # fmt: skip
    assert detail["statuses"] == {"done": 16, "failed": 1, "queued": 1, "running": 1}
    (objective,) = detail["objectives"]
    best = objective["best"]
    assert best["trial_id"] == live["top"] and best["bits_per_byte"] == pytest.approx(1.6)
    assert type(best["genes"]["n_layers"]) is int and best["rung"] == 2
    assert detail["target"] == {"max_tokens": 2_000_000}
    assert detail["forecast"] is None  # the target is the top rung: nothing is predicted
    assert 0 < detail["workers"]["utilization"] <= 1


def test_a_run_page_is_the_live_report_with_plotly_served_cached_and_compressed(
    reader: Storage,
) -> None:
    client = TestClient(build_app(reader))
    page = client.get(f"/runs/{RUN}")
    for heading in ("Summary", "Pareto front", "Trials", "Failures", "Promotions"):
        assert f"<h2>{heading}</h2>" in page.text
    assert "cdn" not in page.text.lower() and 'http-equiv="refresh"' not in page.text
    assert page.headers["content-encoding"] == "gzip"
    (plotly,) = re.findall(r'<script src="(/static/plotly-[\d.]+\.min\.js)"', page.text)
    (updater,) = re.findall(r'<script src="(/static/live-\w+\.js)" data-seconds="5"', page.text)
    script = client.get(plotly)
    assert script.status_code == 200 and len(script.content) > 1_000_000
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert script.headers["content-encoding"] == "gzip"  # 4.8 MB goes as about 1.4 MB
    raw = client.get(plotly, headers={"Accept-Encoding": "gzip"}, extensions={})
    assert int(raw.headers["content-length"]) < len(script.content) / 2
    again = client.get(plotly, headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert "Plotly.react" in client.get(updater).text
    assert client.get("/static/plotly-0.0.0.min.js").status_code == 404


def test_the_runs_page_polls_instead_of_reloading(reader: Storage) -> None:
    client = TestClient(build_app(reader, poll_seconds=2))
    page = client.get("/").text
    assert 'http-equiv="refresh"' not in page
    assert re.search(r'<script src="/static/live-\w+\.js" data-seconds="2" data-version="', page)


def test_a_view_sends_its_sections_only_when_its_run_changed(
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
) -> None:
    client = TestClient(build_app(store))
    first = client.get(f"/api/view/runs/{LIVE}").json()
    assert [s[: s.index(">")] for s in first["sections"]][:2] == [
        '<section id="summary"', '<section id="rungs"'
    ]  # fmt: skip
    version = first["version"]
    same = client.get(f"/api/view/runs/{LIVE}?since={version}").json()
    assert same["version"] == version and "sections" not in same
    store.mark_running(live["queued"], host="box", device="cpu", worker="w1")  # no result yet
    changed = client.get(f"/api/view/runs/{LIVE}?since={version}").json()
    assert changed["version"] != version and len(changed["sections"]) == len(first["sections"])
    runs = client.get("/api/view/?since=nothing").json()
    assert LIVE in runs["sections"][0] and runs["version"] != "nothing"
    trial = client.get(f"/api/view/runs/{LIVE}/trials/{live['queued']}").json()
    assert "running" in trial["sections"][0]


def test_the_front_is_drawn_on_the_two_objectives_asked_for(reader: Storage) -> None:
    client = TestClient(build_app(reader))
    page = client.get(f"/runs/{RUN}?front=train_tokens_per_s,bits_per_byte").text
    (front,) = figures(section(page, "Pareto front"))
    assert front["layout"]["xaxis"]["title"]["text"].startswith("train_tokens_per_s")
    assert front["layout"]["yaxis"]["title"]["text"].startswith("bits_per_byte")
    assert client.get(f"/runs/{RUN}?front=bits_per_byte,params").status_code == 400


def test_a_run_with_one_objective_shows_its_history(
    store: Storage,  # noqa: F811
    one: dict[int, float],  # noqa: F811
) -> None:
    with Storage(store.url, create=False, read_only=True) as reader:
        client = TestClient(build_app(reader))
        page = client.get(f"/runs/{RUN}")
        assert page.status_code == 200
        assert "<h2>Optimisation history</h2>" in page.text
        assert client.get(f"/runs/{RUN}?front=bits_per_byte,params").status_code == 400


def test_a_trial_page_shows_what_the_database_holds(
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
) -> None:
    client = TestClient(build_app(store))
    page = client.get(f"/runs/{LIVE}/trials/{live['middle']}").text
    facts = dict(row.split("\x00") for row in _rows(section(page, "Trial")))
    assert facts["rung"] == "2 of 3" and facts["the rung's budget"] == "666,000 tokens"
    assert facts["tokens this trial"] == "444,000"  # it continued from 222,000
    assert facts["continued from"] == f"trial {live['lowest']}"
    assert f'<a href="/runs/{LIVE}/trials/{live["lowest"]}">' in section(page, "Trial")
    assert facts["seed"] != "—" and facts["worker"] == "w1" and facts["host"] == "box"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", facts["started"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", facts["finished"])
    (metrics,) = tables(section(page, "Metrics"))
    shown = {row["metric"].split(" (")[0]: row["value"] for row in metrics}
    assert shown["accuracy"] == "—" and float(shown["perplexity"]) > 1  # none measured here
    assert shown["params"] == "400,000" and shown["train_tokens_per_s"] != "—"
    (genes,) = tables(section(page, "Genes"))  # one gene a row: narrow at 800 px
    assert {row["gene"] for row in genes} == set(run_space(store.require_run(LIVE)).genes)
    rungs = section(page, "At every rung its genome reached")
    for trial in (live["lowest"], live["middle"]):
        assert f'<a href="/runs/{LIVE}/trials/{trial}">{trial}</a>' in rungs
    assert f'<a href="/">all runs</a> › <a href="/runs/{LIVE}">run {LIVE}</a>' in page
    failed = client.get(f"/runs/{LIVE}/trials/{live['failed']}").text
    assert "<h2>Error</h2>" in failed and "out of memory" in failed
    queued = client.get(f"/runs/{LIVE}/trials/{live['queued']}").text
    assert "No learning curve was recorded yet." in queued


def _rows(part: str) -> list[str]:
    """Each two-cell row of a table as 'first\\x00second' (cells stripped of markup)."""
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", part)
    text = [[html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in row] for row in rows]
    return [f"{first}\x00{second}" for first, second in text]


def test_a_trial_page_draws_its_genomes_curve_and_escapes_its_error(reader: Storage) -> None:
    client = TestClient(build_app(reader))
    failed = [t for t in client.get(f"/api/runs/{RUN}/trials").json() if t["status"] == "failed"]
    page = client.get(f"/runs/{RUN}/trials/{failed[0]['trial_id']}").text
    assert "<h2>Genes</h2>" in page and "<h2>Error</h2>" in page
    assert "shape &lt;b&gt;&amp;mismatch&lt;/b&gt;" in page  # escaped, never markup
    done = [t for t in client.get(f"/api/runs/{RUN}/trials").json() if t["status"] == "done"]
    page = client.get(f"/runs/{RUN}/trials/{done[0]['trial_id']}").text
    (curve,) = figures(page)  # a trial page has one figure
    # Pretraining and the adapt stage are separate lines (the adapt stage counts its
    # tokens from zero again), the adapt one dashed.
    assert [trace["name"] for trace in curve["data"]] == ["rung 1", "rung 1, adapt"]
    for trace in curve["data"]:
        assert values(trace["x"]) == sorted(values(trace["x"]))
    assert curve["data"][1]["line"]["dash"] == "dash"


def test_missing_pages_answer_a_page_to_a_browser_and_json_to_a_script(reader: Storage) -> None:
    client = TestClient(build_app(reader))
    for path in (f"/runs/{RUN}/trials/9999", "/runs/nope", "/api/runs/nope", "/nowhere"):
        page = browser_get(client, path)
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        assert '<a href="/">← all runs</a>' in page.text
        script = client.get(path)
        assert script.status_code == 404 and "detail" in script.json()
    assert "run &#x27;nope&#x27; has no trial" not in browser_get(client, "/runs/nope").text
    assert "no run named &#x27;nope&#x27;" in browser_get(client, "/runs/nope").text
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")


def test_pages_say_steady_state_with_times_in_utc_and_link_back(
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
) -> None:
    client = TestClient(build_app(store))
    runs = client.get("/").text
    assert "steady-state" in runs and "steady_state" not in runs
    ((row,),) = tables(section(runs, "Runs"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row["updated"])
    assert row["queued or running"] == "2"
    page = client.get(f"/runs/{LIVE}").text
    assert '<nav><a href="/">← all runs</a></nav>' in page
    assert "steady_state" not in re.sub(r"<script.*?</script>", "", page, flags=re.S)


def test_the_version_follows_the_writer_and_the_reader_cannot_write(
    store: Storage,  # noqa: F811
    reader: Storage,
) -> None:
    client = TestClient(build_app(reader))
    before = client.get(f"/api/runs/{RUN}").json()["version"]
    genome = store.genome_id(RUN, {"n_layers": 2})
    trial = store.add_trial(RUN, genome, generation=2)
    after = client.get(f"/api/runs/{RUN}").json()
    assert after["trials"] == 11 and after["version"] != before
    store.mark_running(trial, host="box", device="cpu")  # a start alone changes it too
    assert client.get(f"/api/runs/{RUN}").json()["version"] != after["version"]
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
        reader.set_run_status(RUN, "failed")


def test_a_dashboard_started_before_the_database_waits_for_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'evo.db'}"
    client = TestClient(build_app(url))
    for _ in range(2):  # not there yet, then being made: tables, but no schema version
        page = client.get("/")
        assert page.status_code == 200 and "No runs yet" in page.text
        assert "schema version" not in page.text
        assert client.get("/api/runs").json() == []
        assert client.get("/api/view/").json()["version"] == "none"
        with sqlite3.connect(tmp_path / "evo.db") as half_made:
            half_made.execute(
                "CREATE TABLE IF NOT EXISTS evo_schema (id INTEGER PRIMARY KEY, version INTEGER)"
            )
    (tmp_path / "evo.db").unlink()
    with Storage(url) as writer:
        writer.create_run(RUN, SPACE_YAML, seed=0)
        assert f'<a href="/runs/{RUN}">{RUN}</a>' in client.get("/").text
        assert client.get("/api/view/").json()["version"] != "none"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as foreign:
        foreign.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(UserError, match="not an evo database"):
        Database(f"sqlite:///{other}").storage()  # so `evo dashboard` refuses it at start


def test_a_token_guards_every_page_and_a_browser_keeps_it(reader: Storage) -> None:
    client = TestClient(build_app(reader, token="s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200  # the cookie is set now
    assert client.get(f"/runs/{RUN}").status_code == 200
    with pytest.raises(UserError, match="needs a token"):
        serve_dashboard("sqlite:///nowhere.db", host="0.0.0.0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(store: Storage) -> Iterator[str]:  # noqa: F811
    """The dashboard over `store`'s database, polling every 0.3 s, at the returned URL."""
    with Storage(store.url, create=False, read_only=True) as reader:
        app = build_app(reader, poll_seconds=0.3)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join()


class Browser:
    """Headless Chromium driven by chromedriver, through the W3C WebDriver protocol."""

    def __init__(self, width: int) -> None:
        port = free_port()
        self.driver = subprocess.Popen(
            [str(CHROMEDRIVER), f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.wait(lambda: self._ready())
        options = {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900"],
        }
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        reply = self.http.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{reply.json()['value']['sessionId']}"

    def _ready(self) -> bool:
        try:
            return bool(self.http.get("/status").json()["value"]["ready"])
        except httpx.TransportError:
            return False

    def open(self, url: str) -> None:
        """Load `url` afresh (from a blank page: another address of the same page with a
        different #fragment would otherwise only move the fragment)."""
        for address in ("about:blank", url):
            self.http.post(f"{self.session}/url", json={"url": address}).raise_for_status()

    def run(self, script: str, *args: Any) -> Any:
        reply = self.http.post(
            f"{self.session}/execute/sync", json={"script": script, "args": args}
        )
        reply.raise_for_status()
        return reply.json()["value"]

    def click(self, script: str) -> None:
        """A real click (the pointer's, as a reader's) on the element `script` returns."""
        (element,) = self.run(script).values()
        self.http.post(f"{self.session}/element/{element}/click", json={}).raise_for_status()

    def drag(self, script: str, right: int, down: int) -> None:
        """A pointer drag across the middle of the element `script` returns, `right` and
        `down` pixels."""
        element = self.run(script)
        self.run("arguments[0].scrollIntoView({block: 'center'})", element)
        steps = [
            {"type": "pointerMove", "origin": element, "x": -right // 2, "y": -down // 2},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "origin": "pointer", "x": right, "y": down, "duration": 200},
            {"type": "pointerUp", "button": 0},
        ]
        pointer = {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}}
        actions = {"actions": [{**pointer, "actions": steps}]}
        reply = self.http.post(f"{self.session}/actions", json=actions)
        assert reply.status_code == 200, reply.text

    def wait(self, done: Any, seconds: float = 30) -> None:
        end = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < end, "the page did not get there in time"
            time.sleep(0.1)

    def wait_for(self, script: str, *args: Any) -> None:
        self.wait(lambda: self.run(script, *args))

    def close(self) -> None:
        self.http.delete(self.session)
        self.http.close()
        self.driver.terminate()
        self.driver.wait(timeout=30)


@pytest.fixture(params=[1400, 800], ids=["1400px", "800px"])
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(NO_BROWSER)
    opened = Browser(request.param)
    yield opened
    opened.close()


# What a page reports to the test: every visible row of its trials table as [trial, rung,
# status], whether the page is wider than the window, and the marker set before changes.
STATE = """
const rows = Array.from(document.querySelectorAll("#trials tbody tr"))
  .filter((row) => !row.hidden).map((row) => [row.cells[0].textContent,
    row.cells[2].textContent, row.cells[3].textContent]);
const wide = document.querySelector("#trials .wide");
return {rows, marker: window.__marker, sideways: document.documentElement.scrollWidth >
  window.innerWidth, clipped: wide ? wide.scrollWidth > wide.clientWidth : null,
  focused: document.activeElement && document.activeElement.className};
"""
DRAWN = "return document.querySelectorAll('.main-svg').length >= arguments[0];"


def test_a_live_run_page_updates_in_place(
    served: str,
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
    browser: Browser,
) -> None:
    browser.open(f"{served}/runs/{LIVE}")
    browser.wait_for(DRAWN, 8)
    width = browser.run("return window.innerWidth")
    state = browser.run(STATE)
    assert not state["sideways"]  # nothing pushes the page wider than the window
    if width >= 1400:
        assert state["clipped"] is False  # every column of the trials table in view
    # Rung by rung, the top first, best first within a rung; the rung column marked.
    assert [row[1] for row in state["rows"]] == sorted((r[1] for r in state["rows"]), reverse=True)
    assert state["rows"][0][0] == str(live["top"])
    assert browser.run("return document.querySelector('#trials th[aria-sort]').textContent") == (
        "rung"
    )
    # What a reader did before the run changed, with the pointer: zoomed, hid a legend
    # entry, selected a range of parallel coordinates; then typed a filter.
    history = "return document.querySelector('#history .plot').layout.xaxis.range"
    whole = browser.run(history)
    browser.drag("return document.querySelector('#history .nsewdrag')", 200, 0)
    zoomed = browser.run(history)
    assert zoomed != whole
    browser.click("return document.querySelectorAll('#history .legendtoggle')[1]")
    browser.drag("return document.querySelector('#genes .axis-brush .background')", 0, 80)
    selected = "return document.querySelector('#genes .plot').data[0].dimensions[0].constraintrange"
    chosen = browser.run(selected)
    assert chosen is not None
    browser.run("""
      window.__marker = "kept";
      const filter = document.querySelector("#trials input.filter");
      filter.focus();
      filter.value = "rung:1";
      filter.dispatchEvent(new Event("input"));
    """)
    lowest = sum(1 for row in state["rows"] if row[1] == "1")
    # The running trial's worker sends its first points: its curve is drawn, in place.
    running = f"trial {live['running']} "
    traces = (
        "return document.querySelector('#curves .plot')._fullData.map((t) => [t.name, t.x.length])"
    )
    assert not any(name.startswith(running) for name, _ in browser.run(traces))
    sent = [CurvePoint(step, 2048 * step, 0.1 * step, 4.0 - 0.1 * step) for step in (1, 2, 3)]
    assert store.add_curve_points(live["running"], sent)
    drawn = lambda: [n for name, n in browser.run(traces) if name.startswith(running)]  # noqa: E731
    browser.wait(lambda: drawn() != [])
    assert drawn() == [3]  # its three points
    fresh = store.add_trial(LIVE, live["fresh"], rung=0)
    for status in ("queued", "running", "done"):
        if status == "running":
            store.mark_running(fresh, host="box", device="cpu", worker="w1")
        if status == "done":
            store.finish_trial(fresh, outcome("done", result(2.01, 950.0, adapt=False)))
        browser.wait(lambda s=status: [str(fresh), "1", s] in browser.run(STATE)["rows"])
    state = browser.run(STATE)
    assert state["marker"] == "kept"  # the page was never reloaded
    assert len(state["rows"]) == lowest + 1 and {row[1] for row in state["rows"]} == {"1"}
    assert state["focused"] == "filter"
    kept = browser.run("""
      const [history, genes] = ["#history .plot", "#genes .plot"].map((s) =>
        document.querySelector(s));
      return [history.layout.xaxis.range, history._fullData[1].visible,
              genes.data[0].dimensions[0].constraintrange,
              document.querySelector("#trials input.filter").value, location.hash];
    """)
    assert kept == [zoomed, "legendonly", chosen, "rung:1", "#filter=rung%3A1"]
    assert browser.run(DRAWN, 8)


def test_a_live_trial_page_and_runs_list_update_in_place(
    served: str,
    store: Storage,  # noqa: F811
    live: dict[str, int],  # noqa: F811
    browser: Browser,
) -> None:
    fresh = store.add_trial(LIVE, live["fresh"], rung=0)
    browser.open(f"{served}/runs/{LIVE}/trials/{fresh}")
    browser.run("window.__marker = 'kept'")
    facts = "return document.querySelector('#trial table').textContent"
    assert "queued" in browser.run(facts)
    store.mark_running(fresh, host="box", device="cpu", worker="w1")
    browser.wait(lambda: "running" in browser.run(facts) and "w1" in browser.run(facts))
    store.finish_trial(fresh, outcome("done", result(2.01, 950.0, adapt=False)))
    browser.wait_for(DRAWN, 1)  # its learning curve, drawn where a note said none yet
    assert browser.run("return window.__marker") == "kept"
    assert not browser.run(STATE)["sideways"]

    browser.open(f"{served}/")
    browser.run("window.__marker = 'kept'")
    count = "return document.querySelector('#runs tbody td:nth-child(4)').textContent"
    before = int(browser.run(count))
    store.add_trial(LIVE, live["fresh"], rung=1)
    browser.wait(lambda: int(browser.run(count)) == before + 1)
    assert browser.run("return window.__marker") == "kept"


def test_a_real_browser_sorts_and_filters_the_trials_table(
    served: str,
    reader: Storage,
    browser: Browser,
) -> None:
    trials = TestClient(build_app(reader)).get(f"/api/runs/{RUN}/trials").json()
    (failed,) = [str(t["trial_id"]) for t in trials if t["status"] == "failed"]
    browser.open(f"{served}/runs/{RUN}#sort=-trial&filter=status:failed%20status:timeout")
    browser.wait_for(DRAWN, 6)
    assert browser.run(STATE)["rows"] == []  # two column tests must both hold: none does
    browser.open(f"{served}/runs/{RUN}#sort=-trial")
    browser.wait_for(DRAWN, 6)
    ids = [int(row[0]) for row in browser.run(STATE)["rows"]]
    assert ids == sorted((t["trial_id"] for t in trials), reverse=True)
    assert browser.run("return document.querySelector('#trials th[aria-sort]').textContent") == (
        "trial"
    )
    links = browser.run("return Array.from(document.querySelectorAll('#trials td a'), a => a.href)")
    assert len(links) == len(trials) and links[0].endswith(f"/runs/{RUN}/trials/{ids[0]}")
    browser.open(f"{served}/runs/{RUN}#filter=status:failed")
    browser.wait_for(DRAWN, 6)
    assert [row[0] for row in browser.run(STATE)["rows"]] == [failed]
