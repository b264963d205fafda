"""The training loop: optimizer steps until a budget is reached, evaluations, checkpoints
and the stable checkpoint of a wsd schedule (the optimizer, schedule and budgets are in
`llm.optim`, the device in `llm.device`, when to compile in `llm.compilation`, data
parallelism in `llm.distributed`, the log and display in `llm.display`, and the `llm
train` workflow in `llm.run`).

The trainer applies everything the model does not know about from outside: the device,
mixed precision, compilation, data parallelism, gradient accumulation and clipping. It
optimises only the parameters with `requires_grad`, so it fine-tunes a LoRA-wrapped model
as it is.

With an output folder, a run checkpoints and logs as it goes and resumes exactly: the
weights, optimizer, step counters, learning-rate schedule, the dropout RNG and the
generator that draws training windows all continue from where they stopped, so a run
stopped and resumed ends with the same weights as one that never stopped (on the same
device with a step or token budget, to the extent its kernels are deterministic: CPU
runs in separate processes occasionally differ in the last float bits from the first
step, resumed or not).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from llm.checkpoint import (
    TrainState,
    check_out_dir,
    latest_checkpoint,
    load_checkpoint,
    remove_interrupted_saves,
    save_checkpoint,
    save_training_state,
)
from llm.compilation import Compiler
from llm.config import TrainConfig, pairing_problems
from llm.data import TokenSplits, require_windows, train_batch
from llm.device import resolve_device, resolve_precision
from llm.display import LogRecord, training_log
from llm.distributed import SingleProcess, check_divisible
from llm.errors import ConfigError
from llm.evaluate import EvalResult, evaluate
from llm.loss import next_token_loss
from llm.optim import budget_progress, budget_reached, build_optimizer, cooling_down, learning_rate

StopReason = Literal["max_steps", "max_tokens", "max_seconds", "diverged", "interrupted"]


@dataclass
class TrainOutcome:
    status: Literal["ok", "diverged"]
    stop_reason: StopReason
    step: int
    tokens: int
    first_step: int  # where this session started: 0, or the step of the resumed checkpoint
    first_tokens: int
    seconds: float  # wall-clock, over all sessions of a resumed run
    final: EvalResult | None  # None when the run diverged or was interrupted
    best_val_loss: float | None
    step_times: list[float]  # seconds per optimizer step, this session only
    curve: list[dict[str, Any]]  # step, tokens, seconds, train_loss, val_loss (or None)


@dataclass
class _Session:
    """What one call of `Trainer.fit` carries from step to step."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    compiler: Compiler
    resumed: bool
    first_step: int  # where this session started
    first_tokens: int
    own_threads: int  # the run's thread count: only steps at it are timed
    stable_saved: bool
    saved_at: int  # the step of the last checkpoint this session wrote (-1: none)
    evaluated_at: int = -1
    final: EvalResult | None = None
    step_times: list[float] = field(default_factory=list)


