"""Axis ranges and ticks that read well: ranges that begin and end on a round tick (so no
value is drawn below the lowest labelled one, and no range end reads "3.93391"), and
whole-number axes (trials, layers) ticked at whole numbers only."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

MOST_TICKS = 8


@dataclass(frozen=True)
class Ticks:
    """Ticks every `step` from `low` to `high`, both ticks themselves."""

    low: float
    high: float
    step: float
    whole: bool  # whole numbers: labelled without decimals

    @property
    def values(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 12) for i in range(count + 1)]

    @property
    def decimals(self) -> int:
        return 0 if self.whole else max(0, -math.floor(math.log10(self.step)))

    def dimension(self) -> dict[str, Any]:
        """A parallel-coordinates axis's range and ticks (it takes only explicit ticks)."""
        return {
            "range": [self.low, self.high],
            "tickvals": self.values,
            "ticktext": [f"{t:,.{self.decimals}f}" for t in self.values],
        }

    def axis(self, pad: float = 0.0) -> dict[str, Any]:
        """A plot axis's range, `pad` steps beyond the ticks, ticked every step from the
        lowest tick (zooming in keeps the step: never a tick between whole numbers)."""
        margin = pad * self.step
        return {
            "range": [self.low - margin, self.high + margin],
            "tick0": self.low,
            "dtick": self.step,
            "tickformat": f",.{self.decimals}f",
        }


def round_step(span: float, whole: bool = False) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that cuts `span` into at most
    MOST_TICKS steps (at least 1 for whole numbers)."""
    if span <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(span / MOST_TICKS))
    step = next(power * m for m in (1, 2, 5, 10) if span / (power * m) <= MOST_TICKS)
    return max(step, 1.0) if whole else step


def round_ticks(values: Iterable[float], whole: bool = False) -> Ticks:
    """Ticks around `values`, from a round tick at or below the lowest to one at or above
    the highest; with `whole`, at whole numbers only."""
    finite = np.asarray(list(values), dtype=float)
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low == high:  # one value: room around it
        room = 1.0 if whole else max(abs(low) * 0.05, 1e-3)
        low, high = low - room, high + room
    step = round_step(high - low, whole)
    first, last = math.floor(low / step) * step, math.ceil(high / step) * step
    return Ticks(round(first, 12), round(last, 12), step, whole)
