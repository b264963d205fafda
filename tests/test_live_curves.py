"""Running trials' learning curves: a trial passes its curve points on while it trains,
the driver stores them before the trial ends (the worker never writes the database), its
outcome replaces them with its whole curve, and the dashboard serves them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml
from conftest import outcome, steady_space_dict, write_corpus
from fastapi.testclient import TestClient

import evo.executor
from evo.cli import main as evo_cli
from evo.dashboard import build_app
from evo.data import prepare_data
from evo.driver import open_run
from evo.executor import CurveSender, LocalExecutor
from evo.search.steady_state import SteadyStateSearch
from evo.space import space_from_dict
from evo.storage import Storage
from llm.config import ModelConfig, TrainConfig
from llm.data import TokenSplits
from llm.trial import CurvePoint, TrialSpec, run_trial

KEYS = ("step", "tokens", "train_loss", "stage")


def shown(points: list[Any]) -> list[tuple[Any, ...]]:
    """Points (dicts or CurvePoints) as what a live point and a stored one share."""
    return [tuple(p[k] if isinstance(p, dict) else getattr(p, k) for k in KEYS) for p in points]


def test_a_trial_passes_on_each_point_of_its_curve_as_it_trains() -> None:
    stream = (np.arange(3000) % 7 + 1).astype(np.uint16)
    model = ModelConfig(vocab_size=16, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=16)
    train = TrainConfig(batch_size=2, seq_len=16, max_steps=6, log_interval=2, eval_interval=0)
    seen: list[CurvePoint] = []
    spec = TrialSpec(
        model, train, TokenSplits(stream[:2000], stream[2000:], 1000), on_point=seen.append
    )
    result = run_trial(spec)
    assert [p.step for p in seen] == [2, 4, 6]
    assert shown(seen) == shown(result.curve)


def test_points_are_sent_at_most_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[CurvePoint]] = []

    class Channel:
        def send(self, points: list[CurvePoint]) -> None:
            sent.append(points)

    clock = iter([0.0, 1.0, 2.5, 3.0, 4.0, 4.6])
    monkeypatch.setattr(evo.executor.time, "monotonic", lambda: next(clock))
    sender = CurveSender(Channel())  # created at 0.0
    for step in range(1, 6):
        sender(CurvePoint(step=step, tokens=step, seconds=0.0, train_loss=1.0))
    assert [[p.step for p in points] for points in sent] == [[1, 2], [3, 4, 5]]


def test_a_local_search_stores_running_trials_points_before_they_end(
    workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evo.executor, "PROGRESS_SECONDS", 0.0)  # every point at once
    data = steady_space_dict(write_corpus(workdir / "corpus"), budget={"trials": 4})
    data["fixed"]["train"]["log_interval"] = 1
    space = space_from_dict(data)
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    before_end: dict[int, list[tuple[Any, ...]]] = {}
    finish = storage.finish_trial

    def remember_then_finish(trial_id: int, *args: Any, **kwargs: Any) -> int:
        (running,) = [t for t in storage.trials("s") if t.id == trial_id]
        assert running.status == "running"
        before_end[trial_id] = shown(storage.curve(trial_id))
        return finish(trial_id, *args, **kwargs)

    monkeypatch.setattr(storage, "finish_trial", remember_then_finish)
    open_run(storage, "s", space)
    prepared, vocab = prepare_data(space)
    SteadyStateSearch(space, "s", storage, LocalExecutor(), prepared, vocab).run()
    assert len(before_end) == 4
    for trial_id, live in before_end.items():
        whole = shown(storage.curve(trial_id))
        # The live points: the first ones of its whole curve, stored while it ran.
        assert live and live == whole[: len(live)], trial_id


def test_late_points_of_a_trial_that_ended_are_not_stored(database_url: str) -> None:
    with Storage(database_url) as storage:
        storage.create_run("r", "model: {}\n", seed=0)
        trial = storage.add_trial("r", storage.genome_id("r", {"n": 1}))
        point = CurvePoint(step=1, tokens=32, seconds=0.1, train_loss=3.5)
        assert not storage.add_curve_points(trial, [point])  # queued, not running yet
        storage.mark_running(trial, host="h", device="cpu")
        assert storage.add_curve_points(trial, [point])
        (interrupted,) = storage.interrupt_active("r")
        assert interrupted.id == trial
        assert not storage.add_curve_points(trial, [point])
        assert shown(storage.curve(trial)) == [(1, 32, 3.5, "pretrain")]


def test_the_dashboard_serves_and_draws_a_running_trials_curve(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'evo.db'}"
    space = steady_space_dict(write_corpus(tmp_path / "corpus"))
    with Storage(url) as storage:
        storage.create_run("live", yaml.safe_dump(space), seed=0)
        genes = {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": 0.001}
        done = storage.add_trial("live", storage.genome_id("live", genes))
        storage.mark_running(done, host="h", device="cpu")
        storage.finish_trial(done, outcome("done", {"bits_per_byte": 2.5}))
        running = storage.add_trial("live", storage.genome_id("live", {**genes, "n_layers": 2}))
        storage.mark_running(running, host="h", device="cpu")
        client = TestClient(build_app(url))
        trial_page = f"/api/view/runs/live/trials/{running}"
        empty = client.get(trial_page).json()
        before = empty["version"]
        assert "No learning curve was recorded yet" in "".join(empty["sections"])
        run_before = client.get("/api/view/runs/live").json()["version"]
        storage.add_curve_points(
            running,
            [
                CurvePoint(step=s, tokens=64 * s, seconds=0.1 * s, train_loss=4.0 - s / 10)
                for s in (1, 2)
            ],
        )
        curve = client.get(f"/api/runs/live/trials/{running}/curve").json()
        assert [(p["step"], p["tokens"], p["train_loss"]) for p in curve] == [
            (1, 64, 3.9),
            (2, 128, 3.8),
        ]
        view = client.get(trial_page, params={"since": before}).json()
        assert view["version"] != before  # the open page redraws
        assert "No learning curve was recorded yet" not in "".join(view["sections"])
        run_view = client.get("/api/view/runs/live", params={"since": run_before}).json()
        assert run_view["version"] != run_before
        drawn = "".join(run_view["sections"])
        assert f"trial {running} (genome" in drawn and "running at rung 1" in drawn
        assert client.get("/api/runs/live/trials/999/curve").status_code == 404


class Killed(BaseException):
    """The driver dies (as by kill -9): nothing after it runs, no row is tidied."""


def search_outcome(url: str) -> list[tuple[Any, ...]]:
    """What a search did, independent of timing: each result's decision, genes, rung,
    status and score."""
    with Storage(url, create=False) as storage:
        genomes = storage.genomes("space")
        return sorted(
            (
                t.decision,
                sorted(genomes[t.genome_id].items()),
                t.rung,
                t.status,
                t.metric("bits_per_byte"),
            )
            for t in storage.trials("space")
            if t.status.is_result
        )


def test_a_search_killed_with_a_running_trials_points_stored_resumes_the_same(
    workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evo.executor, "PROGRESS_SECONDS", 0.0)
    data = steady_space_dict(write_corpus(workdir / "corpus"))
    data["fixed"]["train"]["log_interval"] = 1
    (workdir / "space.yaml").write_text(yaml.safe_dump(data))
    run = ["run", "space.yaml", "--local", "--quiet", "--storage"]
    straight, killed = (f"sqlite:///{workdir / name}" for name in ("straight.db", "killed.db"))
    assert evo_cli([*run, straight]) == 0

    store_points, stored = Storage.add_curve_points, []

    def dying(self: Storage, trial_id: int, points: list[CurvePoint]) -> bool:
        stored.append(store_points(self, trial_id, points))
        if len(stored) == 20:
            raise Killed
        return stored[-1]

    monkeypatch.setattr(Storage, "add_curve_points", dying)
    with pytest.raises(Killed):
        evo_cli([*run, killed])
    monkeypatch.setattr(Storage, "add_curve_points", store_points)
    with Storage(killed, create=False) as storage:
        (running,) = [t for t in storage.trials("space") if t.status == "running"]
        assert storage.curve(running.id)  # its points so far, as the dead driver left them
    assert evo_cli(["resume", "space", "--local", "--quiet", "--storage", killed]) == 0
    assert search_outcome(killed) == search_outcome(straight)
    with Storage(killed, create=False) as storage:
        (interrupted,) = [t for t in storage.trials("space") if t.id == running.id]
        assert interrupted.status == "interrupted"
        assert not any(t.status.is_active for t in storage.trials("space"))
