"""Data-parallel training across processes, applied to the trainer from outside.

A run in N processes follows torchrun's contract: each process finds WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment, so `torchrun
--nproc-per-node N -m llm.cli train …` works, on one machine or several; `llm train
--nproc N` starts the N processes itself (`launch`). Every rank draws the same global
batch of windows from the same generator and trains on its own slice of it, and
DistributedDataParallel averages the gradients, so a step is the one a single process
takes with the whole batch, and a checkpoint resumes with any number of processes.
Rank 0 alone writes data caches, checkpoints, logs and the model; decisions that end a
run (a budget in seconds, Ctrl-C) are rank 0's and every rank acts on them at the same
step. The gloo backend serves CPUs and NCCL GPUs (one per process, by LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from llm.cli_support import EXIT_INTERRUPTED
from llm.errors import ConfigError

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # a rank waits this long for the others
# The budgets that end a run, as rank 0 sends them (None: not reached).
STOP_REASONS = (None, "max_steps", "max_tokens", "max_seconds")


class SingleProcess:
    """The trainer's view of parallelism when there is none: every operation is the
    identity, so the training loop reads the same either way."""

    rank, world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def shard(self, batch: Tensor) -> Tensor:
        return batch

    def mean(self, value: Tensor) -> Tensor:
        return value

    def decide(self, stop: str | None, interrupted: bool) -> tuple[str | None, bool]:
        """Rank 0's reason to stop (None: go on), and whether any rank was interrupted."""
        return stop, interrupted

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, in every process."""
        return flag

    @contextlib.contextmanager
    def interrupts(self) -> Iterator[Callable[[], bool]]:
        """While training: whether Ctrl-C was pressed. One process leaves Python's
        KeyboardInterrupt as it is; ranks note the signal and act on it together."""
        yield lambda: False

    def main_first(self, work: Callable[[], T]) -> T:
        return work()

    def barrier(self) -> None:
        pass

    @contextlib.contextmanager
    def accumulating(self, model: nn.Module, last: bool) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


class DataParallel(SingleProcess):
    """One of WORLD_SIZE processes training one model (see the module's docstring)."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        backend = "nccl" if device.type == "cuda" else "gloo"
        self._device = self.device(device)  # where NCCL needs the tensors it reduces
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def wrap(self, model: nn.Module) -> nn.Module:
        # The model's buffers (position tables) never change: nothing to sync per forward.
        # Newer torch names the option forward_sync_buffers and deprecates the old name.
        options = inspect.signature(DistributedDataParallel).parameters
        if "forward_sync_buffers" in options:
            return DistributedDataParallel(model, forward_sync_buffers=False)
        return DistributedDataParallel(model, broadcast_buffers=False)

    def shard(self, batch: Tensor) -> Tensor:
        size = len(batch) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def mean(self, value: Tensor) -> Tensor:
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world_size

    def decide(self, stop: str | None, interrupted: bool) -> tuple[str | None, bool]:
        mine = STOP_REASONS.index(stop) if self.is_main else 0
        votes = torch.tensor([mine, int(interrupted)], device=self._device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return STOP_REASONS[int(votes[0])], bool(votes[1])

    def agree(self, flag: bool) -> bool:
        vote = torch.tensor([int(flag) if self.is_main else 0], device=self._device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote[0])

    @contextlib.contextmanager
    def interrupts(self) -> Iterator[Callable[[], bool]]:
        # A KeyboardInterrupt inside a collective would leave the other ranks waiting.
        received: list[int] = []
        handlers = {
            sig: signal.signal(sig, lambda signum, frame: received.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield lambda: bool(received)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def main_first(self, work: Callable[[], T]) -> T:
        """Rank 0 does `work` (filling a cache) before the others repeat it (reading it)."""
        if self.is_main:
            result = work()
            self.barrier()
            return result
        self.barrier()
        return work()

    def barrier(self) -> None:
        dist.barrier()

    @contextlib.contextmanager
    def accumulating(self, model: nn.Module, last: bool) -> Iterator[None]:
        """Skip the gradients' all-reduce on every micro-batch but a step's last."""
        if last or not isinstance(model, DistributedDataParallel):
            yield
            return
        with model.no_sync():
            yield

    def close(self) -> None:
        dist.destroy_process_group()


def from_environment(device: torch.device) -> SingleProcess:
    """DataParallel when torchrun's variables name several processes, else SingleProcess."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SingleProcess()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if rank != 0:  # every rank would repeat rank 0's warnings about the same data
        logging.getLogger("llm").setLevel(logging.ERROR)
    return DataParallel(rank, world_size, local_rank, device)


def check_divisible(batch_size: int, world_size: int) -> None:
    """Refuse a process count (`--nproc`) below one, or one the batch does not split into."""
    if world_size < 1:
        raise ConfigError(f"--nproc must be at least 1 (got {world_size})")
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size ({batch_size}) must be a multiple of the number of processes "
            f"({world_size}): each trains on an equal slice of the batch"
        )


def launch(module: str, argv: list[str], nproc: int) -> int:
    """Run `python -m module argv` as `nproc` ranks on this machine, with torchrun's
    environment; the exit code: 130 if any rank was interrupted, else the worst.

    Ctrl-C in a terminal reaches every rank itself; a SIGINT or SIGTERM sent to this
    process alone is passed on to them. Only rank 0's standard output is shown."""
    env = {
        **os.environ,
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=None if rank == 0 else subprocess.DEVNULL,
        )
        for rank in range(nproc)
    ]

    def pass_on(signum: int, frame: object) -> None:
        for process in ranks:
            process.send_signal(signum)

    handlers = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [process.wait() for process in ranks]
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    codes = [128 - code if code < 0 else code for code in codes]  # killed by signal N: 128+N
    return EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes else max(codes)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
