"""`evo export`: a run's trials as a table to read elsewhere (pandas, a spreadsheet)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from evo.storage import Storage
from llm.atomic import atomic_path
from llm.errors import UserError


def export_trials(
    storage: Storage, run: str, path: str | Path, fmt: Literal["csv", "parquet"]
) -> Path:
    """Write the run's trials, one row each with genes and metrics as columns."""
    if fmt not in ("csv", "parquet"):
        raise UserError(f"unknown export format {fmt!r}; expected csv or parquet")
    frame = storage.trials_frame(run)
    path = Path(path)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path
