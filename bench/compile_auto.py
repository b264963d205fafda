"""End-to-end wall time of one training run with `train.compile` false, auto and true.

The run is a character-level model of 4 layers, d_model 128, trained for `--steps` steps
on batches of 12 x 64 tokens from builtin:python-docs. Each setting trains in a fresh
process with an empty inductor cache (what a first run on a machine pays), one after
another, and the wall time counts everything: data, warm-up, training and the final
evaluation. It prints each setting's seconds, ratio to eager, final validation loss, the
tokens/s of its second half (compiled steps, once warm) and what `auto` decided.

    python bench/compile_auto.py
    python bench/compile_auto.py --steps 6000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from llm.config import DataConfig
from llm.data import prepare


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu_check.py)")
    p.add_argument("--settings", nargs="+", default=["false", "auto", "true"])
    return p.parse_args()


def run_config(steps: int, threads: int, cache: Path, device: str) -> dict:
    return {
        "data": {"corpus": "builtin:python-docs", "tokenizer": "char", "vocab_size": 256,
                 "cache_dir": str(cache)},
        "model": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_ff": 344, "max_seq_len": 64},
        "train": {"batch_size": 12, "seq_len": 64, "max_steps": steps, "warmup_steps": 50,
                  "learning_rate": 3e-3, "eval_interval": 0, "log_interval": 100,
                  "device": device, "threads": threads},
    }  # fmt: skip


def train(config: Path, setting: str, out: Path) -> tuple[float, dict, float, str]:
    """Seconds, metrics, steady tokens/s (the median of the second half's log lines) and
    the compile decision of one run in a fresh process."""
    with tempfile.TemporaryDirectory() as inductor_cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor_cache}
        args = [sys.executable, "-m", "llm.cli", "train", str(config), "--out", str(out)]
        started = time.perf_counter()
        subprocess.run([*args, "--set", f"train.compile={setting}"], env=env, check=True)
        seconds = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    decisions = [r["reason"] for r in records if r["kind"] == "compile"]
    speeds = [r["tokens_per_s"] for r in records if r["kind"] == "train"]
    steady = statistics.median(speeds[len(speeds) // 2 :])
    return seconds, metrics, steady, "; ".join(decisions) or "-"


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        config = folder / "run.yaml"
        settings = run_config(args.steps, args.threads, folder / "cache", args.device)
        config.write_text(yaml.safe_dump(settings))
        prepare(DataConfig(**settings["data"]), progress=False)  # once, outside the timings
        results = {}
        for setting in args.settings:
            results[setting] = train(config, setting, folder / f"out-{setting}")
    eager = results.get("false", next(iter(results.values())))[0]
    print(f"{args.steps} steps, 4 layers x d_model 128, batch 12 x 64, {args.threads} threads")
    header = f"{'compile':8} {'seconds':>8} {'vs eager':>9} {'val loss':>9} {'steady tok/s':>13}"
    print(f"{header}  decision")
    for setting, (seconds, metrics, steady, decision) in results.items():
        print(
            f"{setting:8} {seconds:8.1f} {eager / seconds:8.2f}x {metrics['val_loss']:9.4f}"
            f" {steady:13,.0f}  {decision}"
        )


if __name__ == "__main__":
    main()