class Trainer:
    """Trains `model` on `data` under `config`; see `fit`."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        data: TokenSplits,
        *,
        out_dir: Path | None = None,
        log: Callable[[LogRecord], None] | None = None,
        progress: bool = False,
        stable_dir: Path | None = None,
        parallel: SingleProcess | None = None,
        before_step: Sequence[Callable[[int], None]] = (),
    ) -> None:
        """`stable_dir`, with a wsd schedule: where to save a checkpoint of the moment the
        cool-down begins, from which training can continue to any larger budget.
        `parallel`: the processes this one trains with (`llm.distributed`); rank 0 alone
        writes checkpoints and the log. `before_step`: called before each optimizer step
        with the number of the step about to run; one may change torch's thread count (a
        search lends its idle workers' cores to the trials still running), and a step
        run with another thread count than the run's own is left out of `step_times`, so
        throughput is always that of the configured threads."""
        self.parallel = parallel or SingleProcess()
        self.before_step = before_step
        self.model = model
        self.config = config.validate()
        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log
        self.progress = progress
        self.stable_dir = Path(stable_dir) if stable_dir is not None else None
        if stable_dir is not None and config.schedule != "wsd":
            raise ConfigError(
                "a stable checkpoint needs train.schedule: wsd (a cosine schedule's rate "
                "depends on the budget at every step, so no state of it can be continued)"
            )
        problems = pairing_problems(model.config, config)
        if problems:
            raise ConfigError("; ".join(problems))
        require_windows(data.train, config.seq_len, "training split")
        require_windows(data.val, config.seq_len, "validation split")
        check_divisible(config.batch_size, self.parallel.world_size)
        self.device = self.parallel.device(resolve_device(config.device))
        self.autocast_dtype, self.use_scaler = resolve_precision(config.precision, self.device)

    def fit(self, resume: bool = False, resume_from: Path | None = None) -> TrainOutcome:
        """Train until the first budget is reached, the loss diverges or the user presses
        Ctrl-C (which saves a checkpoint when there is an output folder).

        `resume` continues from the latest checkpoint in the output folder, `resume_from`
        from the checkpoint folder it names (a larger budget than the checkpoint's run
        had continues that run). The global RNG and thread count are restored afterwards:
        a run leaves no global state changed. What saves killed midway (kill -9) left in
        the output folder is deleted first.
        """
        if resume_from is None and self.out_dir is not None:
            check_out_dir(self.out_dir, resume)
            resume_from = latest_checkpoint(self.out_dir) if resume else None
        elif resume_from is None and resume:
            raise ConfigError("resuming needs an output folder")
        if self.out_dir is not None and self.parallel.is_main:
            remove_interrupted_saves(self.out_dir)
        self.parallel.barrier()
        threads = torch.get_num_threads()
        cuda_devices = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        try:
            if self.config.threads:
                torch.set_num_threads(self.config.threads)
            with torch.random.fork_rng(devices=cuda_devices):
                torch.manual_seed(self.config.seed)
                return self._fit(resume_from)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, resume_from: Path | None) -> TrainOutcome:
        session = self._start(resume_from)
        main = self.parallel.is_main
        log = training_log(
            self.out_dir if main else None,
            self.config,
            append=session.resumed,
            callback=self.log if main else None,
            progress=self.progress and main,
        )
        with log as emit, self.parallel.interrupts() as interrupted:
            if session.resumed:
                emit({"kind": "resume", **self._position()})
            stop = budget_reached(self.config, self.state)
            try:
                while stop is None:
                    stop = self._step(session, emit, interrupted)
            except KeyboardInterrupt:
                stop = "interrupted"
                if self.out_dir and session.saved_at != self.state.step:
                    self._save(session.optimizer, session.scaler, None)
            self._end(session, stop, emit)
        diverged = stop == "diverged"
        return TrainOutcome(
            status="diverged" if diverged else "ok",
            stop_reason=stop,
            step=self.state.step,
            tokens=self.state.tokens,
            first_step=session.first_step,
            first_tokens=session.first_tokens,
            seconds=self._elapsed(),
            final=None if diverged or stop == "interrupted" else session.final,
            best_val_loss=self.state.best_val_loss,
            step_times=session.step_times,
            curve=self.state.curve,
        )

    def _start(self, resume_from: Path | None) -> _Session:
        """The model on its device, the optimizer and the data's random stream, as at the
        checkpoint `resume_from` when given."""
        config, model = self.config, self.model.to(self.device)
        model.train()
        optimizer = build_optimizer(model, config, self.device)
        scaler = torch.amp.GradScaler(self.device.type) if self.use_scaler else None
        generator = torch.Generator().manual_seed(config.seed)
        self.state = TrainState()
        if resume_from is not None:
            self.state = load_checkpoint(
                resume_from, model=model, optimizer=optimizer, scaler=scaler
            )
            restore_rng(self.state, generator)
        self._session_start = time.perf_counter() - self.state.seconds
        # The losses since the last log line, and when that line was written.
        self._window_losses: list[float] = []
        self._window_tokens, self._window_time = self.state.tokens, self.state.seconds
        self._last_lr = 0.0
        return _Session(
            optimizer=optimizer,
            scaler=scaler,
            generator=generator,
            # The uncompiled model is what gets saved.
            compiler=Compiler(self.parallel.wrap(model), config.compile, self.device.type),
            resumed=resume_from is not None,
            first_step=self.state.step,
            first_tokens=self.state.tokens,
            own_threads=torch.get_num_threads(),
            stable_saved=self.stable_dir is None,
            saved_at=self.state.step if resume_from is not None else -1,
        )

    def _step(
        self, session: _Session, emit: Callable[[LogRecord], None], interrupted: Callable[[], bool]
    ) -> StopReason | None:
        """One optimizer step, with its log line, evaluation and checkpoint when due; why
        training stops after it, or None to go on."""
        config = self.config
        for hook in self.before_step:
            hook(self.state.step + 1)
        started = time.perf_counter()
        progress = self._progress()
        if not session.stable_saved and cooling_down(config, progress):
            session.stable_saved = self._save_stable(session.optimizer, session.scaler)
        loss, failed = session.compiler.step(
            partial(
                self._train_step,
                optimizer=session.optimizer,
                scaler=session.scaler,
                generator=session.generator,
                progress=progress,
            )
        )
        for decision in (failed, session.compiler.after_step(progress, self.parallel.agree)):
            if decision is not None:
                emit({"kind": "compile", **self._position(), **asdict(decision)})
        if not math.isfinite(loss):
            return "diverged"
        if torch.get_num_threads() == session.own_threads:
            session.step_times.append(time.perf_counter() - started)
        stop, stopped = self.parallel.decide(budget_reached(config, self.state), interrupted())
        if stopped:
            raise KeyboardInterrupt
        self._record_train(loss, emit)
        step = self.state.step
        if stop or due(step, config.eval_interval):
            session.final = self._evaluate(session.compiler.forward, emit)
            session.evaluated_at = step
        if self.out_dir and (stop or due(step, config.checkpoint_interval)):
            final, evaluated = session.final, session.evaluated_at == step
            if not self._save(
                session.optimizer, session.scaler, final.loss if final and evaluated else None
            ):
                return "diverged"
            session.saved_at = step
        return stop

    def _end(self, session: _Session, stop: StopReason, emit: Callable[[LogRecord], None]) -> None:
        """What a run that ended still owes: its stable checkpoint and its final evaluation
        (a finished run resumed), and the log's last line."""
        if stop not in ("diverged", "interrupted"):
            if not session.stable_saved:
                # The budget ended before a cool-down began: the end is the stable point.
                session.stable_saved = self._save_stable(session.optimizer, session.scaler)
            if session.evaluated_at != self.state.step:
                session.final = self._evaluate(session.compiler.forward, emit)
        emit({"kind": "end", "stop_reason": stop, **self._position()})

    def _train_step(
        self,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        generator: torch.Generator,
        progress: float,
    ) -> float:
        """One optimizer step over `grad_accum` micro-batches at budget `progress`; returns
        its mean loss. A non-finite loss returns before the update, so the weights stay
        finite."""
        config, state = self.config, self.state
        warmup_end = state.warmup_end_progress
        if warmup_end is None and state.step >= config.warmup_steps:
            warmup_end = progress
        lr = learning_rate(config, state.step, progress, warmup_end)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        parallel = self.parallel
        for micro in range(config.grad_accum):
            # Every rank draws the whole batch, so the windows do not depend on how many
            # processes share it, and trains on its own slice.
            x, y = map(
                parallel.shard,
                train_batch(
                    self.data.train,
                    config.batch_size,
                    config.seq_len,
                    generator,
                    self.data.train_scored,
                ),
            )
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with parallel.accumulating(forward, last=micro == config.grad_accum - 1):
                with self._autocast():
                    logits = forward(x)
                loss = next_token_loss(logits, y) / config.grad_accum
                # The model's own regularizers (a mixture's load balancing) are trained on,
                # but the loss reported is the language model's alone, comparable across
                # models.
                objective = loss + self.model.aux_loss() / config.grad_accum
                (scaler.scale(objective) if scaler is not None else objective).backward()
            total += loss.detach()
        value = parallel.mean(total).item()
        if not math.isfinite(value):
            return value
        if config.grad_clip > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]], config.grad_clip
            )
        # The state after this step is taken before the update and installed with it,
        # Ctrl-C held off meanwhile, so a checkpoint never pairs weights with the wrong step.
        after = replace(
            state,
            step=state.step + 1,
            tokens=state.tokens + config.tokens_per_step,
            seconds=self._elapsed(),
            warmup_end_progress=warmup_end,
            **rng_states(generator),
        )
        with held_interrupts():
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            self.state = after
        self._last_lr = lr
        return value

    def _autocast(self) -> AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _elapsed(self) -> float:
        return time.perf_counter() - self._session_start

    def _progress(self) -> float:
        return budget_progress(self.config, self.state.step, self.state.tokens, self._elapsed())

    def _position(self) -> LogRecord:
        return {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "elapsed": round(self._elapsed(), 3),
        }

    def _record_train(self, loss: float, emit: Callable[[LogRecord], None]) -> None:
        """Average the losses since the last log line; every `log_interval` steps, write
        one and add it to the curve."""
        self._window_losses.append(loss)
        step = self.state.step
        if step % self.config.log_interval:
            return
        now, tokens = self._elapsed(), self.state.tokens
        mean_loss = sum(self._window_losses) / len(self._window_losses)
        tokens_per_s = (tokens - self._window_tokens) / max(now - self._window_time, 1e-9)
        self._window_losses, self._window_tokens, self._window_time = [], tokens, now
        self.state.curve.append(
            {
                "step": step,
                "tokens": tokens,
                "seconds": now,
                "train_loss": mean_loss,
                "val_loss": None,
            }
        )
        emit(
            {
                "kind": "train",
                **self._position(),
                "loss": mean_loss,
                "lr": self._last_lr,
                "tokens_per_s": round(tokens_per_s, 1),
            }
        )

    def _evaluate(self, forward: nn.Module, emit: Callable[[LogRecord], None]) -> EvalResult:
        config = self.config
        result = evaluate(
            forward,
            self.data.val,
            self.data.val_bytes,
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            device=self.device,
            autocast=self.autocast_dtype,
            max_batches=config.eval_max_batches,
            scored=self.data.val_scored,
        )
        state = self.state
        if state.best_val_loss is None or result.loss < state.best_val_loss:
            state.best_val_loss = result.loss
        if state.curve and state.curve[-1]["step"] == state.step:
            state.curve[-1]["val_loss"] = result.loss
        elif self._window_losses:  # else no step ran in this session: a finished run resumed
            state.curve.append(
                {
                    "step": state.step,
                    "tokens": state.tokens,
                    "seconds": self._elapsed(),
                    "train_loss": self._window_losses[-1],
                    "val_loss": result.loss,
                }
            )
        emit(
            {
                "kind": "eval",
                **self._position(),
                "val_loss": result.loss,
                "perplexity": result.perplexity,
                "bits_per_byte": result.bits_per_byte,
                "accuracy": result.accuracy,
            }
        )
        return result

    def _save_stable(
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
    ) -> bool:
        """Save the state a larger budget would continue from: before the first step of
        the cool-down (see `cooling_down`)."""
        assert self.stable_dir is not None
        if not self.parallel.is_main:
            return True
        save_training_state(
            self.stable_dir, model=self.model, optimizer=optimizer, state=self.state, scaler=scaler
        )
        return True

    def _save(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        val_loss: float | None,
    ) -> bool:
        """Checkpoint the current step; False (and nothing saved) if a weight is not finite."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            return False
        assert self.out_dir is not None
        if not self.parallel.is_main:
            return True
        save_checkpoint(
            self.out_dir,
            model=self.model,
            optimizer=optimizer,
            state=self.state,
            scaler=scaler,
            val_loss=val_loss,
            keep=self.config.keep_checkpoints,
        )
        return True


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Delay Ctrl-C until the block is done (in the main thread, where Python handles it)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def due(step: int, interval: int) -> bool:
    """Whether a periodic action (every `interval` steps; 0: never) falls on `step`."""
    return interval > 0 and step % interval == 0


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """The random states a resumed run must continue from: dropout (CPU and CUDA) and
    the training-window generator."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"cpu_rng": torch.get_rng_state(), "cuda_rng": cuda, "data_rng": generator.get_state()}


def restore_rng(state: TrainState, generator: torch.Generator) -> None:
    if state.cpu_rng is not None:
        torch.set_rng_state(state.cpu_rng)
    if state.cuda_rng and len(state.cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state.cuda_rng)
    if state.data_rng is not None:
        generator.set_state(state.data_rng)
