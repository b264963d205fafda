"""What a training run shows and keeps of itself: `log.jsonl` in its output folder, the
caller's callback, and a progress bar on a terminal (plain lines otherwise)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress, TextColumn

from llm.atomic import make_folder, output_error
from llm.config import TrainConfig
from llm.optim import budget_progress

LogRecord = dict[str, Any]
LOG_FILE = "log.jsonl"


@contextlib.contextmanager
def training_log(
    out_dir: Path | None,
    config: TrainConfig,
    *,
    append: bool,
    callback: Callable[[LogRecord], None] | None,
    progress: bool,
) -> Iterator[Callable[[LogRecord], None]]:
    """Yield `emit(record)`: append the record to `out_dir`/log.jsonl (a new file unless
    `append`), pass it to `callback`, and show it when `progress`."""
    with contextlib.ExitStack() as stack:
        file: TextIO | None = None
        if out_dir is not None:
            path = make_folder(out_dir) / LOG_FILE
            try:
                file = stack.enter_context(open(path, "a" if append else "w", encoding="utf-8"))
            except OSError as err:
                raise output_error(path, err) from None
        show = _display(stack, config) if progress else lambda record: None

        def emit(record: LogRecord) -> None:
            if file is not None:
                file.write(json.dumps(record) + "\n")
                file.flush()
            if callback is not None:
                callback(record)
            show(record)

        yield emit


def _display(stack: contextlib.ExitStack, config: TrainConfig) -> Callable[[LogRecord], None]:
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
            done = budget_progress(config, record["step"], record["tokens"], record["elapsed"])
            bar.update(task, completed=done, info=format_record(record))
        else:
            bar.console.print(format_record(record), highlight=False)

    return show


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
    if kind == "compile":
        return f"{step}  {record['reason']}"
    if kind == "end":
        return f"{step}  stopped: {record['stop_reason']} after {record['elapsed']:.1f}s"
    return f"{step}  {kind}"
