"""Stable checkpoints of paused trials: what lets a genome continue to the next rung
instead of training again from scratch.

A worker returns its checkpoint as bytes (`Checkpoint`: file name to content), so it
crosses Ray's object store and no shared filesystem is needed; the driver keeps it under
`results/RUN/trials/genome-G/rung-R/`, written whole or not at all, and sends it back
with the job that continues it. A checkpoint is deleted as soon as nothing can continue
from it (the genome advanced, or was dropped for good), which bounds the disk a run uses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from llm.atomic import atomic_dir

Checkpoint = dict[str, bytes]  # the files of one checkpoint folder (it has no subfolders)


def pack(folder: Path) -> Checkpoint:
    """The files of a checkpoint folder, read into memory."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def unpack(checkpoint: Checkpoint, folder: Path) -> Path:
    """Write a checkpoint's files into `folder` (which must not exist) and return it."""
    folder.mkdir(parents=True)
    for name, content in checkpoint.items():
        if Path(name).name != name:
            raise ValueError(f"a checkpoint file name must not contain a folder: {name!r}")
        (folder / name).write_bytes(content)
    return folder


class TrialCheckpoints:
    """The checkpoints of one run's paused trials, under `root` (results/RUN/trials)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def name(genome_id: int, rung: int) -> str:
        """Where, relative to the root, the checkpoint a genome left at a rung is kept."""
        return f"genome-{genome_id}/rung-{rung}"

    def write(self, name: str, checkpoint: Checkpoint) -> None:
        """Write a checkpoint whole (each file on disk before the folder gets its name)."""
        with atomic_dir(self.root / name) as tmp:
            for file, content in checkpoint.items():
                with open(tmp / file, "wb") as f:
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())

    def read(self, name: str) -> Checkpoint:
        return pack(self.root / name)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def delete(self, name: str) -> None:
        """Delete a checkpoint, and the folders it leaves empty."""
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, self.root):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()

    def keep_only(self, names: set[str]) -> None:
        """Delete every checkpoint (and leftover temporary folder) not in `names`: what a
        driver that died between writing a checkpoint and recording it, or between
        recording a deletion and deleting, left behind."""
        if not self.root.is_dir():
            return
        for genome in self.root.iterdir():
            for folder in genome.iterdir() if genome.is_dir() else []:
                if f"{genome.name}/{folder.name}" not in names:
                    shutil.rmtree(folder, ignore_errors=True)
            if genome.is_dir() and not any(genome.iterdir()):
                genome.rmdir()

    def disk_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())
