"""`train.compile: auto`: a run compiles only when the rest of it repays the warm-up, says
so in its log, and stays eager when compiling fails."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from test_train import TRAIN, fit
from torch import nn

from llm.compilation import (
    EXPECTED_GAIN,
    PROBE_STEPS,
    CompileGain,
    decide_compile,
    remaining_seconds,
)

LONGER = dataclasses.replace(TRAIN, max_steps=PROBE_STEPS + 10, eval_interval=0)


def test_compiling_pays_off_only_for_enough_remaining_time() -> None:
    # On a CPU, compiled steps are about 1.02x faster after a 60 s warm-up: ten minutes
    # of training left would save 12 s, an hour 71 s.
    assert not decide_compile("cpu", 600).compile
    assert decide_compile("cpu", 3600).compile
    assert "about 3600 s of training left" in decide_compile("cpu", 3600).reason
    assert not decide_compile("mps", 1e9).compile  # no estimate for this device
    assert remaining_seconds(0.1, 0.2, 10.0) == pytest.approx(80.0)


def compile_records(monkeypatch: pytest.MonkeyPatch, compiled: Any) -> list[dict[str, Any]]:
    monkeypatch.setattr(torch, "compile", compiled)
    records: list[dict[str, Any]] = []
    outcome = fit(LONGER, log=records.append)
    assert outcome.status == "ok" and outcome.step == LONGER.max_steps
    return [r for r in records if r["kind"] == "compile"]


def test_a_short_run_stays_eager_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[nn.Module] = []
    [decision] = compile_records(monkeypatch, lambda module: calls.append(module) or module)
    assert decision["compile"] is False and decision["reason"].startswith("staying eager")
    assert decision["step"] == PROBE_STEPS + 1
    assert calls == []


def test_a_run_that_repays_the_warmup_compiles_after_its_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(EXPECTED_GAIN, "cpu", CompileGain(speedup=1.02, warmup_seconds=0.0))
    calls: list[nn.Module] = []
    [decision] = compile_records(monkeypatch, lambda module: calls.append(module) or module)
    assert decision["compile"] is True and decision["reason"].startswith("compiling")
    assert len(calls) == 1


class FailsToCompile(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C compiler")


def test_a_compile_that_fails_leaves_the_run_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXPECTED_GAIN, "cpu", CompileGain(speedup=1.02, warmup_seconds=0.0))
    decided, failed = compile_records(monkeypatch, lambda module: FailsToCompile())
    assert decided["compile"] is True
    assert failed["compile"] is False
    assert failed["reason"] == ("torch.compile failed (RuntimeError: no C compiler); staying eager")
