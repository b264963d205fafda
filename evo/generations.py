"""How far a generational run has come, read from the run's record alone: no trial is
read and no pandas loaded, so `evo ls` shows it for every run at little cost."""

from __future__ import annotations

from evo.storage import RunInfo


def generations_complete(run: RunInfo) -> int:
    """How many generations a generational run has completed. Generations are numbered
    from 0 and saved in order, so this is the number of the last one saved plus one."""
    return 0 if run.generation is None else run.generation + 1
