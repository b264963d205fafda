"""`llm train`: prepare the data, build the model, train it, and leave a model directory
with the run's config, metrics, log and checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from llm.atomic import read_json_object, write_json
from llm.checkpoint import check_out_dir, save_model_dir
from llm.config import DataConfig, ModelConfig, RunConfig, from_dict, to_dict
from llm.data import prepare
from llm.device import resolve_device
from llm.distributed import SingleProcess, from_environment
from llm.errors import ConfigError
from llm.model import Transformer
from llm.tracking import open_tracker
from llm.train import Trainer, TrainOutcome

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


def train_run(
    run_config: RunConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    tracker: str = "none",
) -> TrainOutcome:
    """`llm train`: prepare the data, build the model, train it, and leave in `out_dir` a
    model directory plus `run.json` (the run config), `metrics.json` (the final
    evaluation and how the run ended), `log.jsonl` and `checkpoints/` (and the curves
    for `tracker` under `tensorboard/`).

    A diverged run writes `metrics.json` but no model; an interrupted one only its
    checkpoint, to be continued with `resume`.
    """
    out_dir = Path(out_dir)
    run_dict = json.loads(json.dumps(to_dict(run_config)))
    check_out_dir(out_dir, resume)
    if resume:
        check_same_run(out_dir, run_dict)
    parallel = from_environment(resolve_device(run_config.train.device))
    try:
        return _train(run_config, run_dict, out_dir, parallel, resume, progress, tracker)
    finally:
        parallel.close()


def _train(
    run_config: RunConfig,
    run_dict: dict[str, Any],
    out_dir: Path,
    parallel: SingleProcess,
    resume: bool,
    progress: bool,
    tracker: str,
) -> TrainOutcome:
    main = parallel.is_main
    prepared = parallel.main_first(lambda: prepare(run_config.data, progress=progress and main))
    tokenizer = prepared.tokenizer
    model_config = model_config_for(run_config.model, tokenizer.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_config.train.seed)
        model = Transformer(model_config)
    tracking = open_tracker(tracker if main else "none", out_dir, config=run_dict)
    trainer = Trainer(
        model,
        run_config.train,
        prepared.splits(),
        out_dir=out_dir,
        progress=progress and main,
        log=tracking.record,
        parallel=parallel,
    )
    if not resume and main:
        write_json(out_dir / RUN_FILE, run_dict)
    try:
        outcome = trainer.fit(resume=resume)
    finally:
        tracking.close()
    if outcome.stop_reason == "interrupted" or not main:
        return outcome
    metrics = run_metrics(outcome, model_config)
    if outcome.status == "ok":
        save_model_dir(out_dir, model, tokenizer, extra={METRICS_FILE: metrics})
    else:
        write_json(out_dir / METRICS_FILE, metrics)
    return outcome


def model_config_for(config: ModelConfig, vocab_size: int) -> ModelConfig:
    if config.vocab_size is not None and config.vocab_size != vocab_size:
        raise ConfigError(
            f"model.vocab_size is {config.vocab_size} but the tokenizer has {vocab_size} "
            "tokens; leave model.vocab_size out to take the tokenizer's"
        )
    return replace(config, vocab_size=vocab_size).validate()


def check_same_run(out_dir: Path, run_dict: dict[str, Any]) -> None:
    path = out_dir / RUN_FILE
    saved = read_json_object(path, ConfigError, f"nothing to resume in {out_dir}: no {RUN_FILE}")
    if saved != run_dict:
        changed = sorted(
            f"{section}.{key}"
            for section in run_dict
            for key in run_dict[section]
            if saved.get(section, {}).get(key) != run_dict[section][key]
        )
        raise ConfigError(
            f"{path}: the run in {out_dir} had a different config (changed: "
            f"{', '.join(changed) or 'sections'}); resume it with the same config, or "
            "choose another --out"
        )


def run_metrics(outcome: TrainOutcome, config: ModelConfig) -> dict[str, Any]:
    total, non_embedding, _ = config.param_count()
    times = sorted(outcome.step_times)
    median_step = times[len(times) // 2] if times else None
    metrics: dict[str, Any] = {
        "status": outcome.status,
        "stop_reason": outcome.stop_reason,
        "steps": outcome.step,
        "tokens": outcome.tokens,
        "seconds": round(outcome.seconds, 3),
        "best_val_loss": outcome.best_val_loss,
        "params": total,
        "params_non_embedding": non_embedding,
        "median_step_seconds": median_step,
    }
    if outcome.final is not None:
        metrics.update(outcome.final.metrics(), eval_tokens=outcome.final.tokens)
    return metrics


def saved_data_config(model_dir: Path) -> DataConfig | None:
    """The data settings the model in `model_dir` was trained with, from its run.json
    (None: it has none, as a model exported from elsewhere or a checkpoint)."""
    path = Path(model_dir) / RUN_FILE
    if not path.exists():
        return None
    saved = read_json_object(path, ConfigError, f"{path}: missing")
    return from_dict(RunConfig, saved, str(path)).data
