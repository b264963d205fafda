"""bench/gpu_check.py on a machine without CUDA: it runs, names every GPU check and says
each is skipped for lack of CUDA; and what it reads from a training run's files (the
steady tokens/s, the FLOPs per token) is read right from a real `llm train` run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gpu_check
import pytest

from llm.checkpoint import read_model_config
from llm.cli import main as llm

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine with one
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env
    )


def test_without_cuda_every_gpu_check_is_skipped_and_says_why() -> None:
    done = run_script()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for check in gpu_check.CHECKS:
        assert f"SKIPPED {check.name}: {check.what}: no CUDA device here" in lines
    assert lines[-1] == (
        f"no CUDA (torch.cuda.is_available() is false): {len(gpu_check.CHECKS)} GPU checks skipped"
    )
    assert not any(line.startswith(("PASS", "FAIL")) for line in lines)


def test_an_unknown_check_is_refused() -> None:
    done = run_script("--only", "mfu", "--only", "warp-drive")
    assert done.returncode == 2
    assert "no check named ['warp-drive']" in done.stdout


def test_mfu_is_read_from_what_llm_train_writes(workdir: Path) -> None:
    out = workdir / "nano"
    args = ["train", "--preset", "nano", "--out", str(out)]
    for setting in ("max_steps=40", "max_tokens=null", "eval_interval=0", "device=cpu"):
        args += ["--set", f"train.{setting}"]  # the settings of the GPU check, on a CPU
    assert llm([*args, "--set", "train.threads=1", "--set", f"data.cache_dir={workdir}"]) == 0
    tokens_per_s = gpu_check.steady_tokens_per_s(out)
    flops = gpu_check.model_flops_per_token(out, seq_len=64)
    assert tokens_per_s > 0
    assert flops == read_model_config(out).flops_per_token(64) > 0
    assert gpu_check.utilization(1000.0, 6_000_000, 1e12) == pytest.approx(0.006)
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert gpu_check.peak_flops("Some GPU", 100.0) == 100e12
    with pytest.raises(gpu_check.CheckFailed, match="pass --peak-tflops"):
        gpu_check.peak_flops("Some GPU", None)


def test_trials_at_once_counts_overlapping_spans() -> None:
    assert gpu_check.most_at_once([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert gpu_check.most_at_once([(0, 1), (1, 2)]) == 1  # one ends as the other starts
    assert gpu_check.most_at_once([]) == 0
