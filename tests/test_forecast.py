"""A target beyond the top rung: the search forecasts it from the rung scores, ranks its
genomes by the forecast (status, promote, validate), stores it with each result, shows
it, and checks it against `evo validate`'s scores at the target."""

from __future__ import annotations

import heapq
import io
import math
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from conftest import outcome, steady_space_dict, write_corpus
from fastapi.testclient import TestClient
from rich.console import Console

from evo.cli import main as evo
from evo.dashboard import build_app
from evo.data import TrialData
from evo.describe import target_passes
from evo.driver import open_run
from evo.executor import Executor, TrialJob, TrialObserver, TrialOutcome
from evo.metrics import TrialStatus
from evo.promote import HorizonRate, horizon_rate, pick_genome, pick_trial
from evo.report.page import write_report
from evo.schedule.forecast import TargetForecast
from evo.search.steady_state import SteadyStateSearch, history
from evo.space import SearchSpace, load_space
from evo.status import print_status
from evo.storage import Storage
from evo.summary import SearchScore, search_order
from evo.validate import search_ranking, validation_jobs, validation_report
from llm.trial import TrialEnd, TrialResult

VOCAB = 40
TARGET = 2700  # steps: 100 times the top rung (27)


def law(genes: dict[str, Any], steps: float) -> float:
    """A genome's final bits per byte after `steps`: L = E + A·D^(−1/2). A higher learning
    rate learns faster in the long run (a larger A, a lower floor E) but is worse at every
    rung (3, 9, 27 steps) than at the target: the two orders differ. Two layers add a
    constant, so that most of the genomes that advance have one layer."""
    u = math.log10(genes["learning_rate"] / 1e-3)  # 0 to 1.3 in the space
    scale = 1 + 2 * u
    floor = 3.2 + 0.05 * u - scale / math.sqrt(27)
    return floor + scale / math.sqrt(steps) + 0.5 * (genes["n_layers"] - 1)


class LawExecutor(Executor):
    """Trials answered by `law`, one at a time, with a stable checkpoint below the top."""

    capacity = 1

    def __init__(self, genes_of: Any) -> None:
        self.genes_of = genes_of
        self.queue: list[tuple[int, TrialJob]] = []
        self.clock = 1_000_000.0

    def load_data(self, data: TrialData) -> None:
        pass

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, job: TrialJob, observer: TrialObserver) -> None:
        heapq.heappush(self.queue, (len(self.queue), job))
        observer.started(job, 0)

    def wait(self, observer: TrialObserver) -> None:
        _, job = heapq.heappop(self.queue)
        steps = job.train.max_steps
        assert steps is not None
        genes = self.genes_of(job.genome_id)
        metrics = {"bits_per_byte": law(genes, steps), "steps": steps, "tokens": 64 * steps}
        result = TrialResult(TrialEnd.DONE, metrics={**metrics, "wall_seconds": 1.0})
        checkpoint = None
        if job.keep_stable and job.checkpoints is not None:
            checkpoint = job.checkpoints.name(job.genome_id, job.rung)
            job.checkpoints.write(checkpoint, {"stable.pt": b"law"})
        self.clock += 1
        done = TrialOutcome(
            result, TrialStatus.DONE, "", "", self.clock - 1, self.clock, checkpoint
        )
        observer.finished(job, done)


