"""Experiment tracking: a run's training and evaluation curves written where TensorBoard
reads them (`--tracker tensorboard`), through torch's own `SummaryWriter`. Nothing is
sent over the network; `tensorboard --logdir results/` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from llm.errors import UserError

TRACKERS = ("none", "tensorboard")
TRACKER_FOLDER = "tensorboard"  # inside a run's output folder
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


def open_tracker(kind: str, folder: Path) -> Tracker:
    """The tracker named `kind` (one of TRACKERS), writing under `folder`."""
    if kind == "tensorboard":
        return TensorBoardTracker(folder)
    if kind == "none":
        return NoTracker()
    raise UserError(f"--tracker: unknown tracker {kind!r}; expected one of {', '.join(TRACKERS)}")
