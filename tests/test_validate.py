"""`evo validate`: the search's best genomes retrained with other seeds, the two rankings
compared, and promotion preferring validated results."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import steady_space_dict, write_corpus

from evo import validate as validation
from evo.cli import main as evo
from evo.driver import load_run_space
from evo.executor import failed_outcome
from evo.metrics import TrialStatus
from evo.promote import pick_genome
from evo.space import load_space
from evo.storage import Storage
from evo.validate import Candidate, ValidatedGenome


def genome(search_rank: int, values: list[float], validated_rank: int) -> ValidatedGenome:
    candidate = Candidate(search_rank, {}, rung=0, value=0.0, rank=search_rank)
    mean = sum(values) / len(values)
    spread = (
        None
        if len(values) == 1
        else math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    )
    return ValidatedGenome(candidate, values, mean, spread, validated_rank)


def test_rank_agreement_is_one_when_the_order_holds_and_minus_one_when_reversed() -> None:
    same = [genome(i, [float(i)], i) for i in range(1, 6)]
    assert validation.rank_agreement(same) == pytest.approx((1.0, 1.0))
    reversed_ = [genome(i, [float(-i)], 6 - i) for i in range(1, 6)]
    assert validation.rank_agreement(reversed_) == pytest.approx((-1.0, -1.0))
    one_swap = [genome(1, [1.0], 2), genome(2, [0.0], 1), genome(3, [3.0], 3)]
    rho, tau = validation.rank_agreement(one_swap)
    assert rho == pytest.approx(0.5) and tau == pytest.approx(1 / 3)
    assert validation.rank_agreement(one_swap[:2]) == (None, None)


def test_noise_floor_pools_seed_variances_and_measures_neighbour_gaps() -> None:
    genomes = [genome(1, [1.0, 3.0], 1), genome(2, [2.0, 4.0, 6.0], 2), genome(3, [10.0], 3)]
    # Variances 2 (1 degree of freedom) and 4 (2): pooled (2 + 8) / 3.
    assert validation.pooled_spread(genomes) == pytest.approx(math.sqrt(10 / 3))
    assert validation.median_gap(genomes) == pytest.approx((2.0 + 6.0) / 2)  # means 2, 4, 10
    assert validation.pooled_spread(genomes[2:]) is None


@pytest.fixture
def searched(workdir):
    """A finished steady-state run (rungs of 3, 9 and 27 steps) and its storage URL."""
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    url = f"sqlite:///{workdir / 'evo.db'}"
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", url]) == 0
    return url


def test_validate_stores_every_seed_resumes_without_retraining_and_guides_promote(
    searched, workdir, capsys, monkeypatch
):
    storage = Storage(searched)
    space = load_run_space(storage, "space")
    ranking = validation.search_ranking(storage, "space", space)
    assert [c.rank for c in ranking] == list(range(1, len(ranking) + 1))
    assert ranking[0].rung == 2 and ranking[-1].rung <= ranking[0].rung

    # Stopped after its second validation, as Ctrl-C would.
    finished = validation._Recorder.finished
    calls = []

    def stop_after_two(self, job, outcome):
        finished(self, job, outcome)
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(validation._Recorder, "finished", stop_after_two)
    args = ["validate", "space", "--top", "3", "--seeds", "2", "--local", "--storage", searched]
    assert evo(args) == 130
    stored = storage.validations("space")
    assert [v.status for v in stored] == [TrialStatus.DONE] * 2
    kept = {v.id: v.finished_at for v in stored}

    monkeypatch.setattr(validation._Recorder, "finished", finished)
    capsys.readouterr()
    assert evo(args) == 0
    captured = capsys.readouterr()
    assert "4 validation trials to run" in captured.err
    assert captured.err.count("validated genome ") == 4 and "(4/4, " in captured.err
    stored = storage.validations("space")
    assert len(stored) == 6 and all(v.status is TrialStatus.DONE for v in stored)
    assert {v.id: v.finished_at for v in stored if v.id in kept} == kept  # not retrained
    assert {v.budget["max_steps"] for v in stored} == {27}  # the target
    top3 = {c.genome_id for c in ranking[:3]}
    assert {v.genome_id for v in stored} == top3
    seeds = {(v.genome_id, v.seed) for v in stored}
    assert len(seeds) == 6
    assert not seeds & {(t.genome_id, t.seed) for t in storage.trials("space")}
    assert "Spearman ρ" in captured.out and "Kendall τ" in captured.out
    assert "noise floor" in captured.out

    # A run made before baselines were stored gets one from `evo validate`.
    baseline = storage.require_run("space").unigram_bits_per_byte
    assert baseline is not None
    with sqlite3.connect(searched.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE evo_runs SET unigram_bits_per_byte = NULL")
    db.close()
    assert evo(args) == 0  # all done: nothing to run
    assert "0 validation trials to run" in capsys.readouterr().err
    assert storage.require_run("space").unigram_bits_per_byte == baseline

    report = validation.validation_report(storage, "space", space)
    assert report is not None and report.pending == 0 and len(report.genomes) == 3
    assert all(len(g.values) == 2 for g in report.genomes)
    best = min(report.genomes, key=lambda g: g.mean).candidate.genome_id
    chosen, reason = pick_genome(storage, "space", space, None, None)
    assert chosen == best and "validated" in reason
    assert evo(["status", "space", "--storage", searched]) == 0
    assert "rank agreement with the search" in capsys.readouterr().out
    assert evo(["report", "space", "--storage", searched, "--out", "report.html"]) == 0
    page = (workdir / "report.html").read_text()
    assert 'id="validation"' in page and "Kendall τ" in page


def test_validate_takes_the_genomes_named_in_the_searchs_order(searched, capsys):
    storage = Storage(searched)
    ranking = validation.search_ranking(storage, "space", load_run_space(storage, "space"))
    chosen = [ranking[-1].genome_id, ranking[0].genome_id]  # out of the search's order
    args = ["validate", "space", "--seeds", "1", "--local", "--storage", searched]
    assert evo([*args, *(f"--genome={g}" for g in chosen)]) == 0
    assert f"genomes {chosen[0]}, {chosen[1]}" in capsys.readouterr().err
    assert sorted(v.genome_id for v in storage.validations("space")) == sorted(chosen)
    missing = max(storage.genomes("space")) + 1
    assert evo([*args, "--genome", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--genome {missing}: no genome of run 'space'" in err and "Traceback" not in err
    assert len(storage.validations("space")) == 2  # nothing more was run


def test_a_ctrl_c_that_python_drops_still_stops_validate_after_its_trial(searched, monkeypatch):
    started = validation._Recorder.started

    def started_then_interrupted(self, job, attempt):
        started(self, job, attempt)
        if len(self.ids) == 1:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler runs here
            except KeyboardInterrupt:
                pass  # dropped, as one landing in a finalizer is

    monkeypatch.setattr(validation._Recorder, "started", started_then_interrupted)
    args = ["validate", "space", "--top", "2", "--seeds", "2", "--local", "--storage", searched]
    assert evo(args) == 130
    stored = Storage(searched).validations("space")
    assert [v.status for v in stored] == [TrialStatus.DONE]  # that trial ended; none began


def test_validate_refuses_a_run_with_nothing_to_validate(workdir, capsys):
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    url = f"sqlite:///{workdir / 'evo.db'}"
    storage = Storage(url)
    from evo.driver import open_run
    from evo.space import load_space

    open_run(storage, "space", load_space(workdir / "space.yaml"))
    assert evo(["validate", "space", "--local", "--storage", url]) == 2
    assert "no successful trial to validate" in capsys.readouterr().err
    assert evo(["validate", "space", "--seeds", "0", "--local", "--storage", url]) == 2


def test_validate_refuses_more_trials_than_it_runs_before_doing_anything(workdir, capsys):
    url = f"sqlite:///{workdir / 'evo.db'}"  # no database: the request is refused first
    args = ["validate", "space", "--seeds", "1000000", "--local", "--storage", url]
    assert evo(args) == 2
    err = capsys.readouterr().err
    assert "--top 8 × --seeds 1,000,000 asks for 8,000,000 validation trials" in err
    assert f"more than the {validation.MAX_VALIDATIONS:,}" in err
    assert not (workdir / "evo.db").exists()
    assert evo([*args[:3], str(validation.MAX_VALIDATIONS // 8 + 1), *args[4:]]) == 2


def test_ctrl_c_stops_validate_at_once_and_keeps_what_it_finished(searched, workdir):
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "evo.cli", "validate", "space", "--seeds", "100"]
    command += ["--top", "8", "--local", "--storage", searched]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    validating = subprocess.Popen(command, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    assert validating.stderr is not None
    lines = []
    for line in validating.stderr:  # it says what it will do before doing it
        lines.append(line)
        if line.startswith("evo: validated genome "):
            break
    assert lines[0].startswith("evo: validating run 'space': its best 8 genomes, 100 seeds"), lines
    validating.send_signal(signal.SIGINT)
    try:
        code = validating.wait(timeout=60)
    except subprocess.TimeoutExpired:
        validating.kill()
        pytest.fail(f"still running 60 s after Ctrl-C:\n{validating.stderr.read()}")
    rest = validating.stderr.read()
    assert code == 130, rest
    assert "stopped; run `evo validate space` again to finish" in rest
    stored = Storage(searched).validations("space")
    assert stored and TrialStatus.DONE in {v.status for v in stored}
    assert not any(v.status is TrialStatus.RUNNING for v in stored)


def test_a_validation_longer_than_the_top_rung_gets_proportionally_more_time(workdir) -> None:
    corpus = write_corpus(workdir / "corpus")
    space = steady_space_dict(corpus)  # rungs of 3, 9 and 27 steps
    space["trial"]["timeout_s"] = 100
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    loaded = load_space(workdir / "space.yaml")
    # Sized for the top rung: a validation 9 times as long gets 9 times the time.
    assert validation.validation_timeout(loaded, {"max_steps": 243}) == 900
    assert validation.validation_timeout(loaded, {"max_steps": 27}) == 100
    assert validation.validation_timeout(loaded, {"max_steps": 9}) == 100  # never less
    assert validation.validation_timeout(loaded, {"max_seconds": 60}) == 100  # another unit


def test_a_validation_that_timed_out_is_run_again(searched) -> None:
    storage = Storage(searched)
    space = load_run_space(storage, "space")
    budget = validation.validation_budget(space, None)
    best = validation.search_ranking(storage, "space", space)[0].genome_id

    def jobs() -> list[tuple[int, int]]:
        found = validation.validation_jobs(
            storage, "space", space, 64, top=1, seeds=2, budget=budget
        )
        return [(job.genome_id, job.seed) for job in found]

    first, second = jobs()
    ends = [(TrialStatus.TIMEOUT, "timed out after 600 s"), (TrialStatus.FAILED, "diverged")]
    for (genome, seed), (status, error) in zip((first, second), ends, strict=True):
        row = storage.start_validation("space", genome, budget, seed)
        storage.finish_validation(row, failed_outcome(status, error, time.time()))
    assert genome == best and jobs() == [first]  # the one that timed out, not the failure
