"""The checkpoint store (evo.checkpoints): publishing by a manifest written last, on a
local folder and on S3 (moto's server on loopback), as workers and the driver use it."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

from evo.checkpoints import MANIFEST, CheckpointError, CheckpointStore


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "folder":
        return CheckpointStore(tmp_path / "trials")
    bucket = request.getfixturevalue("s3_bucket")
    return CheckpointStore(f"s3://{bucket}/runs/r/trials")


def checkpoint_folder(folder: Path, **files: bytes) -> Path:
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def test_an_uploaded_checkpoint_downloads_file_for_file(
    store: CheckpointStore, tmp_path: Path
) -> None:
    weights = bytes(range(256)) * 400
    files = {"model.safetensors": weights, "t.json": b"{}"}
    source = checkpoint_folder(tmp_path / "stable", **files)
    name = CheckpointStore.name(3, 1)
    assert not store.exists(name)
    store.upload(name, source)
    assert store.exists(name) and store.names() == ["genome-3/rung-1"]
    assert store.files(name) == {"model.safetensors": len(weights), "t.json": 2}
    copy = store.download(name, tmp_path / "copy")
    assert (copy / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in copy.iterdir()) == ["model.safetensors", "t.json"]
    assert store.size_bytes() >= len(weights)


def test_a_checkpoint_without_its_manifest_is_not_there_and_is_cleaned_up(
    store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker killed after uploading its files, before the manifest that publishes them.
    with monkeypatch.context() as killed:
        killed.setattr(CheckpointStore, "_publish", lambda *args: sys.exit(9))
        with pytest.raises(SystemExit):
            store.write("genome-1/rung-0", {"model.safetensors": b"half"})
    store.write("genome-2/rung-0", {"model.safetensors": b"whole"})
    assert store.names() == ["genome-2/rung-0"]
    assert store.names(published=False) == ["genome-1/rung-0", "genome-2/rung-0"]
    with pytest.raises(CheckpointError, match="checkpoint genome-1/rung-0 is not in"):
        store.download("genome-1/rung-0", tmp_path / "copy")
    store.keep_only({"genome-2/rung-0"})
    assert store.names(published=False) == ["genome-2/rung-0"]


def test_a_torn_manifest_or_a_short_file_is_never_taken_for_a_checkpoint(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.write("genome-1/rung-0", {"model.safetensors": b"0123456789"})
    store.fs.pipe_file(store._path("genome-1/rung-0", MANIFEST), b'{"files": {"model.saf')
    assert not store.exists("genome-1/rung-0")
    store.write("genome-2/rung-0", {"model.safetensors": b"0123456789"})
    store.fs.pipe_file(store._path("genome-2/rung-0", "model.safetensors"), b"01234")
    with pytest.raises(CheckpointError, match=r"safetensors has 5 bytes, its manifest says 10"):
        store.download("genome-2/rung-0", tmp_path / "copy")


def test_a_republished_checkpoint_replaces_the_old_one_and_delete_leaves_nothing(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.write("genome-1/rung-0", {"a.bin": b"first attempt", "b.bin": b"gone"})
    store.upload("genome-1/rung-0", checkpoint_folder(tmp_path / "retry", **{"a.bin": b"second"}))
    assert store.read("genome-1/rung-0") == {"a.bin": b"second"}
    store.delete("genome-1/rung-0")
    assert store.names(published=False) == [] and store.size_bytes() == 0
    store.delete("genome-1/rung-0")  # deleting twice is harmless (a resumed driver does)


def test_file_names_cannot_leave_their_checkpoint(store: CheckpointStore) -> None:
    for bad in ("../escape", "sub/file", MANIFEST, ""):
        with pytest.raises(CheckpointError, match="not a checkpoint file name"):
            store.write("genome-1/rung-0", {bad: b"x"})


def test_a_store_travels_to_a_worker_by_its_url(store: CheckpointStore) -> None:
    store.write("genome-1/rung-0", {"a.bin": b"x"})
    copy = pickle.loads(pickle.dumps(store))
    assert copy.url == store.url and copy.read("genome-1/rung-0") == {"a.bin": b"x"}
    assert len(pickle.dumps(store)) < 300  # the URL, not a filesystem's state


def test_a_local_path_is_kept_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert CheckpointStore("results/r/trials").url == str(tmp_path / "results/r/trials")
    assert CheckpointStore("results/r/trials").is_local
