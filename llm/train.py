"""Training: AdamW with warmup, then a cosine decay or a warmup-stable-decay schedule, over
a step, token or time budget.

The trainer applies everything the model does not know about from outside: the device,
mixed precision, compilation, gradient accumulation and clipping. It optimises only the
parameters with `requires_grad`, so it fine-tunes a LoRA-wrapped model as it is.

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
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
from rich.console import Console
from rich.progress import Progress, TextColumn
from torch import nn

from llm.atomic import make_folder, output_error, read_json_object, write_json
from llm.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_interrupted_saves,
    save_checkpoint,
    save_model_dir,
    save_training_state,
)
from llm.config import ModelConfig, RunConfig, TrainConfig, to_dict
from llm.data import TokenSplits, prepare, require_windows, train_batch
from llm.errors import ConfigError
from llm.evaluate import EvalResult, evaluate
from llm.loss import next_token_loss
from llm.model import Transformer

StopReason = Literal["max_steps", "max_tokens", "max_seconds", "diverged", "interrupted"]
LogRecord = dict[str, Any]

LOG_FILE = "log.jsonl"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


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


# ------------------------------------------------------------------ device and precision


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; any other name must be available.
    Errors name `setting`, where the user wrote the device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting}: unknown device {name!r}") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ConfigError(f"{setting}: {name!r} is not available on this machine")
    return device


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None: full float32) and whether losses need a GradScaler.

    `auto` is bf16 on CUDA where supported, else fp16 with loss scaling, and float32
    elsewhere: CPU and MPS autocast rarely pay off, but asking for bf16 there works.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU does not support bf16; use fp16")
        return torch.bfloat16, False
    if precision == "fp16":
        return torch.float16, True
    return None, False


# ---------------------------------------------------------------- optimizer and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices decay; norms, biases and embeddings
    (of any nn.Embedding, tied output heads included) do not."""
    embeddings = {
        id(p)
        for module in model.modules()
        if isinstance(module, nn.Embedding)
        for p in module.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2 and id(p) not in embeddings]
    decay_ids = {id(p) for p in decay}
    no_decay = [p for p in trainable if id(p) not in decay_ids]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        fused=device.type == "cuda",
    )


def budget_progress(config: TrainConfig, step: int, tokens: int, seconds: float) -> float:
    """How much of the budget is used, 0 to 1: the largest fraction among the budgets set."""
    fractions = [0.0]
    if config.max_steps is not None:
        fractions.append(step / config.max_steps)
    if config.max_tokens is not None:
        fractions.append(tokens / config.max_tokens)
    if config.max_seconds is not None:
        fractions.append(seconds / config.max_seconds)
    return min(max(fractions), 1.0)


def learning_rate(
    config: TrainConfig, step: int, progress: float, warmup_end_progress: float | None = None
) -> float:
    """The rate for step `step` (0-based) at budget `progress`: linear warmup over
    `warmup_steps`, then the schedule's decay from the peak down to
    `learning_rate * min_lr_ratio`.

    cosine spreads a cosine over the progress that remained when warmup ended; under a
    time budget only the run knows when that was, and passes it in (left out, it is
    computed from the step and token budgets alone). wsd holds the peak until the last
    `decay_fraction` of the budget and then cools down as 1 - sqrt of the cool-down's
    progress, which ends lower than a linear decay in the same steps.
    """
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    floor = peak * config.min_lr_ratio
    if config.schedule == "wsd":
        cooled = (progress - (1.0 - config.decay_fraction)) / config.decay_fraction
        return floor + (peak - floor) * (1.0 - math.sqrt(min(max(cooled, 0.0), 1.0)))
    if warmup_end_progress is None:
        warmup = config.warmup_steps
        warmup_end_progress = budget_progress(config, warmup, warmup * config.tokens_per_step, 0)
    remaining = 1.0 - warmup_end_progress
    done = 1.0 if remaining <= 0 else (progress - warmup_end_progress) / remaining
    done = min(max(done, 0.0), 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * done))


def cooling_down(config: TrainConfig, progress: float) -> bool:
    """Whether a wsd schedule has left its stable phase at budget `progress`. Until then
    the rate does not depend on the budget, so the state of a run can continue under any
    larger budget exactly as if that budget had been set from the start."""
    return config.schedule == "wsd" and progress >= 1.0 - config.decay_fraction


