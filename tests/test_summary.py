"""The figures status and report share: rung counts, the anytime curve, utilization,
generations complete, search scores and stalled trials; and the unigram baseline."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from evo.data import unigram_bits_per_byte
from evo.generations import generations_complete
from evo.space import Objective, space_from_dict
from evo.storage import RunInfo, SessionRecord, TrialSummary
from evo.summary import (
    SearchScore,
    anytime_curve,
    pareto_front,
    rung_rows,
    search_scores,
    stalled,
    utilization,
    worker_time,
)
from llm.data import TokenSplits

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPACE = space_from_dict(
    {
        "genes": {"n_layers": {"int": [1, 2]}},
        "fixed": {"model": {"d_model": 16, "n_heads": 1}, "train": {"warmup_steps": 1}},
        "data": {"vocab_size": 64},
        "search": {
            "target": {"max_steps": 27},
            "rungs": [3, 9, 27],
            "budget": {"trials": 9},
        },
    }
)


def trial(
    trial_id: int,
    rung: int,
    status: str,
    start: float,
    end: float | None,
    *,
    genome_id: int | None = None,
    decision: int | None = None,
    recorded: int | None = None,
    lent_seconds: float | None = None,
    **metrics: float | None,
) -> TrialSummary:
    return TrialSummary(
        trial_id=trial_id,
        genome_id=trial_id if genome_id is None else genome_id,
        rung=rung,
        decision=trial_id if decision is None else decision,
        status=status,
        metrics={name: value for name, value in metrics.items() if value is not None},
        started_at=T0 + timedelta(seconds=start),
        finished_at=None if end is None else T0 + timedelta(seconds=end),
        recorded=recorded,
        lent_seconds=lent_seconds,
    )


def summaries(*rows: TrialSummary) -> list[TrialSummary]:
    return list(rows)


def test_a_rung_counts_each_decisions_latest_attempt_and_the_genomes_that_went_on() -> None:
    rows = rung_rows(
        summaries(
            trial(1, 0, "done", 0, 1, genome_id=1),
            trial(2, 0, "retried", 0, 1, genome_id=2),  # its worker died; tried again as 4
            trial(3, 1, "running", 1, None, genome_id=1),
            trial(4, 0, "failed", 1, 2, genome_id=2, decision=2),
            trial(5, 0, "queued", 2, None, genome_id=3),
        ),
        SPACE,
    )
    assert [(r.trials, r.done, r.failed, r.active, r.advanced) for r in rows] == [
        (3, 1, 1, 1, 1),
        (1, 0, 0, 1, 0),
        (0, 0, 0, 0, 0),
    ]


PARETO_ROWS = [
    ("done", 1.0, 1.0),
    ("done", 2.0, 3.0),
    ("done", 2.0, 2.0),
    ("done", 1.0, 1.0),  # equal to trial 0: neither dominates the other
    ("done", 3.0, 3.0),
    ("failed", 0.5, 10.0),  # would dominate all, but did not succeed
    ("done", None, 5.0),  # lacks an objective
]


def test_pareto_front_follows_each_objectives_direction() -> None:
    trials = [
        trial(i, 2, status, 0, 1, bits_per_byte=loss, train_tokens_per_s=speed)
        for i, (status, loss, speed) in enumerate(PARETO_ROWS)
    ]
    low_fast = [Objective(metric="bits_per_byte"), Objective(metric="train_tokens_per_s")]
    assert low_fast[1].direction == "max"
    assert [t.trial_id for t in pareto_front(trials, low_fast)] == [0, 3, 1]

    high_slow = [
        Objective(metric="bits_per_byte", direction="max"),
        Objective(metric="train_tokens_per_s", direction="min"),
    ]
    assert [t.trial_id for t in pareto_front(trials, high_slow)] == [4, 2, 0, 3]

    assert [t.trial_id for t in pareto_front(trials, low_fast[:1])] == [0, 3]
    assert pareto_front([t for t in trials if t.status == "failed"], low_fast) == []


def test_rung_counts_hold_when_a_rung_has_no_trial_yet() -> None:
    rows = rung_rows(summaries(trial(1, 0, "running", 0, None), trial(2, 0, "done", 0, 5)), SPACE)
    assert [(r.trials, r.done, r.failed, r.active, r.advanced) for r in rows] == [
        (2, 1, 0, 1, 0),
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0),
    ]


def test_the_anytime_curve_keeps_the_best_top_rung_value_between_results() -> None:
    results = summaries(
        trial(3, 2, "done", 0, 1, recorded=3, bits_per_byte=2.5, tokens=100, wall_seconds=1.0),
        trial(1, 2, "done", 0, 1, recorded=1, bits_per_byte=3.0, tokens=100, wall_seconds=1.0),
        trial(2, 0, "done", 0, 1, recorded=2, bits_per_byte=1.0, tokens=10, wall_seconds=1.0),
        trial(4, 2, "failed", 0, 1, recorded=4, bits_per_byte=None, tokens=50, wall_seconds=1.0),
        trial(5, 0, "running", 0, None),  # no result yet: no point
    )
    curve = anytime_curve(results, SPACE, Objective(metric="bits_per_byte"))
    # In the order the results were recorded, not the trials' order.
    assert [p.tokens for p in curve] == [100, 110, 210, 260]
    assert [p.worker_seconds for p in curve] == [1.0, 2.0, 3.0, 4.0]
    # A lower rung's better value does not count: the top rung is the budget that matters.
    assert [p.best for p in curve] == [3.0, 3.0, 2.5, 2.5]
    higher = anytime_curve(results, SPACE, Objective(metric="bits_per_byte", direction="max"))
    assert [p.best for p in higher] == [3.0, 3.0, 3.0, 3.0]


def test_utilization_ends_a_killed_session_where_the_next_began() -> None:
    killed = SessionRecord(1, workers=2, started_at=T0, ended_at=None)
    resumed = SessionRecord(2, workers=2, started_at=T0 + timedelta(seconds=20), ended_at=None)
    trials = summaries(
        trial(1, 0, "done", 0, 10),
        trial(2, 0, "done", 0, 8),
        trial(3, 0, "interrupted", 10, 20),  # ran until the kill, cut at the next start
        trial(4, 0, "done", 20, 30),
        trial(5, 0, "done", 21, 29),
    )
    # First session: 10 + 8 + 10 busy of 2 × 20; second: 10 + 8 of 2 × 10.
    assert utilization(trials, [killed, resumed]) == pytest.approx((28 + 18) / (40 + 20))
    assert utilization(trials, []) is None


def test_a_stalled_trial_leaves_the_best_value_but_not_the_compute() -> None:
    results = summaries(
        trial(1, 2, "done", 0, 1, recorded=1, bits_per_byte=4.8, tokens=100, steps=1),
        trial(2, 2, "done", 0, 1, recorded=2, bits_per_byte=3.0, tokens=100, steps=1),
    )
    curve = anytime_curve(results, SPACE, Objective(metric="bits_per_byte"), baseline=4.7)
    assert [(p.tokens, p.steps, p.best) for p in curve] == [(100, 1, None), (200, 2, 3.0)]


def test_stalled_means_done_and_no_better_than_the_unigram_baseline() -> None:
    results = summaries(
        trial(1, 0, "done", 0, 1, bits_per_byte=4.69),
        trial(2, 0, "done", 0, 1, bits_per_byte=4.7),  # equal is no better
        trial(3, 0, "done", 0, 1, bits_per_byte=4.78),
        trial(4, 0, "diverged", 0, 1, bits_per_byte=None),
        trial(5, 0, "failed", 0, 1, bits_per_byte=5.0),
    )
    assert stalled(results, 4.7) == {2, 3}
    assert stalled(results, None) == set()  # a run without a baseline judges none


def test_the_unigram_baseline_is_the_entropy_of_the_predicted_tokens_per_byte() -> None:
    # The first token is never predicted; the rest are 1, 1, 2, 3: p = 1/2, 1/4, 1/4.
    splits = TokenSplits(train=np.array([0]), val=np.array([9, 1, 1, 2, 3]), val_bytes=3)
    assert unigram_bits_per_byte(splits) == pytest.approx((2 * 1 + 2 + 2) / 3)
    single = TokenSplits(train=np.array([0]), val=np.array([5, 5, 5]), val_bytes=2)
    assert unigram_bits_per_byte(single) == 0.0  # one token: nothing to learn beyond it


def test_generations_complete_count_the_generation_numbered_from_zero() -> None:
    run = RunInfo("r", "", "", 0, "running", "0", None, T0, T0, None)
    assert generations_complete(run) == 0
    assert generations_complete(replace(run, generation=5)) == 6


def test_a_genome_is_scored_at_the_highest_rung_it_reached() -> None:
    results = summaries(
        trial(1, 0, "done", 0, 1, genome_id=7, bits_per_byte=3.0),
        trial(2, 1, "done", 0, 1, genome_id=7, bits_per_byte=2.5),
        trial(3, 2, "failed", 0, 1, genome_id=7, bits_per_byte=None),
        trial(4, 0, "done", 0, 1, genome_id=8, bits_per_byte=2.9),
    )
    assert search_scores(results, Objective(metric="bits_per_byte")) == {
        7: SearchScore(2.5, 1),
        8: SearchScore(2.9, 0),
    }


def test_worker_time_tells_where_idle_workers_waited() -> None:
    session = SessionRecord(1, workers=2, started_at=T0, ended_at=T0 + timedelta(seconds=100))
    trials = summaries(
        trial(1, 0, "done", 5, 50),  # the workers start after 5 and 8 s
        trial(2, 0, "done", 8, 40),
        trial(3, 1, "done", 41, 90),  # 1 s after trial 2 ended
        trial(4, 0, "done", 51, 70),  # 1 s after trial 1; its worker then waits 30 s
    )
    time = worker_time(trials, [session])
    assert (time.available, time.busy) == (200, 45 + 32 + 49 + 19)
    assert (time.starting, time.between, time.ending) == (5 + 8, 2, 10 + 30)
    assert time.utilization == pytest.approx(145 / 200)
    assert time.describe() == (
        "72% (busy worker-seconds / available; idle: 6.5% starting, 1.0% between trials, "
        "20.0% after the last trials)"
    )
    # With 5 workers, each trial began a worker's first and the fifth never got one.
    unused = SessionRecord(2, workers=5, started_at=T0, ended_at=T0 + timedelta(seconds=100))
    assert worker_time(trials, [unused]).starting == 5 + 8 + 41 + 51 + 100


def test_worker_time_counts_the_cores_lent_to_the_last_trials() -> None:
    session = SessionRecord(1, workers=2, started_at=T0, ended_at=T0 + timedelta(seconds=100))
    trials = summaries(
        trial(1, 0, "done", 0, 60),
        # Alone after 60 s: the idle worker's core trained it for its last 36 s.
        trial(2, 1, "done", 0, 96, lent_seconds=36.0),
    )
    time = worker_time(trials, [session])
    assert (time.busy, time.ending, time.lent) == (156, 44, 36)
    assert time.utilization == pytest.approx(0.78)
    assert time.cores_used == pytest.approx(0.96)
    assert time.describe().endswith(
        "22.0% after the last trials); 18.0% lent their cores to the trials still running, "
        "so 96% of the cores trained"
    )
