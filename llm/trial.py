"""The trial API: the contract between the search and the stack.

`run_trial(spec)` trains one model briefly, evaluates it and measures its speed. It is
a pure function of its inputs and seed: the data arrive as arrays (trials run on Ray
workers that may be on other machines), nothing global is changed, and nothing is
written outside `spec.workdir` and `spec.save_stable`.

A trial can continue another: with a wsd schedule, `save_stable` keeps the state at the
moment the cool-down began, and a later trial with a larger budget and `continue_from`
pointing there trains on from it exactly as if it had had that budget from the start.
"""

from __future__ import annotations

import contextlib
import enum
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from llm.config import ModelConfig, TrainConfig, pairing_problems
from llm.data import TokenSplits
from llm.display import LogRecord


class TrialEnd(str, enum.Enum):
    """How `run_trial` ended a trial: trained and scored, its loss diverged, its spec was
    refused before training, or it failed (out of memory, an error)."""

    DONE = "done"
    DIVERGED = "diverged"
    INVALID = "invalid"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass
class AdaptSpec:
    """A second stage: fine-tune on another corpus, fully (lora_rank 0) or with LoRA."""

    data: TokenSplits
    train: TrainConfig  # its budget and learning rate apply to this stage
    lora_rank: int = 0
    lora_alpha: float | None = None  # None: equal to the rank
    # QLoRA: the frozen weights stored thus (llm.quant) while the adapters train; with
    # lora_rank 0 every weight trains, so nothing is frozen and this does nothing.
    quantize: str | None = None


@dataclass
class TrialSpec:
    model: ModelConfig
    train: TrainConfig
    data: TokenSplits
    seed: int = 0
    adapt: AdaptSpec | None = None
    workdir: str | None = None  # where the trial may keep logs; None: writes nothing
    continue_from: str | None = None  # a stable checkpoint to continue pretraining from
    save_stable: str | None = None  # where to save the stable checkpoint (wsd schedules)
    # Called before each training step with its number (see Trainer's `before_step`).
    before_step: Sequence[Callable[[int], None]] = ()
    # Called with each point of the training curve as it is recorded, while the trial
    # trains (a search shows running trials' curves); the result holds them all anyway.
    on_point: Callable[[CurvePoint], None] | None = None


@dataclass
class CurvePoint:
    step: int
    tokens: int
    seconds: float
    train_loss: float
    val_loss: float | None = None
    stage: Literal["pretrain", "adapt"] = "pretrain"


def _no_compute() -> dict[str, float]:
    """A result's metrics before any training: its compute is counted from zero."""
    return {"steps": 0, "tokens": 0, "wall_seconds": 0.0}


@dataclass
class TrialResult:
    status: TrialEnd
    # What the trial measured, by name (`evo.metrics.METRICS` describes each): the final
    # evaluation's metrics (`EvalResult.metrics`), its speed and its size; a value that
    # was not measured is absent. Its compute is always there: the optimizer steps and
    # tokens it trained over its stages, and its wall_seconds.
    metrics: dict[str, float] = field(default_factory=_no_compute)
    device: str = "cpu"
    error: str | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    # The evaluation's metrics after the pretraining stage when an adapt stage follows
    # (then `metrics` holds the adapt stage's, on its validation set).
    pretrain: dict[str, float] | None = None

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None else float(value)


WARMUP_STEPS = 2  # optimizer steps left out of the throughput median (allocator, caches)


def run_trial(spec: TrialSpec) -> TrialResult:
    """Train, evaluate and time one model; never raises for a bad genome or a failed run."""
    started = time.perf_counter()
    problems = trial_problems(spec)
    if problems:
        return TrialResult(status=TrialEnd.INVALID, error="; ".join(problems))
    try:
        with memory_peak() as peak:
            result = _run_stages(spec)
        # Only a trial trained on the GPU has an allocator peak of its own to report.
        peak_bytes = peak() if result.device.startswith("cuda") else None
        if peak_bytes is not None:
            result.metrics["peak_memory_bytes"] = peak_bytes
    except torch.cuda.OutOfMemoryError as err:
        error = f"out of memory: {first_line(err)}"
        result = TrialResult(status=TrialEnd.FAILED, error=error)
    except MemoryError:
        result = TrialResult(status=TrialEnd.FAILED, error="out of memory (host)")
    except Exception as err:  # a trial must never take the search down with it
        error = f"{type(err).__name__}: {first_line(err)}"
        result = TrialResult(status=TrialEnd.FAILED, error=error)
    result.metrics["wall_seconds"] = time.perf_counter() - started
    return result


def trial_problems(spec: TrialSpec) -> list[str]:
    problems = spec.model.problems() + spec.train.problems()
    problems += pairing_problems(spec.model, spec.train)
    if spec.adapt is not None:
        problems += [f"adapt: {p}" for p in spec.adapt.train.problems()]
        if spec.adapt.lora_rank < 0:
            problems.append(f"lora_rank must not be negative (got {spec.adapt.lora_rank})")
    return problems


