"""The generational loop: recording, reuse, failures, exact resume after kill -9, and
resuming a run that an older evo wrote."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import space_dict, write_corpus

from evo.cli import main as evo
from evo.data import prepare_data
from evo.driver import open_run
from evo.executor import LocalExecutor, TrialOutcome, failed_outcome
from evo.metrics import TrialStatus
from evo.search.generational import GenerationalSearch as Search
from evo.space import load_space, space_from_dict
from evo.storage import Storage
from evo.view import LineView
from llm.errors import UserError

SCHEMA_1 = Path(__file__).parent / "data" / "evo-schema-1.db"  # written by evo-llm 0.1


def storage_url(path) -> str:
    return f"sqlite:///{path}"


def history(storage: Storage, name: str) -> tuple[list, list]:
    """What a run did, independent of timing: each generation's population of genes, and
    each finished trial's genes and result."""
    genomes = storage.genomes(name)
    populations = [[genomes[gid] for gid in g.genome_ids] for g in storage.generations(name)]
    trials = sorted(
        (t.generation, sorted(genomes[t.genome_id].items()), t.status, t.metric("bits_per_byte"))
        for t in storage.trials(name)
        if t.status.is_result
    )
    return populations, trials


def test_a_search_records_every_generation_and_never_trains_a_genome_twice(space_file, workdir):
    space = load_space(space_file)
    storage = Storage(storage_url(workdir / "evo.db"))
    open_run(storage, "s", space)
    data, vocab = prepare_data(space)
    summary = Search(space, "s", storage, LocalExecutor(), data, vocab).run()
    assert summary.detail == "3 generations"
    generations = storage.generations("s")
    assert [g.generation for g in generations] == [0, 1, 2]
    assert all(len(g.genome_ids) == 4 for g in generations)
    trials = storage.trials("s")
    assert Counter(t.genome_id for t in trials).most_common(1)[0][1] == 1
    # Offspring that repeat a genome are mutated until new: every slot costs a trial.
    assert len(trials) == 3 * 4
    assert all(t.status == "done" for t in trials)
    assert storage.get_run("s").status == "finished"
    assert summary.best["bits_per_byte"] == min(t.metric("bits_per_byte") for t in trials)
    assert (
        generations[-1].stats["objectives"]["bits_per_byte"]["min"] >= summary.best["bits_per_byte"]
    )


class FailingEveryOther(LocalExecutor):
    """Fails every second trial, as a crashing or timing-out worker would."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def run(self, jobs, observer) -> None:
        for job in jobs:
            self.count += 1
            observer.started(job, 0)
            if self.count % 2:
                error = "timed out after 1 s"
                timeout = failed_outcome(TrialStatus.TIMEOUT, error, time.time())
                observer.finished(job, timeout)
            else:
                super().run([job], _Finisher(observer))


class _Finisher:
    def __init__(self, observer) -> None:
        self.observer = observer

    def started(self, job, attempt: int) -> None:
        pass

    def finished(self, job, outcome: TrialOutcome) -> None:
        self.observer.finished(job, outcome)


def test_failures_are_recorded_with_their_cause_and_never_shrink_the_population(
    space_file, workdir
):
    space = load_space(space_file)
    storage = Storage(storage_url(workdir / "evo.db"))
    open_run(storage, "f", space)
    data, vocab = prepare_data(space)
    Search(space, "f", storage, FailingEveryOther(), data, vocab).run()
    statuses = Counter(t.status for t in storage.trials("f"))
    assert statuses["timeout"] > 0 and statuses["done"] > 0
    timeouts = [t for t in storage.trials("f") if t.status == "timeout"]
    assert all(t.error == "timed out after 1 s" for t in timeouts)
    assert all(len(g.genome_ids) == 4 for g in storage.generations("f"))


class DriverDiesOnRetry(LocalExecutor):
    """Loses the first trial's worker, and the driver dies while recording the retry."""

    def wait(self, observer) -> None:
        job = self._queue[0]
        observer.started(job, 0)
        observer.retrying(job, 1, "worker lost: WorkerCrashedError")
        raise AssertionError("not reached: the driver dies inside `retrying`")


