"""Every GPU check in one run, in under 10 minutes on one GPU: what a machine with CUDA
must show before the project's GPU paths are called tested.

- bf16: training throughput in bf16 against transformers' Llama of the same shape
  (`bench/train_throughput.py --device cuda --dtype bf16`), its ratio.
- mfu: the `small` preset trained 300 steps on the GPU (`llm train --preset small`, bf16,
  compile auto); its model FLOPs utilization: the steady tokens/s (median of the second
  half's log lines) × the training FLOPs per token (`ModelConfig.flops_per_token`) over
  the GPU's dense bf16 peak (a table of known GPUs, or `--peak-tflops`).
- nccl: `llm train --nproc 2` over NCCL, one GPU per process (needs two GPUs).
- packing: an `evo run` of the tiny steady-state search on a local Ray instance, each
  trial reserving half a GPU: two trials must train on one GPU at once, on CUDA.
- compile: `train.compile` false against auto on the GPU (`bench/compile_auto.py`).
- serving: `llm serve` of a model trained here, on the GPU, answering a completion.

Each check runs as its own processes, under its own time limit, and prints PASS or
FAIL with its figures (FAIL with the last lines of what it printed); the exit status is
1 when one failed. Without CUDA (`torch.cuda.is_available()` false) nothing is run: each
check is listed as skipped for lack of CUDA and the exit status is 0.

    python bench/gpu_check.py
    python bench/gpu_check.py --only mfu --only serving --keep /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TOTAL_S = 570.0  # all checks, starts included: under 10 minutes
# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card's is 756
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


class CheckFailed(Exception):
    """A check ran and what it showed is wrong (or it could not run)."""


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    limit_s: float
    gpus: int  # GPUs it needs
    run: Callable[[Path, argparse.Namespace], str]  # its figures, in one line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", action="append", help="run this check only (repeatable)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    return p.parse_args(argv)


def command(args: list[str], work: Path, limit_s: float) -> str:
    """Run `args` in `work` with this checkout's code; its output, or CheckFailed with
    its last lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)])}
    try:
        done = subprocess.run(
            args, cwd=work, env=env, capture_output=True, text=True, timeout=limit_s
        )
    except subprocess.TimeoutExpired as err:
        raise CheckFailed(f"over its {limit_s:g} s: {' '.join(args[:6])} ...") from err
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise CheckFailed(f"exit {done.returncode}: {' '.join(args[:6])} ...\n{tail}")
    return output


def module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def script(name: str) -> list[str]:
    return [sys.executable, str(BENCH / name)]


# What is measured, from what the commands leave behind