INITIAL = [  # one layer, learning rates from slow to fast learners
    {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": rate}
    for rate in (1.2e-3, 3e-3, 8e-3, 1.9e-2)
]


def far_space(workdir: Path, target: int = TARGET, **search: Any) -> SearchSpace:
    corpus = write_corpus(workdir / "corpus")
    search = {"eta": 2, "budget": {"trials": 30}, "initial": INITIAL, **search}
    space = steady_space_dict(corpus, target={"max_steps": target}, **search)
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    return load_space(workdir / "space.yaml")


def run_law_search(space: SearchSpace, storage: Storage, name: str = "far") -> SteadyStateSearch:
    open_run(storage, name, space)
    genomes: dict[int, dict[str, Any]] = {}

    def genes_of(genome_id: int) -> dict[str, Any]:
        if genome_id not in genomes:
            genomes.update(storage.genomes(name))
        return genomes[genome_id]

    search = SteadyStateSearch(
        space, name, storage, LawExecutor(genes_of), cast(TrialData, None), VOCAB
    )
    search.run()
    return search


@pytest.fixture
def far(workdir: Path) -> tuple[Storage, SearchSpace, SteadyStateSearch]:
    """A finished search with a target 100 times its top rung, answered by `law`."""
    space = far_space(workdir)
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    return storage, space, run_law_search(space, storage)


def top_rung_order(storage: Storage, name: str = "far") -> list[int]:
    """The genomes at the top rung, best first by the score measured there."""
    top = [t for t in storage.trials(name) if t.rung == 2 and t.status is TrialStatus.DONE]
    return [t.genome_id for t in sorted(top, key=lambda t: t.metric("bits_per_byte"))]


def test_a_far_target_run_ranks_its_genomes_by_their_predicted_score(far) -> None:
    storage, space, search = far
    measured = top_rung_order(storage)
    genomes = storage.genomes("far")
    truth = sorted(measured, key=lambda g: law(genomes[g], TARGET))
    assert len(measured) >= 3 and measured != truth  # the two orders differ here
    forecast = storage.forecast("far")
    assert forecast is not None and forecast.budget == {"max_steps": TARGET}
    predicted = sorted(measured, key=lambda g: forecast.predictions[g].mean)
    # The law is the one fitted, so the forecast finds the target's order.
    assert predicted == truth
    ranking = search_ranking(storage, "far", space)
    assert [c.genome_id for c in ranking[: len(measured)]] == truth
    assert ranking[0].genome_id != measured[0]
    assert f"pick for the target: genome {truth[0]}, bits_per_byte" in search.detail()
    # What promote and validate take first is the pick by prediction.
    assert pick_trial(storage, "far", space, None, None).genome_id == truth[0]
    chosen, reason = pick_genome(storage, "far", space, None, None)
    assert chosen == truth[0] and "predicted at 2,700 steps" in reason
    jobs = validation_jobs(
        storage, "far", space, VOCAB, top=2, seeds=1, budget={"max_steps": TARGET}
    )
    assert [job.genome_id for job in jobs] == truth[:2]
    # Another objective asked for is still ranked by its score at the top rung.
    assert pick_trial(storage, "far", space, None, "bits_per_byte").genome_id == truth[0]


def test_the_stored_forecast_is_the_fit_of_the_recorded_results(far) -> None:
    storage, space, _ = far
    events, _ = history(space, storage.trials("far"), storage.genomes("far"))
    fresh = TargetForecast.of(space)
    assert fresh is not None
    for event in reversed(events):  # in any order: the fit sorts its points
        if event.kind == "result":
            fresh.add(event.genome_id, event.rung, event.values[0] if event.values else None)
    stored = storage.forecast("far")
    assert stored is not None
    assert stored.recorded == max(t.recorded or 0 for t in storage.trials("far"))
    assert stored.predictions == fresh.record().predictions
    assert stored.alpha == pytest.approx(0.5, rel=0.05)  # the law's own exponent
    assert set(stored.predictions) == {t.genome_id for t in storage.trials("far")}


def test_with_the_target_at_the_top_rung_nothing_is_forecast(workdir: Path) -> None:
    space = far_space(workdir, target=27)
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    search = run_law_search(space, storage)
    assert search.scheduler.forecast is None and storage.forecast("far") is None
    assert "pick" not in search.detail()
    ranking = [c.genome_id for c in search_ranking(storage, "far", space)]
    assert ranking[: len(top_rung_order(storage))] == top_rung_order(storage)


def test_only_a_loss_is_forecast(workdir: Path) -> None:
    throughput = far_space(workdir, objectives=["train_tokens_per_s"])
    assert TargetForecast.of(throughput) is None
    perplexity = far_space(workdir, objectives=["perplexity"])
    forecast = TargetForecast.of(perplexity)
    loss = TargetForecast.of(far_space(workdir, objectives=["val_loss"]))
    assert forecast is not None and loss is not None
    for genome, rate in enumerate((1.2e-3, 1.9e-2)):
        genes = {**INITIAL[0], "learning_rate": rate}
        for rung, steps in enumerate((3, 9, 27)):
            forecast.add(genome, rung, math.exp(law(genes, steps)))
            loss.add(genome, rung, law(genes, steps))
    forecast.add(0, 2, None)  # a failure is no point
    assert len(forecast.points) == 6
    # Perplexity is fitted through its log: its prediction is the exp of the loss's.
    predicted, of_loss = forecast.predictions()[1], loss.predictions()[1]
    assert math.log(predicted.mean) == pytest.approx(of_loss.mean, abs=1e-9)
    assert math.log(predicted.low) == pytest.approx(of_loss.low, abs=1e-9)
    assert math.log(predicted.high) == pytest.approx(of_loss.high, abs=1e-9)
    assert predicted.low < predicted.mean < predicted.high


def status_text(storage: Storage, name: str = "far") -> str:
    console = Console(file=io.StringIO(), width=120)
    print_status(storage, name, console)
    return cast(io.StringIO, console.file).getvalue()


def test_status_and_report_show_each_top_genomes_rungs_beside_its_prediction(
    far, workdir: Path
) -> None:
    storage, _, _ = far
    storage.set_train_tokens("far", 50_000)
    forecast = storage.forecast("far")
    assert forecast is not None
    pick = search_ranking(storage, "far", load_space(workdir / "space.yaml"))[0].genome_id
    text = status_text(storage)
    assert f"pick for the target: genome {pick}," in text
    assert "2,700 steps is 100× the top rung: genomes are ranked by their bits_per_byte" in text
    # 2,700 steps of 4 × 16 tokens over 50,000 training tokens.
    assert "passes over the training split (50,000 tokens) 3.46 times" in text
    row = next(line for line in text.splitlines() if line.startswith(f"│ {pick:>6} │"))
    prediction = forecast.predictions[pick]
    assert (
        f"{prediction.mean:.4g}" in row and f"{prediction.low:.4g} to {prediction.high:.4g}" in row
    )
    page = write_report(storage, "far", workdir / "report.html").read_text()
    assert 'id="predictions"' in page and "Predictions at the target" in page
    assert f"{prediction.low:.4g} to {prediction.high:.4g}" in page


def test_nothing_is_predicted_until_a_genome_is_scored_at_two_rungs(workdir: Path) -> None:
    space = far_space(workdir, budget={"trials": 2})  # two first genomes at the lowest rung
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    search = run_law_search(space, storage)
    assert {t.rung for t in storage.trials("far")} == {0}
    forecast = storage.forecast("far")
    assert forecast is not None and forecast.predictions == {}
    assert "pick" not in search.detail()
    text = status_text(storage)
    assert "no prediction at the target yet: it waits for a genome scored at two rungs" in text
    assert "pick for the target" not in text
    # Fitted on those scores alone the law's slope is its prior's guess: ±10⁵ wide.
    fresh = TargetForecast.of(space)
    assert fresh is not None
    for trial in storage.trials("far"):
        fresh.add(trial.genome_id, 0, trial.metric("bits_per_byte"))
    assert not fresh.fit.extrapolates and fresh.fit.predict(1, TARGET).high > 1e3
    genes = storage.genomes("far")[1]
    fresh.add(1, 1, law(genes, 9))
    predictions = fresh.predictions()
    assert fresh.fit.extrapolates and set(predictions) == {
        t.genome_id for t in storage.trials("far")
    }
    assert all(p.high - p.low < 10 for p in predictions.values())


def test_the_dashboards_run_api_has_the_forecast_in_the_searchs_order(far) -> None:
    storage, space, _ = far
    forecast = storage.forecast("far")
    assert forecast is not None
    shown = TestClient(build_app(storage)).get("/api/runs/far").json()["forecast"]
    assert shown["metric"] == "bits_per_byte" and shown["target"] == {"max_steps": TARGET}
    assert shown["beyond"] == pytest.approx(100) and shown["level"] == forecast.level
    assert shown["alpha"] == pytest.approx(forecast.alpha)
    ranking = [s.genome_id for s in search_ranking(storage, "far", space)]
    genomes = shown["genomes"]
    assert [g["genome_id"] for g in genomes] == [g for g in ranking if g in forecast.predictions]
    measured = {
        (t.genome_id, t.rung): t.metric("bits_per_byte")
        for t in storage.trials("far")
        if t.status is TrialStatus.DONE
    }
    for g in genomes:
        prediction = forecast.predictions[g["genome_id"]]
        assert (g["predicted"], g["low"], g["high"]) == pytest.approx(
            (prediction.mean, prediction.low, prediction.high)
        )
        assert g["scores"] == [measured[g["genome_id"], r] for r in range(len(g["scores"]))]
    assert {len(g["scores"]) for g in genomes} == {1, 2, 3}


def test_the_horizon_rule_lowers_each_genomes_rate_from_the_highest_rung_it_reached(far) -> None:
    storage, space, _ = far
    reached: dict[int, int] = {}
    for t in storage.trials("far"):
        if t.status is TrialStatus.DONE:
            reached[t.genome_id] = max(t.rung, reached.get(t.genome_id, 0))
    assert set(reached.values()) == {0, 1, 2}
    target = {"max_steps": TARGET}
    for genome, rung in reached.items():
        genes = storage.genomes("far")[genome]
        rate = horizon_rate(storage, "far", space, (genome, genes), target, HorizonRate(0.5))
        assert rate["factor"] == pytest.approx((TARGET / (3, 9, 27)[rung]) ** -0.5)
        assert rate["searched"] == genes["learning_rate"]
    plain = horizon_rate(storage, "far", space, (genome, genes), target, HorizonRate())
    assert plain["factor"] == 1


def test_validating_at_the_target_checks_the_predictions(far) -> None:
    storage, space, _ = far
    ranking = search_ranking(storage, "far", space)[:4]
    genomes = storage.genomes("far")
    target = {"max_steps": TARGET}
    for candidate in ranking:
        for seed, noise in ((1, -0.02), (2, 0.02)):
            value = law(genomes[candidate.genome_id], TARGET) + noise
            validation = storage.start_validation("far", candidate.genome_id, target, seed)
            storage.finish_validation(validation, outcome("done", {"bits_per_byte": value}))
    report = validation_report(storage, "far", space)
    assert report is not None and report.check is not None
    check = report.check
    assert check.genomes == 4 and check.kendall == pytest.approx(1.0)
    # The top rung ranks these four otherwise.
    naive = search_order(
        {c.genome_id: SearchScore(c.value, c.rung) for c in ranking}, space.search.objectives[0], {}
    )
    assert naive != [c.genome_id for c in ranking] and check.naive_kendall < 1.0
    predicted = [c.predicted.mean for c in ranking if c.predicted is not None]
    truth = [law(genomes[c.genome_id], TARGET) for c in ranking]
    assert check.mae == pytest.approx(
        sum(abs(p - t) for p, t in zip(predicted, truth, strict=True)) / 4
    )
    # The seed noise of the intervals is now the validated one: 0.02 × √2.
    assert check.seed_noise == pytest.approx(0.02 * math.sqrt(2))
    assert 0.0 <= check.inside <= 1.0
    assert "predictions at the target: Kendall τ 1.00" in status_text(storage)
    shown = TestClient(build_app(storage)).get("/api/runs/far").json()["forecast"]
    assert shown["noise_source"] == "validated"
    assert shown["seed_noise"] == pytest.approx(0.02 * math.sqrt(2))


def test_passes_over_the_training_split_per_target_unit(workdir: Path) -> None:
    space = far_space(workdir)
    # 2,700 steps × 4 sequences × 16 tokens.
    assert target_passes(space, 172_800) == (1.0, 1.0)
    assert target_passes(space, None) is None
    data = yaml.safe_load((workdir / "space.yaml").read_text())
    data["genes"]["batch_size"] = {"choice": [2, 8]}
    del data["fixed"]["train"]["batch_size"]
    (workdir / "batch.yaml").write_text(yaml.safe_dump(data))
    by_batch = load_space(workdir / "batch.yaml")
    assert target_passes(by_batch, 172_800) == (0.5, 2.0)
    data = yaml.safe_load((workdir / "space.yaml").read_text())
    data["search"]["target"] = {"max_tokens": 1000}
    data["search"]["rungs"] = [100, 300, 900]
    (workdir / "tokens.yaml").write_text(yaml.safe_dump(data))
    assert target_passes(load_space(workdir / "tokens.yaml"), 400) == (2.5, 2.5)


def test_evo_run_says_first_how_far_the_target_is_and_how_many_passes_it_makes(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    far_space(workdir)  # writes space.yaml
    url = f"sqlite:///{workdir / 'evo.db'}"
    args = ["run", "space.yaml", "--set", "search.budget.trials=2", "--local", "--quiet"]
    assert evo([*args, "--storage", url]) == 0
    err = capsys.readouterr().err.splitlines()
    train = Storage(url).require_run("space").train_tokens
    assert train is not None and 0 < train < 172_800
    passes = f"{172_800 / train:.3g}"
    assert err[:2] == [
        "evo: target 2,700 steps is 100× the top rung: genomes are ranked by their "
        "bits_per_byte predicted there from their rung scores (docs/extrapolation.md)",
        f"evo: the target passes over the training split ({train:,} tokens) {passes} times: "
        "later passes see text a genome has already trained on",
    ]
