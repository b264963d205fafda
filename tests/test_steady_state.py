"""Steady-state evolution over rungs: the scheduler's rules, a whole search in this
process, replaying its decisions from the stored history, and resuming after kill -9
at every kind of moment."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    replayed_decisions,
    run_steady_search,
    search_history,
    steady_space_dict,
    write_corpus,
)

from evo.checkpoints import CheckpointStore
from evo.cli import main as evo
from evo.data import prepare_data
from evo.driver import open_run
from evo.executor import LocalExecutor
from evo.metrics import TrialStatus
from evo.operators import to_individual
from evo.schedule.budget import cost_to_top
from evo.schedule.rungs import Ladder
from evo.schedule.steady_state import Advance, Breed, SteadyStateScheduler, min_members
from evo.search.steady_state import SteadyStateSearch, trials_folder
from evo.space import SearchSpace, load_space, space_from_dict
from evo.storage import Storage, TrialRecord
from llm.optim import planned_steps

VOCAB = 40


@pytest.fixture
def space(workdir: Path) -> SearchSpace:
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    return load_space(workdir / "space.yaml")


def scheduler(space: SearchSpace) -> SteadyStateScheduler:
    ladder = Ladder(space.rung_budgets(), space.search.eta, slack=space.search.population)
    return SteadyStateScheduler(space, VOCAB, ladder)


def always(decision: Any) -> bool:
    return True


def breed(sched: SteadyStateScheduler, number: int) -> tuple[int, dict[str, Any]]:
    """Breed genome 100 + `number` as decision `number` would, advances aside."""
    decision = sched.breed(random.Random(f"{sched.space.search.seed}:{number}"))
    assert decision is not None
    genome_id = 100 + number
    sched.bred_genome(genome_id, decision.genes)
    return genome_id, decision.genes


# The scheduler alone


def test_the_first_genomes_are_a_latin_hypercube_then_offspring(space: SearchSpace) -> None:
    sched = scheduler(space)
    first = [breed(sched, n)[1] for n in range(4)]
    assert [tuple(to_individual(space, g)) for g in first] == [tuple(i) for i in sched.initial]
    genomes = {n: breed(sched, n)[0] for n in range(4, 40)}
    assert len(sched.seen) == 40  # never the same genome twice
    assert all(space.is_valid(sched.genes[g], VOCAB) for g in genomes.values())


def test_a_paused_genome_in_the_top_third_advances_before_anything_is_bred(
    space: SearchSpace,
) -> None:
    sched = scheduler(space)
    assert isinstance(sched.decide(0, always), Breed)  # nothing to advance yet
    genomes = [breed(sched, n)[0] for n in range(3)]
    for trial, (genome, value) in enumerate(zip(genomes, [4.0, 3.0, 5.0], strict=True)):
        assert sched.result(genome, 0, trial, (value,)) == []
    decision = sched.decide(3, always)
    assert decision == Advance(genome_id=genomes[1], rung=1, trial_id=1)
    sched.advanced(genomes[1], 1)
    assert isinstance(sched.decide(4, always), Breed)  # the top third has gone on
    # A decision that does not fit the budget is passed over for one that does.
    sched.result(genomes[1], 1, 5, (2.0,))
    assert isinstance(sched.decide(5, lambda d: isinstance(d, Breed)), Breed)
    assert sched.decide(5, lambda d: False) is None


def test_at_the_budgets_end_the_best_paused_genomes_advance_quota_or_not(
    space: SearchSpace,
) -> None:
    sched = scheduler(space)
    genomes = [breed(sched, n)[0] for n in range(3)]
    for trial, (genome, value) in enumerate(zip(genomes, [4.0, 3.0, 5.0], strict=True)):
        sched.result(genome, 0, trial, (value,))
    sched.advanced(genomes[1], 1)  # the top third went on
    sched.result(genomes[1], 1, 3, (2.5,))
    # No new genome fits the budget any more (it could not reach the top rung), so the
    # budget goes to the paused genome nearest the top first, then to the best below.
    no_breeding = lambda d: isinstance(d, Advance)  # noqa: E731
    assert sched.decide(4, no_breeding) == Advance(genomes[1], rung=2, trial_id=3)
    sched.advanced(genomes[1], 2)
    assert sched.decide(5, no_breeding) == Advance(genomes[0], rung=1, trial_id=0)
    assert sched.decide(5, lambda d: d == Advance(genomes[2], 1, 2)) == Advance(genomes[2], 1, 2)
    assert isinstance(sched.decide(5, always), Breed)  # while breeding fits, the quota holds


def test_at_the_budgets_end_the_last_advance_waits_for_a_result_on_its_way(
    space: SearchSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = scheduler(space)
    genomes = [breed(sched, n)[0] for n in range(4)]
    for trial, (genome, value) in enumerate(zip(genomes[:3], [4.0, 3.0, 5.0], strict=True)):
        sched.result(genome, 0, trial, (value,))
    sched.advanced(genomes[1], 1)
    sched.result(genomes[1], 1, 4, (2.5,))
    sched.advanced(genomes[0], 1)  # still training to rung 1 ...
    # ... and so is genome 3 to rung 0. The budget left carries one genome to the top: it
    # could be genome 0's, so nothing is chosen before its result; genome 3 at rung 0
    # is not a rival (rung 1 is nearer the top).
    no_breeding = lambda d: isinstance(d, Advance)  # noqa: E731
    assert sched.decide(5, no_breeding) is None
    # Had genome 0 no budget to reach the top, there would be nothing to wait for.
    only_genome_1 = lambda d: isinstance(d, Advance) and d.genome_id == genomes[1]  # noqa: E731
    assert sched.decide(5, only_genome_1) == Advance(genomes[1], rung=2, trial_id=4)
    # In a space with no new genome left the budget need not be ending: nothing waits.
    with monkeypatch.context() as patch:
        patch.setattr(sched, "breed", lambda stream: None)
        assert sched.decide(5, always) == Advance(genomes[1], rung=2, trial_id=4)
    sched.result(genomes[0], 1, 5, (2.0,))
    assert sched.decide(5, no_breeding) == Advance(genomes[0], rung=2, trial_id=5)


def test_a_decision_depends_only_on_the_state_and_its_number(space: SearchSpace) -> None:
    one, two = scheduler(space), scheduler(space)
    for sched in (one, two):
        for n in range(5):
            genome, _ = breed(sched, n)
            sched.result(genome, 0, n, None)  # failures: nothing advances
    assert one.decide(5, always) == two.decide(5, always)
    assert one.decide(5, always) != one.decide(6, always)


def test_parents_come_from_the_highest_rung_with_enough_members(space: SearchSpace) -> None:
    sched = scheduler(space)
    enough = min_members(space)
    assert enough == 3  # the tournament's size; the population is 4
    for n in range(6):
        genome, _ = breed(sched, n)
        sched.result(genome, 0, n, (float(n),))
        if n < 3:
            sched.result(genome, 1, 10 + n, (float(n),))
    assert sched.parent_rung() == 1
    # The aging population keeps the last four scored at a rung; the oldest leave.
    assert list(sched.windows[0]) == [102, 103, 104, 105]


def test_an_exhausted_space_breeds_nothing_more(space: SearchSpace) -> None:
    data = yaml.safe_load(space.canonical_yaml())
    data["genes"] = {"n_layers": {"int": [1, 2]}}
    data["fixed"]["model"].update(d_model=16, n_heads=1)
    sched = scheduler(space_from_dict(data))
    breed(sched, 0)
    breed(sched, 1)
    assert sched.decide(2, always) is None


# A whole search


def run_search(space: SearchSpace, storage: Storage, name: str = "s") -> SteadyStateSearch:
    open_run(storage, name, space)
    data, vocab = prepare_data(space)
    search = SteadyStateSearch(space, name, storage, LocalExecutor(), data, vocab)
    search.run()
    return search


def results(storage: Storage, name: str) -> list[TrialRecord]:
    return [t for t in storage.trials(name) if t.status.is_result]


def test_a_search_advances_the_top_third_and_stops_at_its_budget(
    space: SearchSpace, workdir: Path
) -> None:
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    search = run_search(space, storage)
    trials = storage.trials("s")
    assert storage.get_run("s").status == "finished"
    assert len({t.decision for t in trials}) == 16 == storage.spent("s").trials
    assert all(t.status is TrialStatus.DONE for t in trials)
    # One result per genome and rung; a genome reaches a rung only through the ones below.
    rungs = Counter((t.genome_id, t.rung) for t in trials)
    assert max(rungs.values()) == 1
    by_key = {(t.genome_id, t.rung): t for t in trials}
    for trial in trials:
        if trial.rung:
            below = by_key[(trial.genome_id, trial.rung - 1)]
            assert trial.continued_from == below.id and below.recorded <= trial.seen
            # It was in the top third of its rung when the decision was made.
            peers = sorted(
                (t.metric("bits_per_byte"), t.genome_id)
                for t in trials
                if t.rung == trial.rung - 1 and t.recorded <= trial.seen
            )
            top = [genome for _, genome in peers[: len(peers) // 3]]
            assert trial.genome_id in top
            stable = planned_steps(space.train_config({}, space.rung_budgets()[trial.rung - 1]))
            assert (
                trial.metric("steps") == space.rung_budgets()[trial.rung]["max_steps"] - stable[0]
            )
    assert Counter(t.rung for t in trials)[2] >= 1  # the top rung was reached
    # The best at the top rung is what the search reports, and no checkpoint outlives it.
    top_rung = [t.metric("bits_per_byte") for t in trials if t.rung == 2]
    assert search.best() == {"bits_per_byte": min(top_rung)}
    assert not trials_folder("s").exists()
    assert all(t.checkpoint is None for t in storage.trials("s"))


def test_a_budget_of_one_genomes_ladder_takes_that_genome_to_the_top_rung(
    space: SearchSpace, workdir: Path
) -> None:
    first = {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": 0.01}
    ladder = cost_to_top(space, first, 0).tokens
    assert ladder is not None
    one = load_space(
        workdir / "space.yaml",
        [f"search.budget={{tokens: {ladder + 100}}}", f"search.initial=[{first}]"],
    )
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    run_search(one, storage)
    trials = storage.trials("s")
    # Before, the budget went to new genomes at the lowest rung, and none reached the top.
    assert [(t.genome_id, t.rung) for t in trials] == [(trials[0].genome_id, r) for r in range(3)]
    assert storage.genomes("s")[trials[0].genome_id] == first
    assert storage.spent("s").tokens == ladder


def test_paused_checkpoints_stay_few_and_are_deleted_when_no_longer_needed(
    space: SearchSpace, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[int] = []
    real = CheckpointStore.upload

    def counting(self: CheckpointStore, name: str, folder: Path) -> None:
        real(self, name, folder)
        kept.append(len(self.names()))

    monkeypatch.setattr(CheckpointStore, "upload", counting)
    dense = load_space(workdir / "space.yaml", ["search.budget.trials=30", "search.population=2"])
    run_search(dense, Storage(f"sqlite:///{workdir / 'evo.db'}"))
    # At most the top third plus the aging population's size at each rung below the top.
    assert kept and max(kept) <= (30 // 3 + dense.search.population) * 2
    assert max(kept) < len(kept)  # some were deleted on the way


def test_a_search_with_two_objectives_advances_by_front(space: SearchSpace, workdir: Path) -> None:
    two = load_space(
        workdir / "space.yaml",
        ["search.objectives=[bits_per_byte, train_tokens_per_s]", "search.budget.trials=20"],
    )
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    search = run_search(two, storage)
    trials = storage.trials("s")
    assert all(t.status is TrialStatus.DONE for t in trials)
    assert {t.rung for t in trials} == {0, 1, 2}
    assert set(search.best()) == {"bits_per_byte", "train_tokens_per_s"}
    assert replayed_decisions(two, prepare_data(two)[1], storage, "s") == 20


def test_an_unreadable_checkpoint_fails_its_trial_and_the_search_goes_on(
    space: SearchSpace, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []

    def unreadable(self: CheckpointStore, name: str, folder: Path) -> Path:
        reads.append(name)
        raise OSError(f"{name}: disk error")

    monkeypatch.setattr(CheckpointStore, "download", unreadable)
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    run_search(space, storage)
    advances = [t for t in storage.trials("s") if t.rung > 0]
    assert reads and len(advances) == len(reads)
    assert all(t.status is TrialStatus.FAILED for t in advances)
    assert all("cannot read the checkpoint" in (t.error or "") for t in advances)
    assert storage.get_run("s").status == "finished"
    assert len({t.decision for t in storage.trials("s")}) == 16


def test_a_step_budget_is_never_exceeded(space: SearchSpace, workdir: Path) -> None:
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    budgeted = load_space(workdir / "space.yaml", ["search.budget={steps: 80}"])
    run_search(budgeted, storage)
    spent = storage.spent("s")
    assert 80 - 27 < spent.steps <= 80  # the next trial would not have fitted


def test_replaying_the_history_reproduces_every_decision(space: SearchSpace, workdir: Path) -> None:
    storage = Storage(f"sqlite:///{workdir / 'evo.db'}")
    run_search(space, storage)
    assert replayed_decisions(space, prepare_data(space)[1], storage, "s") == 16


# Resuming


DIE = """
import importlib, os, sys
from evo.cli import main
where, name, when, calls = sys.argv[1:5]
owner = importlib.import_module(where.rpartition(":")[0])
if where.endswith(":"):
    holder = owner
