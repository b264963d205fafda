"""Experiment tracking: a run's training and evaluation curves, written where TensorBoard
reads them (`--tracker tensorboard`, through torch's own `SummaryWriter`) or as an offline
Weights & Biases run (`--tracker wandb`, when wandb is installed). Nothing is sent over
the network: `tensorboard --logdir results/` shows the first, `wandb sync` uploads the
second when you choose to.

A run's configuration goes with it, flattened to dotted keys (`model.d_model`,
`train.learning_rate`; a search's trial logs its genes), where each tool compares runs
by it: TensorBoard's HParams tab (an hparams session whose metrics are the curves'
`val/` tags) and W&B's run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from llm.errors import UserError

TRACKERS = ("none", "tensorboard", "wandb")
# Which fields of a log record become which curves.
SCALARS = {
    "train": {
        "loss": "train/loss",
        "lr": "train/learning_rate",
        "tokens_per_s": "train/tokens_per_s",
    },
    "eval": {
        "val_loss": "val/loss",
        "bits_per_byte": "val/bits_per_byte",
        "perplexity": "val/perplexity",
        "accuracy": "val/accuracy",
    },
}


Scalar = int | float | str | bool


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """`config` with nested sections as dotted keys and every value a number, a string or
    a bool, which both tools accept (None and lists are written as text)."""
    flat: dict[str, Scalar] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class Tracker(Protocol):
    def record(self, record: dict[str, Any]) -> None: ...
    def text(self, tag: str, text: str) -> None: ...
    def close(self) -> None: ...


class NoTracker:
    def record(self, record: dict[str, Any]) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, folder: Path, config: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise UserError(
                "--tracker tensorboard needs the tensorboard package: pip install tensorboard "
                '(or pip install -e ".[tracking]")'
            ) from None
        self.writer = SummaryWriter(log_dir=str(folder))
        if config:
            # The session's metrics are the evaluation curves this run writes itself, so
            # the HParams tab reads them from its scalars (torch's add_hparams would make
            # another run holding one value of each instead).
            metrics = dict.fromkeys(SCALARS["eval"].values(), 0.0)
            for summary in hparams(flat_config(config), metrics):
                self.writer.file_writer.add_summary(summary)

    def record(self, record: dict[str, Any]) -> None:
        for field, tag in SCALARS.get(record["kind"], {}).items():
            if record.get(field) is not None:
                self.writer.add_scalar(tag, record[field], global_step=record["step"])

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """An offline W&B run, whose files wandb puts under `folder`/wandb/."""

    def __init__(
        self, folder: Path, project: str, run: str, group: str | None, config: Mapping[str, Any]
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError(
                "--tracker wandb needs the wandb package: pip install wandb "
                '(or pip install -e ".[tracking]")'
            ) from None
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            mode="offline",
            dir=str(folder.resolve()),  # the wandb service may run in another directory
            project=project,
            name=run,
            group=group,
            config=flat_config(config),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def record(self, record: dict[str, Any]) -> None:
        values = {
            tag: record[field]
            for field, tag in SCALARS.get(record["kind"], {}).items()
            if record.get(field) is not None
        }
        if values:
            self.run.log(values, step=record["step"])

    def text(self, tag: str, text: str) -> None:
        self.run.summary[tag] = text

    def close(self) -> None:
        self.run.finish()


def open_tracker(
    kind: str,
    folder: Path,
    *,
    project: str = "llm",
    run: str | None = None,
    group: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Tracker:
    """The tracker named `kind` (one of TRACKERS) for one run, writing under
    `folder`/KIND/ (TensorBoard: `folder`/tensorboard/RUN when `run` is named), with the
    run's `config` (nested sections become dotted keys)."""
    folder, config = Path(folder), config or {}
    if kind == "tensorboard":
        return TensorBoardTracker(folder / kind / (run or ""), config)
    if kind == "wandb":
        return WandbTracker(folder, project, run or folder.name, group, config)  # adds wandb/
    if kind == "none":
        return NoTracker()
    raise UserError(f"--tracker: unknown tracker {kind!r}; expected one of {', '.join(TRACKERS)}")