def _run_stages(spec: TrialSpec) -> TrialResult:
    from llm.generate import decode_tokens_per_second
    from llm.lora import LoRAConfig, apply_lora, merge_lora
    from llm.model import Transformer
    from llm.quant import quantize_frozen
    from llm.train import Trainer

    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = Transformer(spec.model)
    params = spec.model.param_count()
    result = TrialResult(status=TrialEnd.DONE)
    result.metrics.update(
        params=params.total,
        params_non_embedding=params.non_embedding,
        flops_per_token=spec.model.flops_per_token(spec.train.seq_len),
    )
    stages = [("pretrain", spec.train, spec.data)]
    if spec.adapt is not None:
        stages.append(("adapt", spec.adapt.train, spec.adapt.data))
    for stage, train, data in stages:
        if stage == "adapt" and spec.adapt is not None and spec.adapt.lora_rank > 0:
            lora = LoRAConfig(rank=spec.adapt.lora_rank, alpha=spec.adapt.lora_alpha)
            # The adapters' initial A matrices are drawn from the global RNG (CUDA's on a
            # GPU): seed it, or they depend on what this process drew before (earlier
            # trials on the same worker).
            with torch.random.fork_rng():
                torch.manual_seed(spec.seed)
                apply_lora(model, lora)
            if spec.adapt.quantize is not None:
                quantize_frozen(model, spec.adapt.quantize)
        out_dir = Path(spec.workdir) / stage if spec.workdir else None
        pretrain = stage == "pretrain"
        trainer = Trainer(
            model,
            replace(train, seed=spec.seed),
            data,
            out_dir=out_dir,
            stable_dir=_path(spec.save_stable) if pretrain else None,
            before_step=spec.before_step,
            log=None if spec.on_point is None else _curve_listener(stage, spec.on_point),
        )
        outcome = trainer.fit(resume_from=_path(spec.continue_from) if pretrain else None)
        if outcome.stop_reason == "interrupted":
            # The trainer stops cleanly on Ctrl-C; a trial is not resumable, so the
            # interrupt goes on to whoever runs it (the search marks its run interrupted).
            raise KeyboardInterrupt
        result.device = str(next(model.parameters()).device)
        result.metrics["steps"] += outcome.step - outcome.first_step
        result.metrics["tokens"] += outcome.tokens - outcome.first_tokens
        result.curve += [
            CurvePoint(stage=stage, **point)
            for point in outcome.curve
            if point["step"] > outcome.first_step
        ]
        throughput = tokens_per_second(outcome.step_times, train) if pretrain else None
        if throughput is not None:
            result.metrics["train_tokens_per_s"] = throughput
        if outcome.status == "diverged" or outcome.final is None:
            result.status = TrialEnd.DIVERGED
            result.error = f"{stage}: loss became NaN or infinite at step {outcome.step}"
            return result
        if pretrain and spec.adapt is not None:
            result.pretrain = outcome.final.metrics()
        result.metrics.update(outcome.final.metrics())
    if spec.adapt is not None and spec.adapt.lora_rank > 0:
        merge_lora(model)  # decode as deployed: adapters folded into the weights
    with thread_count(spec.train.threads):
        result.metrics["decode_tokens_per_s"] = decode_tokens_per_second(model)
    return result


def _curve_listener(
    stage: Literal["pretrain", "adapt"], on_point: Callable[[CurvePoint], None]
) -> Callable[[LogRecord], None]:
    """A Trainer's log callback that passes each training log line on as a curve point
    (the lines the trainer adds to its curve: every `log_interval` steps)."""

    def listen(record: LogRecord) -> None:
        if record.get("kind") == "train":
            point = CurvePoint(
                step=int(record["step"]),
                tokens=int(record["tokens"]),
                seconds=float(record["elapsed"]),
                train_loss=float(record["loss"]),
                stage=stage,
            )
            on_point(point)

    return listen


def _path(name: str | None) -> Path | None:
    return None if name is None else Path(name)


def tokens_per_second(step_times: list[float], train: TrainConfig) -> float | None:
    """Median training throughput over the timed steps after warm-up."""
    timed = step_times[WARMUP_STEPS:] if len(step_times) > WARMUP_STEPS else step_times
    if not timed:
        return None
    return train.tokens_per_step / statistics.median(timed)


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def memory_peak() -> Iterator[Callable[[], int | None]]:
    """Yields a function that returns the CUDA allocator's peak since entry, in bytes, or
    None without CUDA. A CPU trial has no peak of its own that can be measured: its
    worker's resident size also holds the interpreter, torch and what earlier trials
    left, and the kernel's peak of it cannot always be reset."""
    if not torch.cuda.is_available():
        yield lambda: None
        return
    torch.cuda.reset_peak_memory_stats()
    yield torch.cuda.max_memory_allocated


def first_line(err: BaseException) -> str:
    return (str(err).strip().partition("\n")[0] or type(err).__name__)[:500]
