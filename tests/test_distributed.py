"""Data-parallel training on CPU: `llm train --nproc 2` (and `evo promote --nproc 2`) takes
the steps one process takes with the same global batch, and an interrupted or killed run
resumes with any number of processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import steady_space_dict, write_corpus

from evo.cli import main as evo
from evo.storage import RunStatus, Storage
from llm.cli import main as llm

# Two processes sum their gradients in another order than one process does: the losses
# agree to float32 rounding, compounded over the steps (measured: 1e-7 after 20 steps).
LOSS_TOLERANCE = 1e-5


def train_losses(out: Path) -> list[float]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def final_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture
def config(workdir: Path) -> Path:
    corpus = write_corpus(workdir / "corpus")
    settings = {
        "data": {"corpus": str(corpus), "tokenizer": "char", "vocab_size": 64},
        "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_seq_len": 32},
        "train": {"batch_size": 8, "seq_len": 32, "max_steps": 20, "warmup_steps": 2,
                  "eval_interval": 0, "log_interval": 1, "device": "cpu", "threads": 1,
                  "grad_accum": 2},
    }  # fmt: skip
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_two_processes_take_the_steps_one_process_takes(config: Path, workdir: Path) -> None:
    assert llm(["train", str(config), "--out", "one"]) == 0
    assert llm(["train", str(config), "--out", "two", "--nproc", "2"]) == 0
    one, two = train_losses(workdir / "one"), train_losses(workdir / "two")
    assert len(one) == len(two) == 20
    assert two == pytest.approx(one, rel=LOSS_TOLERANCE)
    assert final_metrics(workdir / "two")["val_loss"] == pytest.approx(
        final_metrics(workdir / "one")["val_loss"], rel=LOSS_TOLERANCE
    )
    assert (workdir / "two" / "model.safetensors").exists()


def start(config: Path, out: str, *extra: str) -> subprocess.Popen[bytes]:
    args = ["train", str(config), "--out", out, "--nproc", "2", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "llm.cli", *args],
        start_new_session=True,  # its own process group, to kill it whole
        stderr=subprocess.PIPE,
    )


def wait_for_checkpoint(out: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step_*")):
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)


LONG = ["--set", "train.max_steps=150", "--set", "train.checkpoint_interval=5"]


def test_ctrl_c_saves_and_the_run_resumes_with_another_number_of_processes(
    config: Path, workdir: Path
) -> None:
    process = start(config, "run", *LONG)
    wait_for_checkpoint(workdir / "run", process)
    process.send_signal(signal.SIGINT)  # to the launcher alone: it passes it on
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    lines = (workdir / "run" / "log.jsonl").read_text().splitlines()
    stopped = json.loads(lines[-1])
    assert stopped["kind"] == "end" and stopped["stop_reason"] == "interrupted"
    assert stopped["step"] < 150
    assert llm(["train", str(config), "--out", "run", "--resume", *LONG]) == 0
    records = [
        json.loads(line) for line in (workdir / "run" / "log.jsonl").read_text().splitlines()
    ]
    resumed = next(r for r in records if r["kind"] == "resume")
    assert resumed["step"] == stopped["step"]  # the checkpoint saved on Ctrl-C
    assert final_metrics(workdir / "run")["steps"] == 150


def test_a_killed_run_resumes_from_its_last_checkpoint(config: Path, workdir: Path) -> None:
    process = start(config, "run", *LONG)
    wait_for_checkpoint(workdir / "run", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert llm(["train", str(config), "--out", "run", "--resume", "--nproc", "2", *LONG]) == 0
    records = [
        json.loads(line) for line in (workdir / "run" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["kind"] for r in records].count("resume") == 1
    assert final_metrics(workdir / "run")["steps"] == 150


def test_the_batch_must_split_evenly(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert llm(["train", str(config), "--out", "odd", "--nproc", "3"]) == 2
    assert "train.batch_size (8) must be a multiple of the number of processes (3)" in (
        capsys.readouterr().err
    )


def test_evo_promote_trains_in_processes_and_records_the_result(workdir: Path) -> None:
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    url = f"sqlite:///{workdir / 'evo.db'}"
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", url]) == 0
    args = ["promote", "space", "--out", "best", "--nproc", "2", "--storage", url]
    assert evo(args) == 0
    storage = Storage(url)
    [promotion] = storage.promotions("space")
    assert promotion.status == RunStatus.FINISHED and promotion.metrics["steps"] == 27
    # Two processes take the steps one took for the search's top rung.
    scored = [t for t in storage.trials("space") if t.genome_id == promotion.genome_id]
    top = max(scored, key=lambda t: t.rung)
    assert promotion.metrics["bits_per_byte"] == pytest.approx(
        top.metric("bits_per_byte"), rel=1e-4
    )
    assert (workdir / "best" / "model.safetensors").exists()
    # A batch that does not split among the processes is refused before anything is
    # recorded.
    args = ["promote", "space", "--out", "other", "--nproc", "3", "--storage", url]
    assert evo(args) == 2
    assert len(storage.promotions("space")) == 1 and not (workdir / "other").exists()