def planned_steps(config: TrainConfig) -> tuple[int, int] | None:
    """(the step at which the cool-down begins, the steps in all) of a run under `config`;
    None under a time budget, whose steps depend on the machine. A cosine schedule
    decays from the start: its first number is 0."""
    if config.max_seconds is not None:
        return None
    per_step = config.tokens_per_step
    limits = [
        config.max_steps,
        None if config.max_tokens is None else -(-config.max_tokens // per_step),
    ]
    total = min(limit for limit in limits if limit is not None)
    if config.schedule != "wsd":
        return 0, total
    low, high = 0, total  # the first step whose progress is in the cool-down, by bisection
    while low < high:
        middle = (low + high) // 2
        if cooling_down(config, budget_progress(config, middle, middle * per_step, 0.0)):
            high = middle
        else:
            low = middle + 1
    return low, total


def budget_reached(config: TrainConfig, state: TrainState) -> StopReason | None:
    if config.max_steps is not None and state.step >= config.max_steps:
        return "max_steps"
    if config.max_tokens is not None and state.tokens >= config.max_tokens:
        return "max_tokens"
    if config.max_seconds is not None and state.seconds >= config.max_seconds:
        return "max_seconds"
    return None


# ------------------------------------------------------------------------------ trainer


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
    ) -> None:
        """`stable_dir`, with a wsd schedule: where to save a checkpoint of the moment the
        cool-down begins, from which training can continue to any larger budget."""
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
        max_seq_len = model.config.max_seq_len
        if config.seq_len > max_seq_len:
            raise ConfigError(
                f"train.seq_len ({config.seq_len}) exceeds the model's max_seq_len ({max_seq_len})"
            )
        require_windows(data.train, config.seq_len, "training split")
        require_windows(data.val, config.seq_len, "validation split")
        self.device = resolve_device(config.device)
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
        if self.out_dir is not None:
            remove_interrupted_saves(self.out_dir)
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
        config, model = self.config, self.model.to(self.device)
        model.train()
        optimizer = build_optimizer(model, config, self.device)
        scaler = torch.amp.GradScaler(self.device.type) if self.use_scaler else None
        generator = torch.Generator().manual_seed(config.seed)
        self.state = TrainState()
        resume = resume_from is not None
        if resume_from is not None:
            self.state = load_checkpoint(
                resume_from, model=model, optimizer=optimizer, scaler=scaler
            )
            restore_rng(self.state, generator)
        # Compilation takes tens of seconds, more than short runs and trials last, so it
        # is opt-in; the uncompiled model is what gets saved.
        forward = torch.compile(model) if config.compile else model
        self._session_start = time.perf_counter() - self.state.seconds
        first_step, first_tokens = self.state.step, self.state.tokens
        step_times: list[float] = []
        final: EvalResult | None = None
        evaluated_at, saved_at = -1, self.state.step if resume else -1
        stable_saved = self.stable_dir is None
        with self._logger(resume) as emit:
            stop = budget_reached(config, self.state)
            try:
                while stop is None:
                    started = time.perf_counter()
                    progress = self._progress()
                    if not stable_saved and cooling_down(config, progress):
                        stable_saved = self._save_stable(optimizer, scaler)
                    loss = self._train_step(forward, optimizer, scaler, generator, progress)
                    if not math.isfinite(loss):
                        stop = "diverged"
                        break
                    step_times.append(time.perf_counter() - started)
                    stop = budget_reached(config, self.state)
                    self._record_train(loss, emit)
                    step = self.state.step
                    if stop or due(step, config.eval_interval):
                        final = self._evaluate(forward, emit)
                        evaluated_at = step
                    if self.out_dir and (stop or due(step, config.checkpoint_interval)):
                        val_loss = final.loss if final and evaluated_at == step else None
                        if not self._save(optimizer, scaler, val_loss):
                            stop = "diverged"
                            break
                        saved_at = step
            except KeyboardInterrupt:
                stop = "interrupted"
                if self.out_dir and saved_at != self.state.step:
                    self._save(optimizer, scaler, None)
            if not stable_saved and stop not in ("diverged", "interrupted"):
                # The budget ended before a cool-down began: the end is the stable point.
                stable_saved = self._save_stable(optimizer, scaler)
            if stop not in ("diverged", "interrupted") and evaluated_at != self.state.step:
                final = self._evaluate(forward, emit)  # a finished run resumed
            emit({"kind": "end", "stop_reason": stop, **self._position()})
        diverged = stop == "diverged"
        return TrainOutcome(
            status="diverged" if diverged else "ok",
            stop_reason=stop,
            step=self.state.step,
            tokens=self.state.tokens,
            first_step=first_step,
            first_tokens=first_tokens,
            seconds=self._elapsed(),
            final=None if diverged or stop == "interrupted" else final,
            best_val_loss=self.state.best_val_loss,
            step_times=step_times,
            curve=self.state.curve,
        )

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
        for _ in range(config.grad_accum):
            x, y = train_batch(self.data.train, config.batch_size, config.seq_len, generator)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = forward(x)
            loss = next_token_loss(logits, y) / config.grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
        value = total.item()
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
    def _logger(self, resume: bool) -> Iterator[Callable[[LogRecord], None]]:
        """Yield `emit(record)`: append the record to log.jsonl, pass it to `log`, and show
        it (a progress bar on a terminal, plain lines otherwise)."""
        self._window_losses: list[float] = []
        self._window_tokens, self._window_time = self.state.tokens, self.state.seconds
        self._last_lr = 0.0
        with contextlib.ExitStack() as stack:
            file: TextIO | None = None
            if self.out_dir is not None:
                path = make_folder(self.out_dir) / LOG_FILE
                try:
                    file = stack.enter_context(open(path, "a" if resume else "w", encoding="utf-8"))
                except OSError as err:
                    raise output_error(path, err) from None
            show = self._display(stack)

            def emit(record: LogRecord) -> None:
                if file is not None:
                    file.write(json.dumps(record) + "\n")
                    file.flush()
                if self.log is not None:
                    self.log(record)
                show(record)

            if resume:
                emit({"kind": "resume", **self._position()})
            yield emit

    def _display(self, stack: contextlib.ExitStack) -> Callable[[LogRecord], None]:
        if not self.progress:
            return lambda record: None
        console = Console(stderr=True)
        if not console.is_terminal:
            return lambda record: console.print(format_record(record), highlight=False)
        bar = stack.enter_context(
            Progress(
                *Progress.get_default_columns(), TextColumn("{task.fields[info]}"), console=console
            )
        )
        task = bar.add_task("training", total=1.0, info="")

        def show(record: LogRecord) -> None:
            if record["kind"] == "train":
                done = budget_progress(
                    self.config, record["step"], record["tokens"], record["elapsed"]
                )
                bar.update(task, completed=done, info=format_record(record))
            else:
                bar.console.print(format_record(record), highlight=False)

        return show


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