def test_a_retry_cut_short_by_the_driver_dying_is_run_again_on_resume(
    space_file, workdir, monkeypatch
):
    space = load_space(space_file)
    storage = Storage(storage_url(workdir / "evo.db"))
    open_run(storage, "d", space)
    data, vocab = prepare_data(space)
    with monkeypatch.context() as patch:

        def dying(self, *args, **kwargs):
            raise KeyboardInterrupt  # the driver is killed before the retry is written

        patch.setattr(Storage, "retry_trial", dying)
        with pytest.raises(KeyboardInterrupt):
            Search(space, "d", storage, DriverDiesOnRetry(), data, vocab).run()
    assert [t.status for t in storage.trials("d")] == ["running"]
    Search(space, "d", storage, LocalExecutor(), data, vocab).run()
    # The lost trial is run again and kept in the history, never taken for a result.
    statuses = Counter(t.status for t in storage.trials("d"))
    assert statuses == {TrialStatus.DONE: 3 * 4, TrialStatus.INTERRUPTED: 1}


class Interrupted(Exception):
    pass


class StopsAfterGeneration(LineView):
    """Shows lines, and stops the search (as a kill would) once generation `last` is saved."""

    def __init__(self, space, name: str, last: int) -> None:
        super().__init__(space, name)
        self.last = last

    def note(self, text: str) -> None:
        super().note(text)
        if text == f"generation {self.last} done":
            raise Interrupted


class FailingAll(LocalExecutor):
    """Every trial fails, as on a cluster whose workers all crash."""

    def wait(self, observer) -> None:
        job = self._queue.pop(0)
        observer.started(job, 0)
        observer.finished(job, failed_outcome(TrialStatus.FAILED, "worker lost", time.time()))


def test_after_a_resume_the_best_of_each_generation_is_the_runs(space_file, workdir, capsys):
    space = load_space(space_file)
    storage = Storage(storage_url(workdir / "evo.db"))
    open_run(storage, "b", space)
    data, vocab = prepare_data(space)
    with pytest.raises(Interrupted):
        Search(
            space, "b", storage, LocalExecutor(), data, vocab, StopsAfterGeneration(space, "b", 1)
        ).run()
    best = min(t.metric("bits_per_byte") for t in storage.trials("b") if t.status == "done")
    capsys.readouterr()
    # The resumed process trains nothing that succeeds: its best is the run's so far.
    Search(space, "b", storage, FailingAll(), data, vocab, LineView(space, "b")).run()
    lines = [line for line in capsys.readouterr().err.splitlines() if "generation 2 done" in line]
    assert lines == [f"[b] generation 2 done; best: bits_per_byte {best:.4g}"]


def test_an_existing_run_with_another_space_is_refused(space_file, workdir):
    space = load_space(space_file)
    storage = Storage(storage_url(workdir / "evo.db"))
    open_run(storage, "r", space)
    other = load_space(space_file, ["search.seed=2"])
    with pytest.raises(UserError, match="different search space"):
        open_run(storage, "r", other)


def test_a_run_stored_before_a_new_default_still_matches_its_space(space_file, workdir):
    space = load_space(space_file)
    storage = Storage(storage_url(workdir / "evo.db"))
    older = yaml.safe_load(space.canonical_yaml())
    del older["search"]["initial"]  # a setting this run's evo did not have yet
    storage.create_run("r", yaml.safe_dump(older, sort_keys=False), space.search.seed)
    assert open_run(storage, "r", space) is False
    with pytest.raises(UserError, match="different search space"):
        open_run(storage, "r", load_space(space_file, ["search.seed=2"]))


