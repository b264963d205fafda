"""User errors that are not about one module: unwritable output paths, keys given twice
in YAML. Each is one line naming the input, and exit code 2 from a command."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import peaked_model, write_corpus

from llm.atomic import atomic_dir, atomic_path, make_folder, write_text
from llm.checkpoint import save_model_dir
from llm.cli import main as llm
from llm.cli_support import EXIT_USER_ERROR, run_command
from llm.config import load_run_config, load_yaml
from llm.errors import ConfigError, OutputError
from llm.tokenizer import ByteTokenizer


def tiny_config(corpus: Path) -> dict:
    return {
        "data": {"corpus": str(corpus), "tokenizer": "char", "vocab_size": 64},
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "train": {"batch_size": 4, "seq_len": 32, "max_steps": 2},
    }


# ------------------------------------------------------------------ unwritable outputs


def raising(err: BaseException):
    def command() -> None:
        raise err

    return command


@pytest.mark.parametrize(
    ("err", "message"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "out/log.jsonl"), "out/log.jsonl"),
        (
            IsADirectoryError(errno.EISDIR, "Is a directory", "a", None, "b"),
            "a -> b: Is a directory",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    ],
)
def test_a_filesystem_error_is_one_line_and_exit_2(capsys, err, message):
    assert run_command(raising(err), prog="llm", debug=False) == EXIT_USER_ERROR
    stderr = capsys.readouterr().err
    assert stderr.startswith("llm: error: ") and message in stderr and stderr.count("\n") == 1
    with pytest.raises(type(err)):
        run_command(raising(err), prog="llm", debug=True)


def test_an_os_error_naming_no_path_is_a_bug_with_its_traceback():
    with pytest.raises(ConnectionRefusedError):
        run_command(
            raising(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), prog="evo", debug=False
        )


def write_folder(path: Path) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "x.json").write_text("{}")


@pytest.mark.parametrize(
    "write",
    [lambda path: write_text(path / "x.json", "{}"), write_folder, make_folder],
    ids=["file", "folder", "mkdir"],
)
def test_an_output_under_a_file_names_the_file_in_the_way(tmp_path, write):
    # A file where a folder should be fails for root too, unlike a folder made read-only.
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(OutputError, match=r"cannot write .*notes/out.*notes is a file, not a"):
        write(tmp_path / "notes" / "out")
    assert (tmp_path / "notes").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("make", [atomic_path, atomic_dir])
def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, make):
    # A failed write() names no file: the message names the output instead.
    full = pytest.raises(OutputError, match=r"cannot write .*out: No space left on device")
    with full, make(tmp_path / "out"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make", [atomic_path, atomic_dir])
def test_a_full_disk_met_by_torch_or_safetensors_is_an_output_error(tmp_path, make, monkeypatch):
    # safetensors names the errno; torch.save only says "unexpected pos …", so the disk's
    # free space decides.
    full = r"cannot write .*out: no space left on device"
    with pytest.raises(OutputError, match=full), make(tmp_path / "out"):
        raise RuntimeError("Error while serializing: I/O error: (os error 28)")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=4096))
    with pytest.raises(OutputError, match=full), make(tmp_path / "out"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1 << 30))
    with pytest.raises(RuntimeError, match="a bug"), make(tmp_path / "out"):
        raise RuntimeError("a bug, with room on the disk")


@pytest.fixture
def blocker(workdir: Path) -> Path:
    """A regular file that outputs are asked to go under."""
    path = workdir / "blocker"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["train", "tiny.yaml", "--out", "blocker/model"],
        ["train", "tiny.yaml", "--out", "model", "--set", "data.cache_dir=blocker/cache"],
        ["prepare", "--corpus", "corpus", "--tokenizer", "char", "--out", "blocker/data"],
        ["export", "model_dir", "--format", "hf", "--out", "blocker/hf"],
        ["continue", "model_dir", "--corpus", "corpus", "--out", "blocker/more"],
    ],
    ids=["train-out", "cache-dir", "prepare-out", "export-out", "continue-out"],
)
def test_an_unwritable_output_path_is_one_line_and_exit_2(workdir, blocker, capsys, args):
    corpus = write_corpus(workdir / "corpus")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(corpus)))
    save_model_dir(
        workdir / "model_dir", peaked_model(ByteTokenizer().vocab_size, 32), ByteTokenizer()
    )
    before = sorted(p.name for p in workdir.iterdir())
    assert llm(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm: error: cannot write blocker/") and err.count("\n") == 1
    assert "blocker is a file, not a folder" in err
    assert sorted(p.name for p in workdir.iterdir() if p.name != "results") == before


# ------------------------------------------------------------------ YAML keys given twice


def test_a_config_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_layers: 2\n  d_model: 32\n  n_layers: 3\ntrain:\n  max_steps: 1\n")
    with pytest.raises(ConfigError) as refused:
        load_run_config(path)
    assert str(refused.value) == f"{path}: key 'n_layers' is given twice, at lines 2 and 4"


def test_a_key_given_twice_in_an_override_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 1\n")
    with pytest.raises(ConfigError, match=r"--set .*key 'd_model' is given twice"):
        load_run_config(path, ["model={d_model: 32, d_model: 64}"])


def test_merged_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: &base {n_layers: 2, d_model: 32}\nmodel:\n  <<: *base\n  n_layers: 3\n")
    assert load_yaml(path)["model"] == {"n_layers": 3, "d_model": 32}


# ------------------------------------------------------- continued and parallel training


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["continue", "missing", "--corpus", "corpus", "--out", "o"], "missing: no such model"),
        (
            ["continue", "model_dir", "--corpus", "corpus", "--out", "o", "--expand-vocab", "8"],
            "a byte tokenizer's vocabulary is fixed: it cannot grow",
        ),
        (
            ["continue", "model_dir", "--corpus", "corpus", "--out", "o", "--expand-vocab", "-1"],
            "--expand-vocab must be at least 0 (got -1)",
        ),
        (["continue", "model_dir", "--corpus", "nowhere.txt", "--out", "o"], "nowhere.txt"),
        (
            ["continue", "model_dir", "--corpus", "corpus", "--out", "o", "--set", "model.x=1"],
            "--set takes training settings only",
        ),
        (
            ["continue", "model_dir", "--corpus", "corpus", "--out", "o", "--resume"],
            "nothing to resume in o",
        ),
        (["train", "tiny.yaml", "--out", "o", "--nproc", "0"], "--nproc must be at least 1"),
        (
            ["train", "tiny.yaml", "--out", "o", "--set", "train.compile=maybe"],
            "train.compile",
        ),
        *(
            (
                ["sft", "model_dir", "--data", "corpus", "--out", "o", "--val-fraction", value],
                f"val_fraction must be between 0 and 1 (got {value})",
            )
            for value in ("1.0", "-3.0", "nan", "0.0")
        ),
    ],
    ids=["no-model", "byte-vocab", "negative", "no-corpus", "model-key", "no-run", "nproc",
         "compile", "sft-1", "sft-negative", "sft-nan", "sft-0"],
)  # fmt: skip
def test_bad_continue_and_training_arguments_are_one_line_and_exit_2(
    workdir, capsys, args, message
):
    corpus = write_corpus(workdir / "corpus")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(corpus)))
    save_model_dir(
        workdir / "model_dir", peaked_model(ByteTokenizer().vocab_size, 32), ByteTokenizer()
    )
    assert llm(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (workdir / "o").exists() or not any((workdir / "o").iterdir())