def format_record(record: LogRecord) -> str:
    step = f"step {record.get('step', '?'):>6}"
    kind = record["kind"]
    if kind == "train":
        return (
            f"{step}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['tokens_per_s']:,.0f} tok/s"
        )
    if kind == "eval":
        return (
            f"{step}  val_loss {record['val_loss']:.4f}  bpb {record['bits_per_byte']:.4f}  "
            f"acc {record['accuracy']:.3f}"
        )
    if kind == "end":
        return f"{step}  stopped: {record['stop_reason']} after {record['elapsed']:.1f}s"
    return f"{step}  {kind}"


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A fresh run must not mix its checkpoints with another run's; a resume needs one."""
    has_checkpoint = latest_checkpoint(out_dir) is not None
    if resume and not has_checkpoint:
        raise ConfigError(f"nothing to resume in {out_dir}: it holds no checkpoint")
    if not resume and has_checkpoint:
        raise ConfigError(
            f"{out_dir} already holds checkpoints of a run: continue it with --resume, "
            "or choose another --out"
        )


# ---------------------------------------------------------------------------- llm train


def train_run(
    run_config: RunConfig, out_dir: Path, *, resume: bool = False, progress: bool = True
) -> TrainOutcome:
    """`llm train`: prepare the data, build the model, train it, and leave in `out_dir` a
    model directory plus `run.json` (the run config), `metrics.json` (the final
    evaluation and how the run ended), `log.jsonl` and `checkpoints/`.

    A diverged run writes `metrics.json` but no model; an interrupted one only its
    checkpoint, to be continued with `resume`.
    """
    out_dir = Path(out_dir)
    run_dict = json.loads(json.dumps(to_dict(run_config)))
    check_out_dir(out_dir, resume)
    if resume:
        check_same_run(out_dir, run_dict)
    prepared = prepare(run_config.data, progress=progress)
    tokenizer = prepared.tokenizer
    model_config = model_config_for(run_config.model, tokenizer.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_config.train.seed)
        model = Transformer(model_config)
    trainer = Trainer(
        model, run_config.train, prepared.splits(), out_dir=out_dir, progress=progress
    )
    if not resume:
        write_json(out_dir / RUN_FILE, run_dict)
    outcome = trainer.fit(resume=resume)
    if outcome.stop_reason == "interrupted":
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
    total, non_embedding = config.param_count()
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
        final = outcome.final
        metrics.update(
            val_loss=final.loss,
            perplexity=final.perplexity,
            bits_per_byte=final.bits_per_byte,
            accuracy=final.accuracy,
            eval_tokens=final.tokens,
        )
    return metrics
