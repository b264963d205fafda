"""`train.compile: auto`: compile the model with torch.compile when the rest of the run is
long enough to repay the warm-up.

The trainer runs PROBE_STEPS steps eagerly, estimates from them how long the rest of the
budget will take, and compiles when the time the faster steps would save exceeds the
warm-up. The speed-up and warm-up of each device type are estimates. The CPU's were
measured with `bench/compile_auto.py` on this project's 2-core machine (torch 2.13, a
4-layer, d_model 128 model, an empty inductor cache): compiled steps ran at 0.98 and
about 1.04 times the eager speed in two runs, after a warm-up of 50-75 s, so a CPU run
compiles only when it has most of an hour left. The GPU's are assumed, not measured here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PROBE_STEPS = 20


@dataclass(frozen=True)
class CompileGain:
    speedup: float  # eager step time over compiled step time
    warmup_seconds: float  # the first compiled steps' extra time


EXPECTED_GAIN = {
    "cpu": CompileGain(speedup=1.02, warmup_seconds=60.0),
    "cuda": CompileGain(speedup=1.3, warmup_seconds=60.0),
}


@dataclass(frozen=True)
class CompileDecision:
    compile: bool
    reason: str


def decide_compile(device_type: str, remaining_seconds: float) -> CompileDecision:
    """Whether compiling pays off with `remaining_seconds` of eager training left."""
    gain = EXPECTED_GAIN.get(device_type)
    if gain is None:
        return CompileDecision(False, f"torch.compile is not assumed to pay off on {device_type}")
    saved = remaining_seconds * (1 - 1 / gain.speedup)
    if not math.isfinite(remaining_seconds):
        saved = math.inf
    verdict = "compiling" if saved > gain.warmup_seconds else "staying eager"
    return CompileDecision(
        saved > gain.warmup_seconds,
        f"{verdict}: about {remaining_seconds:.0f} s of training left, which compiled steps "
        f"({gain.speedup:.2f}x faster on {device_type}) would shorten by {saved:.0f} s, "
        f"against a warm-up of about {gain.warmup_seconds:.0f} s",
    )


def remaining_seconds(progress_then: float, progress_now: float, seconds: float) -> float:
    """The time the rest of the budget takes at the rate that took the budget from
    `progress_then` to `progress_now` (fractions) in `seconds`."""
    done = progress_now - progress_then
    if done <= 0:
        return math.inf
    return (1 - progress_now) * seconds / done


class Compiler:
    """The forward the trainer calls: eager, compiled from the start (`compile: true`), or
    with `auto` eager for PROBE_STEPS steps and then compiled if `decide_compile` says
    so. A failure of the first step compiled by `auto` (a machine without a C compiler,
    an operation torch cannot compile) leaves the run eager instead of ending it."""

    def __init__(self, eager: nn.Module, setting: bool | str, device_type: str) -> None:
        self.eager, self.device_type = eager, device_type
        self.forward = torch.compile(eager) if setting is True else eager
        self.pending = setting == "auto"
        self.unproven = False  # compiled by `auto`, and no step has run compiled yet
        self.probe_steps = 0
        self.probe_start = (0.0, 0.0)  # budget progress and clock at the first step

    def step(self, run: Callable[[nn.Module], float]) -> tuple[float, CompileDecision | None]:
        """`run(forward)`, one training step; a decision when compiling just failed."""
        if not self.unproven:
            return run(self.forward), None
        self.unproven = False
        try:
            return run(self.forward), None
        except Exception as err:  # torch.compile's failures have no common type
            self.forward = self.eager
            failure = f"torch.compile failed ({type(err).__name__}: {err}); staying eager"
            return run(self.eager), CompileDecision(False, failure)

    def after_step(self, progress: float, agree: Callable[[bool], bool]) -> CompileDecision | None:
        """Count an eager step at budget `progress`; after the probe, the decision (made
        the same in every process through `agree`)."""
        if not self.pending:
            return None
        if self.probe_steps == 0:
            self.probe_start = (progress, time.perf_counter())
        self.probe_steps += 1
        if self.probe_steps <= PROBE_STEPS:
            return None
        self.pending = False
        start, started = self.probe_start
        left = remaining_seconds(start, progress, time.perf_counter() - started)
        decision = decide_compile(self.device_type, left)
        decision = CompileDecision(agree(decision.compile), decision.reason)
        if decision.compile:
            self.forward = torch.compile(self.eager)
            self.unproven = True
        return decision
