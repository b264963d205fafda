"""The trials frame (`Storage.trials_frame`: one pandas row per trial, a column per gene
and metric) cut as the charts and tables draw it. The numbers the report states come
from `evo.summary`, over `Storage.trial_summaries`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from evo.space import Objective, SearchSpace
from evo.summary import SUCCESS


def top_rung_rows(frame: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The trials at the top rung: the scores that matter."""
    return frame[frame["rung"] == len(space.rung_budgets()) - 1]


def ranked(frame: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """The rows best first by the objective; ties keep their order."""
    ascending = objective.sign > 0
    return frame.sort_values(objective.metric, ascending=ascending, kind="stable")


def successful_trials(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The trials that finished with a finite value of every objective."""
    values = frame[[o.metric for o in objectives]].to_numpy(dtype=float)
    done = (frame["status"] == SUCCESS).to_numpy()
    return frame[done & np.isfinite(values).all(axis=1)]
