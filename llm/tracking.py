"""Experiment tracking: a run's training and evaluation curves, written where TensorBoard
reads them (`--tracker tensorboard`, through torch's own `SummaryWriter`) or as an offline
Weights & Biases run (`--tracker wandb`, when wandb is installed). Nothing is sent over
the network: `tensorboard --logdir results/` shows the first, `wandb sync` uploads the
second when you choose to.
"""

from __future__ import annotations

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
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "--tracker tensorboard needs the tensorboard package: pip install tensorboard "
                '(or pip install -e ".[tracking]")'
            ) from None
        self.writer = SummaryWriter(log_dir=str(folder))

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

    def __init__(self, folder: Path, project: str, run: str, group: str | None) -> None:
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
) -> Tracker:
    """The tracker named `kind` (one of TRACKERS) for one run, writing under
    `folder`/KIND/ (TensorBoard: `folder`/tensorboard/RUN when `run` is named)."""
    folder = Path(folder)
    if kind == "tensorboard":
        return TensorBoardTracker(folder / kind / (run or ""))
    if kind == "wandb":
        return WandbTracker(folder, project, run or folder.name, group)  # wandb adds wandb/
    if kind == "none":
        return NoTracker()
    raise UserError(f"--tracker: unknown tracker {kind!r}; expected one of {', '.join(TRACKERS)}")
