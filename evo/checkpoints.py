"""The checkpoint store: stable checkpoints of paused trials, what lets a genome continue to
the next rung instead of training again from scratch.

A run keeps them under one root URL (`evo run --checkpoints URL`; by default the run's
folder `results/NAME/trials`), read through fsspec: a local or shared path, or object
storage such as `s3://bucket/prefix`. Workers write and read the store themselves, so a
checkpoint never passes through the driver: the driver only names them, checks that
they are there, and deletes them. Each lives under `genome-G/rung-R/` and is published
by a manifest written last (object stores have no rename): a checkpoint whose manifest
is missing, unreadable or names files of other sizes is not there. A checkpoint is
deleted as soon as nothing can continue from it (the genome advanced, or was dropped
for good), which bounds the space a run uses; what a killed worker or driver left
half-written is deleted when the run resumes (`keep_only`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"  # {"files": {name: size in bytes}}, written after the files
_NAME = re.compile(r"genome-\d+/rung-\d+")


class CheckpointError(OSError):
    """A checkpoint that is not in the store, or could not be read or written there."""


class CheckpointStore:
    """The checkpoints of one run's paused trials, under `url` (any fsspec URL or a local
    path). Pickled by its URL alone, so a job can carry it to a worker on another node,
    which opens the store itself (credentials come from that node's environment, as
    fsspec and boto read them)."""

    def __init__(self, url: str | Path) -> None:
        url = str(url)
        self.url = url if "://" in url else str(Path(url).absolute())
        self._fs: Any = None
        self._root = ""

    def __getstate__(self) -> dict[str, str]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["url"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r})"

    def _open(self) -> tuple[Any, str]:
        """The filesystem the store is on, and the store's root path on it."""
        if self._fs is None:
            import fsspec  # imported when a store is used: the read commands never need it

            self._fs, self._root = fsspec.core.url_to_fs(self.url)
        return self._fs, self._root

    @property
    def fs(self) -> Any:
        return self._open()[0]

    @property
    def is_local(self) -> bool:
        """Whether the store is a path of this machine's filesystem."""
        return "file" in _protocols(self.fs)

    @staticmethod
    def name(genome_id: int, rung: int) -> str:
        """Where, relative to the root, the checkpoint a genome left at a rung is kept."""
        return f"genome-{genome_id}/rung-{rung}"

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._open()[1], *parts)

    # Writing

    def upload(self, name: str, folder: Path) -> None:
        """Publish the files of a checkpoint folder (it has no subfolders) as `name`,
        replacing one published there before (a retried trial's)."""
        files = {path.name: path for path in sorted(Path(folder).iterdir()) if path.is_file()}
        self._unpublish(name)
        for file, path in files.items():
            self.fs.put_file(str(path), self._path(name, file))
        self._publish(name, {file: path.stat().st_size for file, path in files.items()})

    def write(self, name: str, files: Mapping[str, bytes]) -> None:
        """Publish a checkpoint held in memory (file name to content) as `name`."""
        self._unpublish(name)
        for file, content in files.items():
            self.fs.pipe_file(self._path(name, _file_name(file)), content)
        self._publish(name, {file: len(content) for file, content in files.items()})

    def _unpublish(self, name: str) -> None:
        """Withdraw a checkpoint's manifest, and make its folder ready for new files."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name, MANIFEST))
        if self.is_local:
            os.makedirs(self._path(name), exist_ok=True)  # object stores have no folders

    def _publish(self, name: str, sizes: dict[str, int]) -> None:
        if self.is_local:
            _sync_files(self._path(name), sizes)  # on disk before the manifest names them
        manifest = json.dumps({"files": sizes}, sort_keys=True).encode()
        self.fs.pipe_file(self._path(name, MANIFEST), manifest)

    # Reading

    def files(self, name: str) -> dict[str, int] | None:
        """The files of a published checkpoint and their sizes; None when it is not
        published (or its manifest is torn)."""
        try:
            manifest = json.loads(self.fs.cat_file(self._path(name, MANIFEST)))
            sizes = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(sizes, dict):
            return None
        return {_file_name(str(file)): int(size) for file, size in sizes.items()}

    def exists(self, name: str) -> bool:
        return self.files(name) is not None

    def download(self, name: str, folder: Path) -> Path:
        """Write the checkpoint's files into `folder` (which must not exist), checking each
        against the manifest, and return it."""
        sizes = self.files(name)
        if sizes is None:
            raise CheckpointError(f"checkpoint {name} is not in {self.url}")
        folder = Path(folder)
        folder.mkdir(parents=True)
        for file, size in sizes.items():
            target = folder / file
            try:
                self.fs.get_file(self._path(name, file), str(target))
            except FileNotFoundError as err:
                raise CheckpointError(f"checkpoint {name} in {self.url} lacks {file}") from err
            if target.stat().st_size != size:
                raise CheckpointError(
                    f"checkpoint {name} in {self.url}: {file} has {target.stat().st_size} "
                    f"bytes, its manifest says {size}"
                )
        return folder

    def read(self, name: str) -> dict[str, bytes]:
        """A published checkpoint's files, read into memory (small checkpoints: tests)."""
        sizes = self.files(name)
        if sizes is None:
            raise CheckpointError(f"checkpoint {name} is not in {self.url}")
        return {file: self.fs.cat_file(self._path(name, file)) for file in sizes}

    # Cleaning up

    def delete(self, name: str) -> None:
        """Delete a checkpoint (its manifest first, so it is never seen half-deleted), and
        the folders it leaves empty."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name, MANIFEST))
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(name), recursive=True)
        self._remove_if_empty(posixpath.dirname(self._path(name)))
        self._remove_if_empty(self._path())

    def keep_only(self, names: set[str]) -> None:
        """Delete every checkpoint (published or half-written) not in `names`: what a worker
        killed while writing, or a driver that died between a checkpoint's publishing and
        its recording, or between recording a deletion and deleting, left behind."""
        for name in self.names(published=False):
            if name not in names:
                self.delete(name)

    def names(self, *, published: bool = True) -> list[str]:
        """The checkpoints in the store (with `published=False`, half-written ones too)."""
        self.fs.invalidate_cache()  # workers write here, not through this process
        if not self.fs.exists(self._path()):
            return []
        found = set()
        for path in self.fs.find(self._path(), withdirs=True):
            relative = posixpath.relpath(path, self._path())
            name = "/".join(relative.split("/")[:2])
            if _NAME.fullmatch(name):
                found.add(name)
        return sorted(n for n in found if not published or self.exists(n))

    def size_bytes(self) -> int:
        """The bytes the store holds."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self._path()):
            return 0
        return int(self.fs.du(self._path()))

    def _remove_if_empty(self, path: str) -> None:
        if self.is_local and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)  # object stores have no empty folders to remove


def _file_name(name: str) -> str:
    if not name or posixpath.basename(name) != name or name in (".", "..", MANIFEST):
        raise CheckpointError(f"not a checkpoint file name: {name!r}")
    return name


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _sync_files(folder: str, sizes: Mapping[str, int]) -> None:
    """fsync a local checkpoint's files and folder, so that a machine that loses power
    never finds a manifest naming files it lost."""
    for file in sizes:
        fd = os.open(os.path.join(folder, file), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
