"""Named training presets (`llm train --preset NAME`) and the choice of one for this
machine (`--preset auto`).

A preset is a YAML file in the package's `llm/configs/` folder (which the repository's
`configs/` links to); its name is the file's stem. Nothing about them lives in code:
`auto` ranks whatever presets are there by their model's parameter count and takes the
largest one this machine trains at a useful speed, by an estimate stated in `estimate`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import cast

import torch

from llm.config import RunConfig, load_run_config
from llm.errors import UserError

# Package data, so that `--preset` works from any install, not only from a checkout. pip
# installs a package as files, so the resource is a folder on disk.
PRESETS_DIR = cast(Path, files("llm") / "configs")
# Sustained training throughput, in FLOP/s, that the estimate assumes: measured for the
# tiny preset on this project's 2-core development machine (about 30 GFLOP/s per core,
# float32), and a conservative share of a recent GPU's bf16 peak. Rough by design: they
# decide between presets a factor of ten apart in size.
CPU_FLOPS_PER_CORE = 25e9
GPU_FLOPS = 50e12
MPS_FLOPS = 3e12
USEFUL_STEP_SECONDS = 2.0  # slower than this, a run of a few thousand steps takes hours
MEMORY_SHARE = 0.5  # of the device's memory: room for the allocator, the data, the OS


@dataclass(frozen=True)
class Machine:
    device: str  # cuda, mps or cpu
    memory_bytes: int
    cores: int

    def describe(self) -> str:
        gib = self.memory_bytes / 2**30
        where = "GPU" if self.device == "cuda" else "memory"
        return f"{self.device}, {gib:.0f} GiB of {where}, {self.cores} CPU cores"

    @property
    def flops(self) -> float:
        if self.device == "cuda":
            return GPU_FLOPS
        if self.device == "mps":
            return MPS_FLOPS
        return CPU_FLOPS_PER_CORE * self.cores


@dataclass(frozen=True)
class Estimate:
    name: str
    params: int
    step_seconds: float
    memory_bytes: int

    def fits(self, machine: Machine) -> bool:
        return (
            self.step_seconds <= USEFUL_STEP_SECONDS
            and self.memory_bytes <= MEMORY_SHARE * machine.memory_bytes
        )

    def describe(self) -> str:
        return (
            f"{self.name} ({self.params / 1e6:.1f}M parameters): about "
            f"{self.step_seconds:.2g} s per step, {self.memory_bytes / 2**30:.1f} GiB"
        )


def _stems() -> list[str]:
    stems = sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))
    if not stems:
        raise UserError(f"no presets in {PRESETS_DIR} (train from a config file instead)")
    return stems


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"--preset: no preset {name!r}; the presets are {', '.join(_stems())}")
    return path


def preset_config(name: str) -> RunConfig:
    return load_run_config(preset_path(name))


def estimate(name: str, config: RunConfig, machine: Machine | None = None) -> Estimate:
    """Parameters, seconds per optimizer step on `machine` (6 FLOPs per parameter and
    token, forward and backward, at the machine's assumed throughput), and memory:
    16 bytes per parameter (float32 weights and gradients, AdamW's two moments) plus
    activations of about 16 float32 values per token, layer and model dimension."""
    model = dataclasses.replace(config.model, vocab_size=config.data.vocab_size)
    params = model.param_count().total
    train = config.train
    tokens = train.batch_size * train.seq_len
    seconds = 0.0
    if machine is not None:
        seconds = 6 * params * tokens * train.grad_accum / machine.flops
    activations = 16 * 4 * tokens * model.n_layers * model.d_model
    return Estimate(name, params, seconds, 16 * params + activations)


def estimate_preset(name: str, machine: Machine | None = None) -> Estimate:
    return estimate(name, preset_config(name), machine)


def this_machine() -> Machine:
    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        return Machine("cuda", torch.cuda.get_device_properties(0).total_memory, cores)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    device = "mps" if torch.backends.mps.is_available() else "cpu"
    return Machine(device, memory, cores)


def choose_preset(machine: Machine) -> tuple[str, str]:
    """The largest preset `machine` trains at a useful speed, and why, in a sentence."""
    estimates = sorted((estimate_preset(n, machine) for n in _stems()), key=lambda e: e.params)
    fitting = [e for e in estimates if e.fits(machine)] or estimates[:1]
    chosen = fitting[-1]
    larger = [e for e in estimates if e.params > chosen.params]
    why = f"preset auto: {chosen.describe()} on {machine.describe()}"
    if larger:
        next_one = larger[0]
        limit = "too slow" if next_one.step_seconds > USEFUL_STEP_SECONDS else "too much memory"
        why += f"; {next_one.describe()}: {limit}"
    return chosen.name, why
