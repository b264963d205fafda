"""The search's forecast of its target: when `search.target` lies beyond the top rung,
each genome's score after a complete run of the target, predicted from its rung scores by
the law of `evo.schedule.extrapolate` and fitted again whenever a result comes in.

Only the first objective is forecast (the one the search's pick is made by), and only
when its metric extrapolates (`evo.metrics.Extrapolation`): bits per byte and the
validation loss as they are, perplexity through its log. Throughput, sizes and accuracy
follow no such law and are never forecast. A failed trial gives no point.

The fit is a pure function of the results recorded (the points are sorted before fitting),
so a replayed search gets the same forecast, and fitting waits until the forecast is
read: once per set of results, however many decisions read it. The fit's seed noise is
always estimated from the run itself, never `evo validate`'s figure: given, it would
make the forecast (and anything decided by it) depend on validations made after the
search, and a resumed search could decide otherwise than the one it resumes. `evo
validate`'s seed spread enters the intervals where they are shown (`evo.summary`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from evo.metrics import METRICS, Extrapolation
from evo.schedule.interval import interval
from evo.space import Objective, SearchSpace
from evo.storage import ForecastRecord, PredictionRecord

if TYPE_CHECKING:
    from evo.schedule.extrapolate import CurveFit, Prediction, RungPoint

LEVEL = 0.8  # the intervals' coverage


def forecast_objective(space: SearchSpace) -> Objective | None:
    """The objective forecast at the space's target: the first, when the target lies
    beyond the top rung and its metric extrapolates; None when nothing is forecast (with
    the target at the top rung, every genome that matters is measured there)."""
    target, objective = space.search.target, space.search.objectives[0]
    if space.search.mode != "steady_state" or target is None:
        return None
    if METRICS[objective.metric].extrapolation is None:
        return None
    top = space.rung_budgets()[-1][target.unit]
    return objective if target.value > top else None


def to_loss(kind: Extrapolation, value: float) -> float:
    """A metric's value on the scale the law is fitted on."""
    return math.log(value) if kind == "log" else value


def from_loss(kind: Extrapolation, loss: float) -> float:
    """A value of the law's scale as the metric's."""
    return math.exp(loss) if kind == "log" else loss


def shown_interval(
    prediction: PredictionRecord, forecast: ForecastRecord, seed_noise: float | None
) -> tuple[float, float]:
    """A stored prediction's interval, in the metric's unit: as stored (with the fit's
    estimate of the seed noise), or with `seed_noise` (on the law's scale: `evo
    validate`'s seed spread at the target) in its place."""
    if seed_noise is None:
        return prediction.low, prediction.high
    kind = METRICS[forecast.metric].extrapolation
    assert kind is not None  # only a metric that extrapolates is forecast
    low, high = interval(to_loss(kind, prediction.mean), prediction.sd, seed_noise, forecast.level)
    return from_loss(kind, low), from_loss(kind, high)


class TargetForecast:
    """The law fitted to a search's rung scores of `objective`, and each genome's
    predicted score at the target."""

    def __init__(self, space: SearchSpace, objective: Objective) -> None:
        target = space.search.target
        assert target is not None  # forecast_objective checked it
        self.objective, self.unit, self.target = objective, target.unit, target.value
        self.budgets = [budget[target.unit] for budget in space.rung_budgets()]
        kind = METRICS[objective.metric].extrapolation
        assert kind is not None  # forecast_objective checked it
        self.kind: Extrapolation = kind
        self.points: list[RungPoint] = []
        self._fit: CurveFit | None = None

    @classmethod
    def of(cls, space: SearchSpace) -> TargetForecast | None:
        """The space's forecast; None when it forecasts nothing (`forecast_objective`)."""
        objective = forecast_objective(space)
        return None if objective is None else cls(space, objective)

    def add(self, genome_id: int, rung: int, value: float | None) -> bool:
        """A result of the objective at a rung (None: the trial failed); whether it is a
        new point of the fit."""
        if value is None or not math.isfinite(value) or (self.kind == "log" and value <= 0):
            return False
        from evo.schedule.extrapolate import RungPoint  # numpy: where a search fits

        loss = to_loss(self.kind, value)
        self.points.append(RungPoint(genome_id, self.budgets[rung], loss))
        self._fit = None
        return True

    @property
    def fit(self) -> CurveFit:
        """The law fitted to every point so far (fitted when first read after a point)."""
        if self._fit is None:
            from evo.schedule.extrapolate import fit_curves

            self._fit = fit_curves(self.points, level=LEVEL)
        return self._fit

    def predictions(self, genome_ids: Iterable[int] | None = None) -> dict[int, Prediction]:
        """Each genome's predicted score at the target, in the metric's unit (`sd` stays on
        the law's scale); every fitted genome when `genome_ids` is None. Empty until some
        genome has scores at two rungs (`CurveFit.extrapolates`): the search's first
        results, all at the lowest rung, say nothing of how far its scores will fall."""
        if not self.fit.extrapolates:
            return {}
        ids = list(self.fit.genomes if genome_ids is None else genome_ids)
        if not ids:
            return {}
        from evo.schedule.extrapolate import Prediction

        made = self.fit.predict_many(ids, self.target)
        shown = [
            Prediction(
                from_loss(self.kind, p.mean),
                from_loss(self.kind, p.low),
                from_loss(self.kind, p.high),
                p.measured,
                p.sd,
            )
            for p in made
        ]
        return dict(zip(ids, shown, strict=True))

    def record(self) -> ForecastRecord:
        """What storage keeps of the forecast: the fit and every genome's prediction."""
        fit = self.fit
        check = fit.check
        return ForecastRecord(
            metric=self.objective.metric,
            budget={self.unit: self.target},
            level=LEVEL,
            alpha=fit.alpha,
            law_error=fit.law_error,
            noise=fit.noise,
            noise_source=fit.noise_source,
            check=None
            if check is None
            else {
                "genomes": check.genomes,
                "law_error": check.law_error,
                "mean_error": check.mean_error,
                "tau": check.tau,
                "tau_naive": check.tau_naive,
            },
            predictions={
                genome: PredictionRecord(p.mean, p.low, p.high, p.sd, p.measured)
                for genome, p in self.predictions().items()
            },
        )