def steady_tokens_per_s(out: Path) -> float:
    """The median tokens/s of the second half of a `llm train` run's log lines (the first
    half holds warm-up and compilation)."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    if not speeds:
        raise CheckFailed(f"{out / 'log.jsonl'} has no training lines")
    return statistics.median(speeds[len(speeds) // 2 :])


def model_flops_per_token(out: Path, seq_len: int) -> int:
    from llm.checkpoint import read_model_config

    return read_model_config(out).flops_per_token(seq_len)


def peak_flops(device_name: str, given_tflops: float | None) -> float:
    if given_tflops is not None:
        return given_tflops * 1e12
    for name, peak in PEAK_BF16.items():
        if name in device_name:
            return peak
    raise CheckFailed(f"no known bf16 peak for {device_name!r}: pass --peak-tflops")


def utilization(tokens_per_s: float, flops_per_token: int, peak: float) -> float:
    return tokens_per_s * flops_per_token / peak


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


# The checks


def check_bf16(work: Path, args: argparse.Namespace) -> str:
    shape = ["--layers", "8", "--d-model", "512", "--heads", "8", "--d-ff", "1376"]
    shape += ["--vocab", "8192", "--batch-size", "16", "--seq-len", "512"]
    run = [*script("train_throughput.py"), "--device", "cuda", "--dtype", "bf16"]
    output = command([*run, *shape, "--rounds", "5", "--steps", "10"], work, 150)
    ratio = [line for line in output.splitlines() if line.startswith("ratio=")]
    if not ratio:
        raise CheckFailed(f"no ratio= line in:\n{output[-1500:]}")
    return f"ours/transformers tokens/s {ratio[-1].removeprefix('ratio=')} (bf16, 8 x 512)"


def check_mfu(work: Path, args: argparse.Namespace) -> str:
    import torch

    out = work / "small"
    train = [*module("llm.cli", "train", "--preset", "small", "--out", str(out))]
    for setting in ("max_steps=300", "max_tokens=null", "eval_interval=0", "device=cuda"):
        train += ["--set", f"train.{setting}"]
    command([*train, "--set", f"data.cache_dir={work / 'cache'}"], work, 200)
    tokens_per_s = steady_tokens_per_s(out)
    flops = model_flops_per_token(out, seq_len=256)
    peak = peak_flops(torch.cuda.get_device_name(), args.peak_tflops)
    mfu = utilization(tokens_per_s, flops, peak)
    return f"MFU {mfu:.1%}: {tokens_per_s:,.0f} tokens/s x {flops:,} FLOPs/token / {peak:.3g}"


def check_nccl(work: Path, args: argparse.Namespace) -> str:
    out = work / "nccl"
    train = [*module("llm.cli", "train", "--preset", "nano", "--nproc", "2", "--out", str(out))]
    for setting in ("max_steps=50", "eval_interval=0", "device=cuda"):
        train += ["--set", f"train.{setting}"]
    command([*train, "--set", f"data.cache_dir={work / 'cache'}"], work, 90)
    metrics = json.loads((out / "metrics.json").read_text())
    return f"2 processes over NCCL, 50 steps: val_loss {metrics.get('val_loss', float('nan')):.3f}"


def check_packing(work: Path, args: argparse.Namespace) -> str:
    import torch
    from tiny_search import steady_space_dict, write_corpus

    from evo.storage import Storage

    folder = work / "packing"
    folder.mkdir(exist_ok=True)
    space = steady_space_dict(
        write_corpus(folder / "corpus"),
        rungs=[100, 300, 900],
        target={"max_steps": 900},
        budget={"trials": 12},
    )
    space["trial"]["resources"] = {"cpus": 1, "gpus": 0.5}
    (folder / "space.yaml").write_text(yaml.safe_dump(space), encoding="utf-8")
    url = f"sqlite:///{folder / 'evo.db'}"
    command([*module("evo.cli", "run", "space.yaml", "--quiet", "--storage", url)], folder, 150)
    with Storage(url, create=False) as storage:
        results = [t for t in storage.trials("space") if t.status.is_result]
        (session,) = storage.run_sessions("space")
    devices = {t.device for t in results}
    if not devices or not all((d or "").startswith("cuda") for d in devices):
        raise CheckFailed(f"the trials trained on {sorted(map(str, devices))}, not on CUDA")
    gpus = torch.cuda.device_count()
    spans = [(t.started_at.timestamp(), t.finished_at.timestamp()) for t in results]
    at_once = most_at_once(spans)
    if session.workers != 2 * gpus or at_once < 2:
        raise CheckFailed(
            f"{session.workers} workers for {gpus} GPU(s) at 0.5 each, at most {at_once} at once"
        )
    return f"{len(results)} trials, {at_once} at once on {gpus} GPU(s), devices {sorted(devices)}"


def check_compile(work: Path, args: argparse.Namespace) -> str:
    run = [*script("compile_auto.py"), "--device", "cuda", "--steps", "600"]
    output = command([*run, "--settings", "false", "auto"], work, 150)
    return " | ".join(output.strip().splitlines()[-3:])


def check_serving(work: Path, args: argparse.Namespace) -> str:
    out = work / "served"
    train = [*module("llm.cli", "train", "--preset", "nano", "--out", str(out))]
    for setting in ("max_steps=50", "eval_interval=0", "device=cuda"):
        train += ["--set", f"train.{setting}"]
    command([*train, "--set", f"data.cache_dir={work / 'cache'}"], work, 60)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    serve = [*module("llm.cli", "serve", str(out), "--device", "cuda", "--port", str(port))]
    server = subprocess.Popen(serve, cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    try:
        answer = complete_when_up(port, deadline=time.time() + 60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = answer["choices"][0]["text"]
    return f"a completion of {answer['usage']['completion_tokens']} tokens: {text[:40]!r}"


def complete_when_up(port: int, deadline: float) -> dict:
    body = json.dumps({"prompt": "def ", "max_tokens": 16, "temperature": 0}).encode()
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except OSError as err:
            if time.time() > deadline:
                raise CheckFailed(f"llm serve did not answer: {err}") from err
            time.sleep(1)


CHECKS = [
    Check("bf16", "bf16 training against transformers", 150, 1, check_bf16),
    Check("mfu", "MFU of the small preset", 200, 1, check_mfu),
    Check("nccl", "llm train --nproc 2 over NCCL", 90, 2, check_nccl),
    Check("packing", "two half-GPU trials at once on one GPU", 150, 1, check_packing),
    Check("compile", "torch.compile auto against eager", 150, 1, check_compile),
    Check("serving", "llm serve on the GPU", 90, 1, check_serving),
]


def run_checks(checks: list[Check], work: Path, args: argparse.Namespace) -> int:
    import torch

    gpus = torch.cuda.device_count()
    print(f"CUDA: {gpus} x {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    started, failed = time.time(), 0
    for check in checks:
        left = TOTAL_S - (time.time() - started)
        if check.gpus > gpus:
            print(f"SKIPPED {check.name}: {check.what}: needs {check.gpus} GPUs, {gpus} here")
            continue
        if left < check.limit_s:
            print(f"FAIL    {check.name}: {check.what}: {left:.0f} s left of {TOTAL_S:g} s")
            failed += 1
            continue
        began = time.time()
        try:
            detail = check.run(work, args)
            print(f"PASS    {check.name}: {detail} ({time.time() - began:.0f} s)", flush=True)
        except CheckFailed as err:
            print(f"FAIL    {check.name}: {check.what}: {err}", flush=True)
            failed += 1
    print(f"{len(checks)} checks in {time.time() - started:.0f} s; failed {failed}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = {check.name for check in CHECKS}
    unknown = set(args.only or []) - names
    if unknown:
        print(f"gpu_check: no check named {sorted(unknown)}; the checks: {sorted(names)}")
        return 2
    checks = [check for check in CHECKS if not args.only or check.name in args.only]
    import torch

    if not torch.cuda.is_available():
        for check in checks:
            print(f"SKIPPED {check.name}: {check.what}: no CUDA device here")
        print(f"no CUDA (torch.cuda.is_available() is false): {len(checks)} GPU checks skipped")
        return 0
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep.resolve()
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        return run_checks(checks, work, args)


if __name__ == "__main__":
    sys.exit(main())
