"""A predicted score's interval: the law's uncertainty and one seed's noise together. In
a module of its own, without numpy, so that showing a stored forecast (`evo status`)
loads none; `evo.schedule.extrapolate` makes the predictions."""

from __future__ import annotations

import math
from statistics import NormalDist


def interval(mean: float, sd: float, noise: float, level: float) -> tuple[float, float]:
    """The interval at `level` around `mean` of a score whose law is uncertain by `sd` and
    whose one seed's measurement spreads by `noise` (both standard deviations)."""
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(sd**2 + noise**2)
    return mean - half, mean + half
