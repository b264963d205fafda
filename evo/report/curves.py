"""The learning curves of the best genomes, across their rungs and training stages, and
of the trials running now, as far as they have trained (their workers send the points
while they train)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from evo.metrics import TrialStatus
from evo.report.frames import ranked
from evo.report.markup import figure, format_value, note, section
from evo.report.run import Run
from evo.space import Objective
from evo.storage import Storage
from evo.summary import SUCCESS

TOP_CURVES = 5
RUNNING_COLOR = "#9e9e9e"


def curves_section(run: Run, storage: Storage) -> str:
    objective, finished = run.objectives[0], run.finished
    fig = go.Figure()
    top = ranked(finished, objective).head(TOP_CURVES)
    best = top[["genome_id", objective.metric]].itertuples(index=False, name=None)
    for i, (genome_id, value) in enumerate(best):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        name = f"genome {genome_id} ({objective.metric} {format_value(value)})"
        trials = run.frame[(run.frame["genome_id"] == genome_id) & (run.frame["status"] == SUCCESS)]
        for trial_id in trials.sort_values("rung")["trial_id"]:
            _add_curve(fig, pd.DataFrame(storage.curve(int(trial_id))), name, color)
    running = run.frame[run.frame["status"] == TrialStatus.RUNNING.value]
    for trial_id, genome_id, rung in running[["trial_id", "genome_id", "rung"]].itertuples(
        index=False
    ):
        name = f"trial {trial_id} (genome {genome_id}), running at rung {rung + 1}"
        _add_curve(fig, pd.DataFrame(storage.curve(int(trial_id))), name, RUNNING_COLOR)
    how = _curves_text(fig, len(top), objective, run.rungs)
    if not fig.data:
        message = run.empty if finished.empty else "No learning curves were recorded."
        return section("curves", "Learning curves", how, note(message))
    fig.update_layout(height=520, xaxis_title="tokens trained", yaxis_title="loss (nats per token)")
    return section("curves", "Learning curves", how, figure(fig))


def _curves_text(fig: go.Figure, genomes: int, objective: Objective, rungs: bool) -> str:
    """How to read the learning curves, naming only what `fig` draws."""
    lines = [t for t in fig.data if t.mode == "lines"]
    which = "the best genome" if genomes == 1 else f"the {genomes} best genomes"
    parts = [
        f"Training loss (nats per token: the mean cross-entropy of the next token) against "
        f"tokens trained, for {which} by {objective.metric}, one colour each"
    ]
    if any(t.line.dash == "dash" for t in lines):
        parts.append("solid while pretraining, dashed while adapting")
    if any(t.mode == "markers" for t in fig.data):
        parts.append("dots are validation losses, in the same unit")
    if any(t.line.color == RUNNING_COLOR for t in lines):
        parts.append("grey: the trials running now, as far as they have trained")
    text = "; ".join(parts) + "."
    if rungs:
        text += (
            " A genome that advanced has one segment per rung, each continuing the last "
            "from where its cool-down began."
        )
    return text


def _add_curve(fig: go.Figure, points: pd.DataFrame, name: str, color: str) -> None:
    if points.empty:
        return
    tokens = _tokens_trained(points)
    first = not any(trace.legendgroup == name for trace in fig.data)
    for stage, dash in (("pretrain", "solid"), ("adapt", "dash")):
        part = points["stage"] == stage
        if not part.any():
            continue
        fig.add_trace(
            go.Scatter(
                x=tokens[part],
                y=points.loc[part, "train_loss"].astype(float),
                mode="lines",
                name=name if stage == "pretrain" else f"{name}, adapt",
                legendgroup=name,
                showlegend=first and stage == "pretrain",
                line={"color": color, "dash": dash},
            )
        )
        evaluated = part & points["val_loss"].notna()
        if evaluated.any():
            fig.add_trace(
                go.Scatter(
                    x=tokens[evaluated],
                    y=points.loc[evaluated, "val_loss"].astype(float),
                    mode="markers",
                    name=f"{name}, {stage} validation",
                    legendgroup=name,
                    marker={"color": color, "size": 9},
                    showlegend=False,
                )
            )


def _tokens_trained(points: pd.DataFrame) -> pd.Series:
    """Tokens trained so far over both stages: the adapt stage's count starts at zero, so it
    is moved to where pretraining ended."""
    pretrained = points.loc[points["stage"] == "pretrain", "tokens"].max()
    offset = 0 if pd.isna(pretrained) else int(pretrained)
    return points["tokens"] + np.where(points["stage"] == "adapt", offset, 0)