else:
    holder = getattr(owner, where.rpartition(":")[2])
real, count = getattr(holder, name), [0]
def dying(*args, **kwargs):
    count[0] += 1
    if count[0] == int(calls) and when == "before":
        os._exit(9)
    out = real(*args, **kwargs)
    if count[0] == int(calls):
        os._exit(9)
    return out
setattr(holder, name, dying)
sys.exit(main(sys.argv[5:]))
"""

MOMENTS = {
    "after a decision is recorded": ("evo.storage.store:Storage", "add_trial", "after", 6),
    "in the middle of a trial": ("evo.executor:", "run_trial", "before", 7),
    "after a checkpoint is written": ("evo.checkpoints:CheckpointStore", "upload", "after", 5),
    "after a result is recorded": ("evo.storage.store:Storage", "finish_trial", "after", 9),
    "between recording a result and deleting the checkpoints it frees": (
        "evo.checkpoints:CheckpointStore",
        "delete",
        "before",
        3,
    ),
}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """The outcome of the search run without interruption."""
    url = run_steady_search(tmp_path_factory.mktemp("straight"), "evo.db")
    return search_history(Storage(url), "space")


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_9_at_any_moment_then_resume_gives_the_same_search(
    space: SearchSpace, workdir: Path, straight: list[tuple[Any, ...]], moment: str
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    where, name, when, calls = MOMENTS[moment]
    command = [sys.executable, "-c", DIE, where, name, when, str(calls)]
    command += ["run", "space.yaml", "--local", "--quiet", "--storage", url]
    killed = subprocess.run(command, cwd=workdir, stderr=subprocess.PIPE, text=True)
    assert killed.returncode == 9, killed.stderr
    storage = Storage(url)
    assert storage.get_run("space").status == "running"  # as a dead driver leaves it
    assert evo(["resume", "space", "--local", "--quiet", "--storage", url]) == 0
    assert search_history(storage, "space") == straight
    trials = storage.trials("space")
    assert not any(t.status.is_active for t in trials)  # no row left running
    assert (
        Counter((t.genome_id, t.rung) for t in results(storage, "space")).most_common(1)[0][1] == 1
    )
    assert not trials_folder("space").exists()  # no checkpoint left behind


FAR = ["--set", "search.target.max_steps=81"]  # 3 times the top rung: the search forecasts it


@pytest.fixture(scope="module")
def straight_far(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[Any, ...]], Any]:
    """The outcome and the final forecast of the far-target search run without interruption."""
    url = run_steady_search(tmp_path_factory.mktemp("straight-far"), "evo.db", FAR)
    storage = Storage(url)
    return search_history(storage, "space"), storage.forecast("space")


@pytest.mark.parametrize("moment", ["after a result is recorded", "in the middle of a trial"])
def test_a_far_target_search_killed_and_resumed_forecasts_the_same(
    space: SearchSpace, workdir: Path, straight_far: tuple[list[tuple[Any, ...]], Any], moment: str
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    where, name, when, calls = MOMENTS[moment]
    command = [sys.executable, "-c", DIE, where, name, when, str(calls)]
    command += ["run", "space.yaml", *FAR, "--local", "--quiet", "--storage", url]
    killed = subprocess.run(command, cwd=workdir, stderr=subprocess.PIPE, text=True)
    assert killed.returncode == 9, killed.stderr
    storage = Storage(url)
    stored = storage.forecast("space")
    # What a reader sees meanwhile is the forecast of the results stored, no other.
    recorded = max((t.recorded or 0 for t in storage.trials("space")), default=0)
    assert stored is not None and stored.recorded == recorded
    assert evo(["resume", "space", "--local", "--quiet", "--storage", url]) == 0
    expected_outcome, expected_forecast = straight_far
    assert search_history(storage, "space") == expected_outcome
    resumed = storage.forecast("space")
    assert expected_forecast is not None and resumed is not None
    assert resumed.predictions == expected_forecast.predictions  # bit for bit
    assert resumed.alpha == expected_forecast.alpha
    space = load_space(workdir / "space.yaml", FAR[1:])
    assert replayed_decisions(space, prepare_data(space)[1], storage, "space") == 16


def test_a_resume_without_the_paused_checkpoints_is_refused_unless_told_to_go_on(
    space: SearchSpace, workdir: Path
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    # Killed while its 11th trial, an advance, trains: genomes wait, one is on its way.
    command = [sys.executable, "-c", DIE, "evo.executor:", "run_trial", "before", "11"]
    command += ["run", "space.yaml", "--local", "--quiet", "--storage", url]
    killed = subprocess.run(command, cwd=workdir, stderr=subprocess.PIPE, text=True)
    assert killed.returncode == 9, killed.stderr
    storage = Storage(url)
    before = storage.trials("space")
    paused = {t.id: (t.genome_id, t.rung) for t in before if t.checkpoint is not None}
    assert before[-1].continued_from in paused and len(paused) > 1
    recorded = workdir / "results" / "space" / "trials"
    assert storage.require_run("space").checkpoints == str(recorded)  # absolute
    (workdir / "results").rename(workdir / "moved")  # the checkpoints are not where recorded
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    resume = ["resume", "space", "--local", "--quiet", "--storage", url]
    refused = subprocess.run(
        [sys.executable, "-m", "evo.cli", *resume], cwd=elsewhere, stderr=subprocess.PIPE, text=True
    )
    assert refused.returncode == 2
    first = sorted(f"genome-{g}/rung-{r}" for g, r in paused.values())[0]
    assert refused.stderr == (
        f"evo: error: run 'space' needs {len(paused)} checkpoints of paused trials that are "
        f"missing from {recorded} (first: {first}); point --checkpoints at where they are, "
        "or pass --without-missing-checkpoints to go on without them (those genomes are "
        "dropped)\n"
    )
    assert storage.trials("space") == before and not any(elsewhere.iterdir())
    assert storage.require_run("space").driver.lease == 1  # not even taken
    # Told to go on, the run finishes without them: none of those genomes advances.
    went_on = subprocess.run(
        [sys.executable, "-m", "evo.cli", *resume, "--without-missing-checkpoints"],
        cwd=elsewhere,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert went_on.returncode == 0, went_on.stderr
    assert f"going on without {len(paused)} paused trials' checkpoints" in went_on.stderr
    assert storage.get_run("space").status == "finished"
    new = [t for t in storage.trials("space") if t.id > before[-1].id]
    again = [t for t in new if t.decision == before[-1].decision]
    assert len(again) == 1 and again[0].status is TrialStatus.FAILED  # not retrained
    assert "cannot read the checkpoint" in (again[0].error or "")
    advanced = {(t.genome_id, t.rung - 1) for t in new if t.rung} - {
        (again[0].genome_id, again[0].rung - 1)
    }
    assert not advanced & set(paused.values())
    moved = CheckpointStore(workdir / "moved" / "space" / "trials")
    assert len(moved.names()) == len(paused)  # the moved checkpoints are untouched


def test_a_search_keeps_its_checkpoints_in_object_storage_and_resumes_from_anywhere(
    space: SearchSpace, workdir: Path, straight: list[tuple[Any, ...]], s3_bucket: str
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    store = CheckpointStore(f"s3://{s3_bucket}/evo/space")
    # Killed in the middle of its 11th trial: genomes wait at the rungs, in the bucket.
    command = [sys.executable, "-c", DIE, "evo.executor:", "run_trial", "before", "11"]
    command += ["run", "space.yaml", "--local", "--quiet", "--storage", url]
    command += ["--checkpoints", store.url]
    killed = subprocess.run(command, cwd=workdir, stderr=subprocess.PIPE, text=True)
    assert killed.returncode == 9, killed.stderr
    storage = Storage(url)
    assert storage.require_run("space").checkpoints == store.url
    paused = [t.checkpoint for t in storage.trials("space") if t.checkpoint is not None]
    assert paused and set(paused) <= set(store.names())
    assert not (workdir / "results" / "space").exists()  # none on the driver's disk
    elsewhere = workdir / "elsewhere"  # the run finds its store where it recorded it
    elsewhere.mkdir()
    resume = ["resume", "space", "--local", "--quiet", "--storage", url]
    resumed = subprocess.run(
        [sys.executable, "-m", "evo.cli", *resume], cwd=elsewhere, stderr=subprocess.PIPE, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert search_history(storage, "space") == straight
    assert store.names(published=False) == [] and not (elsewhere / "results" / "space").exists()
