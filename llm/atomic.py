"""Atomic file output: everything is written under a temporary name, then renamed.

A reader (or a resumed run) therefore sees either the old file or the complete new
one, never a half-written file, whenever the writer is interrupted. `read_json_object`
reads back what `write_json` wrote, with one clear error when the file is not usable.
A path that cannot be written is an OutputError naming the path the caller asked for,
never the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm.errors import OutputError, UserError

# Errors of the storage itself: whichever call meets them, the output did not fit.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which races with threads.
_UMASK = _read_umask()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def output_error(path: Path, err: OSError, *, folder: bool = False) -> OutputError:
    """`err`, met while writing `path` (a folder when `folder`), as one line that names
    `path` and, when a file stands where a folder is needed, that file."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        candidates = (path, *path.parents) if folder else path.parents
        blocker = next((p for p in candidates if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason = f"{blocker} is a file, not a folder"
    return OutputError(f"cannot write {path}: {reason}")


def make_folder(path: str | Path) -> Path:
    """Create the folder `path` and its parents as needed; an OutputError if it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(path, err, folder=True) from None
    return path


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Report the OSErrors of our own steps of writing `path` as OutputErrors naming it."""
    try:
        yield
    except OSError as err:
        raise output_error(path, err) from None


# Below this much free space, a writer's failure is taken for a full disk: torch.save
# then reports only "unexpected pos 576 vs 534", safetensors "I/O error … (os error 28)".
FULL_DISK_BYTES = 1 << 20


def _disk_full(path: Path, err: Exception) -> bool:
    """Whether a writer library's error (not an OSError) means the disk at `path` is full."""
    found = re.search(r"os error (\d+)", str(err))
    if found is not None and int(found.group(1)) in STORAGE_ERRNOS:
        return True
    try:
        return shutil.disk_usage(path if path.is_dir() else path.parent).free < FULL_DISK_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def _writer(path: Path) -> Iterator[None]:
    """Report a full or read-only disk met by the caller's writer as an OutputError naming
    `path` (a failed write() names no file; torch and safetensors raise errors of their
    own). Other errors of the writer stay as they are: they may come from reading its
    inputs."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno in STORAGE_ERRNOS:
            raise output_error(path, err) from None
        raise
    except Exception as err:
        if not isinstance(err, UserError) and _disk_full(path, err):
            raise OutputError(f"cannot write {path}: no space left on device") from None
        raise


def _follow_umask(folder: Path) -> None:
    """Give everything under `folder` the mode a plain open() or mkdir() would have."""
    folder.chmod(0o777 & ~_UMASK)
    for root, folders, files in os.walk(folder):
        for name in folders:
            Path(root, name).chmod(0o777 & ~_UMASK)
        for name in files:
            if not Path(root, name).is_symlink():
                Path(root, name).chmod(0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _writer(path):
            yield tmp
        with _writing(path):
            # mkstemp makes files private, and so do writers that replace the file with
            # a temporary of their own (safetensors): only now can it follow the umask.
            tmp.chmod(0o666 & ~_UMASK)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    An existing `path` is moved aside first and deleted only after the new folder is
    in place, so at every moment one complete version exists under one of the names.
    """
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _writer(path):
            yield tmp
        with _writing(path):
            # mkdtemp makes the folder private, safetensors its files (see atomic_path).
            _follow_umask(tmp)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(folder: str | Path, names: str) -> None:
    """Delete what `atomic_path` and `atomic_dir` left in `folder` when their process was
    killed (kill -9, a power cut) before it could clean up: the temporaries of outputs
    whose names match the regular expression `names`. Only where no other process may be
    writing those outputs now."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    temporary = re.compile(rf"\.(?:{names})\.[a-z0-9_]+\.tmp")
    for entry in folder.iterdir():
        if not temporary.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_object(path: Path, error: type[UserError], missing: str) -> dict[str, Any]:
    """The JSON object in `path`. Otherwise raises `error` naming the file and what is
    wrong with it, with the message `missing` when the file does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing) from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: malformed JSON: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, not {type(data).__name__}")
    return data