def test_resume_after_kill_9_gives_the_same_run_as_no_interruption(workdir):
    corpus = write_corpus(workdir / "corpus")
    space = space_dict(corpus, generations=4)
    # LoRA genomes too: their adapters' initialisation must depend on the trial alone.
    space["genes"]["lora_rank"] = {"choice": [0, 2]}
    space["data"]["adapt"] = {"corpus": str(corpus), "max_steps": 2}
    (workdir / "space.yaml").write_text(yaml.safe_dump(space), encoding="utf-8")
    straight = storage_url(workdir / "straight.db")
    killed = storage_url(workdir / "killed.db")
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", straight]) == 0

    command = [sys.executable, "-m", "evo.cli", "run", "space.yaml", "--local", "--quiet"]
    driver = subprocess.Popen(
        [*command, "--storage", killed], stderr=subprocess.DEVNULL, cwd=workdir
    )
    storage = Storage(killed)
    deadline = time.time() + 120
    # Kill mid-generation: after generation 1 is saved and a trial of generation 2 is done.
    while time.time() < deadline and driver.poll() is None:
        trials = storage.trials("space") if storage.get_run("space") else []
        if any(t.generation == 2 and t.status == "done" for t in trials):
            break
        time.sleep(0.02)
    assert driver.poll() is None, "the driver finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert storage.get_run("space").status == "running"  # as a dead driver leaves it
    assert len(storage.generations("space")) < 4

    assert evo(["resume", "space", "--local", "--quiet", "--storage", killed]) == 0
    assert history(storage, "space") == history(Storage(straight), "space")
    assert storage.get_run("space").status == "finished"


def test_a_finished_run_is_not_rerun_and_new_starts_a_fresh_one(space_file, workdir, capsys):
    url = storage_url(workdir / "evo.db")
    args = ["run", str(space_file), "--local", "--quiet", "--storage", url]
    args += ["--set", "search.generations=1"]
    assert evo(args) == 0
    trials = len(Storage(url).trials("space"))
    assert evo(args) == 0
    assert "is finished" in capsys.readouterr().err
    assert len(Storage(url).trials("space")) == trials
    assert evo([*args, "--new"]) == 0
    assert {run.name for run in Storage(url).list_runs()} == {"space", "space-2"}


def test_space_overrides_are_part_of_the_recorded_space(space_file, workdir):
    url = storage_url(workdir / "evo.db")
    args = ["run", str(space_file), "--local", "--quiet", "--storage", url]
    assert evo([*args, "--set", "search.generations=1", "--set", "search.population=2"]) == 0
    recorded = space_from_dict(yaml.safe_load(Storage(url).get_run("space").space_yaml))
    assert recorded.search.population == 2 and recorded.search.generations == 1
    # The same file without the overrides is another space: refused, not silently mixed.
    assert evo(args) == 2


def test_a_run_written_by_evo_0_1_resumes_and_finishes(workdir, capsys):
    write_corpus(workdir / "corpus")  # where the stored space points: `corpus`
    (workdir / "evo.db").write_bytes(SCHEMA_1.read_bytes())
    url = storage_url(workdir / "evo.db")
    before = Storage(url, create=False)
    done_before = {
        t.id: t.metric("bits_per_byte") for t in before.trials("space") if t.status.is_result
    }
    assert evo(["resume", "space", "--local", "--quiet", "--storage", url]) == 0
    storage = Storage(url, create=False)
    assert storage.get_run("space").status == "finished"
    assert [g.generation for g in storage.generations("space")] == [0, 1, 2]
    trials = storage.trials("space")
    kept = {t.id: t.metric("bits_per_byte") for t in trials if t.id in done_before}
    assert kept == done_before  # nothing trained before the upgrade was lost or redone
    trained_now = sum(t.status.is_result for t in trials) - len(done_before)
    assert trained_now > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("run 'space': ") and "generation" in last
    assert f"; {trained_now} trained by this command; best measured at the top rung: " in last
    assert Counter(t.status for t in trials) == {
        TrialStatus.DONE: 12,
        TrialStatus.INTERRUPTED: 1,
    }
