from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from conftest import outcome
from fastapi.testclient import TestClient
from test_report import (  # noqa: F401 (fixtures)
    RUN,
    SPACE_YAML,
    figures,
    one,
    result,
    run,
    section,
    store,
    values,
)

from evo.dashboard import build_app, serve_dashboard
from evo.storage import Storage
from llm.errors import UserError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def reader(store: Storage, run: dict[str, object]) -> Iterator[Storage]:  # noqa: F811
    with Storage(store.url, create=False, read_only=True) as storage:
        yield storage


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


def test_a_run_page_is_the_live_report_with_plotly_served_locally(reader: Storage) -> None:
    client = TestClient(build_app(reader))
    page = client.get(f"/runs/{RUN}").text
    for heading in ("Summary", "Pareto front", "Trials", "Failures", "Promotions"):
        assert f"<h2>{heading}</h2>" in page
    assert 'src="/static/plotly.min.js"' in page and "cdn" not in page.lower()
    assert f'fetch("/api/runs/{RUN}")' in page  # it polls its run and redraws on a change
    assert '<table class="sortable">' in page
    script = client.get("/static/plotly.min.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000


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


def test_a_trial_page_shows_genes_rungs_curve_and_error(reader: Storage) -> None:
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
    assert client.get(f"/runs/{RUN}/trials/9999").status_code == 404
    assert client.get("/runs/nope").status_code == 404


def test_the_version_follows_the_writer_and_the_reader_cannot_write(
    store: Storage,  # noqa: F811
    reader: Storage,
) -> None:
    client = TestClient(build_app(reader))
    before = client.get(f"/api/runs/{RUN}").json()["version"]
    genome = store.genome_id(RUN, {"n_layers": 2})
    store.add_trial(RUN, genome, generation=2)
    after = client.get(f"/api/runs/{RUN}").json()
    assert after["trials"] == 11 and after["version"] != before
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
        reader.set_run_status(RUN, "failed")


def test_a_token_guards_every_page_and_a_browser_keeps_it(reader: Storage) -> None:
    client = TestClient(build_app(reader, token="s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200  # the cookie is set now
    assert client.get(f"/runs/{RUN}").status_code == 200
    with pytest.raises(UserError, match="needs a token"):
        serve_dashboard("sqlite:///nowhere.db", host="0.0.0.0")


@pytest.fixture
def served(reader: Storage) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(build_app(reader), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


def chromium(*args: str) -> str:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt install chromium)")
def test_a_real_browser_draws_the_charts_and_sorts_the_table(served: str, tmp_path: Path) -> None:
    wait = "--virtual-time-budget=10000"
    run_page = f"{served}/runs/{RUN}"
    dom = chromium(wait, "--dump-dom", run_page)
    assert dom.count('class="main-svg"') >= 6  # plotly drew every chart into SVG
    ids = [int(i) for i in re.findall(r'<a href="/runs/demo/trials/(\d+)">', dom)]
    assert len(ids) == 10  # every trial linked to its page
    sorted_dom = chromium(wait, "--dump-dom", f"{run_page}#sort=-trial")
    descending = [int(i) for i in re.findall(r'<a href="/runs/demo/trials/(\d+)">', sorted_dom)]
    assert descending == sorted(ids, reverse=True)
    for width in (1400, 800):
        shot = tmp_path / f"run-{width}.png"
        chromium(wait, f"--window-size={width},900", f"--screenshot={shot}", run_page)
        assert shot.stat().st_size > 10_000


def visible_trials(dom: str) -> list[int]:
    rows = re.findall(r"<tr( hidden=\"\")?><td><a href=\"/runs/demo/trials/(\d+)\">", dom)
    return [int(trial) for hidden, trial in rows if not hidden]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt install chromium)")
def test_a_real_browser_filters_the_table_and_draws_a_trials_curve(
    served: str, reader: Storage, tmp_path: Path
) -> None:
    wait = "--virtual-time-budget=10000"
    trials = TestClient(build_app(reader)).get(f"/api/runs/{RUN}/trials").json()
    failed = [t["trial_id"] for t in trials if t["status"] == "failed"]
    dom = chromium(wait, "--dump-dom", f"{served}/runs/{RUN}#sort=-trial&filter=failed")
    assert visible_trials(dom) == sorted(failed, reverse=True)
    assert 'class="filter"' in dom and len(re.findall(r"<tr[ >]", dom)) > len(failed)
    done = next(t["trial_id"] for t in trials if t["status"] == "done")
    trial_page = f"{served}/runs/{RUN}/trials/{done}"
    assert chromium(wait, "--dump-dom", trial_page).count('class="main-svg"') >= 1
    shot = tmp_path / "trial.png"
    chromium(wait, "--window-size=1400,900", f"--screenshot={shot}", trial_page)
    assert shot.stat().st_size > 10_000
