"""The figures status and report share: rung counts, the anytime curve, utilization."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from evo.space import Objective, space_from_dict
from evo.storage import SessionRecord
from evo.summary import anytime_curve, rung_rows, utilization

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


def trial(trial_id: int, rung: int, status: str, start: float, end: float | None, **rest):
    return {
        "trial_id": trial_id,
        "decision": trial_id,
        "genome_id": trial_id,
        "rung": rung,
        "status": status,
        "started_at": T0 + timedelta(seconds=start),
        "finished_at": None if end is None else T0 + timedelta(seconds=end),
        **rest,
    }


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def test_rung_counts_hold_when_a_rung_has_no_trial_yet() -> None:
    rows = rung_rows(frame(trial(1, 0, "running", 0, None), trial(2, 0, "done", 0, 5)), SPACE)
    assert [(r.trials, r.done, r.failed, r.active, r.advanced) for r in rows] == [
        (2, 1, 0, 1, 0),
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0),
    ]


def test_the_anytime_curve_keeps_the_best_top_rung_value_between_results() -> None:
    results = frame(
        trial(1, 2, "done", 0, 1, recorded=1, bits_per_byte=3.0, tokens=100, steps=1),
        trial(2, 0, "done", 0, 1, recorded=2, bits_per_byte=1.0, tokens=10, steps=1),
        trial(3, 2, "done", 0, 1, recorded=3, bits_per_byte=2.5, tokens=100, steps=1),
        trial(4, 2, "failed", 0, 1, recorded=4, bits_per_byte=None, tokens=50, steps=1),
    ).assign(wall_seconds=1.0)
    curve = anytime_curve(results, SPACE, Objective(metric="bits_per_byte"))
    assert curve["tokens"].tolist() == [100, 110, 210, 260]
    # A lower rung's better value does not count: the top rung is the budget that matters.
    assert curve["best"].tolist() == [3.0, 3.0, 2.5, 2.5]


def test_utilization_ends_a_killed_session_where_the_next_began() -> None:
    killed = SessionRecord(1, workers=2, started_at=T0, ended_at=None)
    resumed = SessionRecord(2, workers=2, started_at=T0 + timedelta(seconds=20), ended_at=None)
    trials = frame(
        trial(1, 0, "done", 0, 10),
        trial(2, 0, "done", 0, 8),
        trial(3, 0, "interrupted", 10, 20),  # ran until the kill, cut at the next start
        trial(4, 0, "done", 20, 30),
        trial(5, 0, "done", 21, 29),
    )
    # First session: 10 + 8 + 10 busy of 2 × 20; second: 10 + 8 of 2 × 10.
    assert utilization(trials, [killed, resumed]) == pytest.approx((28 + 18) / (40 + 20))
    assert utilization(trials, []) is None
