"""Which genes matter: each gene's importance for an objective, computed by Optuna's
PED-ANOVA evaluator (Watanabe et al., 2023) over a run's trials at one rung.

PED-ANOVA asks how much each gene's distribution among the best trials (the top 10% by
default) differs from its distribution among all of them; the importances sum to 1. It
needs no model fitted to the results (Optuna's fANOVA would need scikit-learn) and works
from a few dozen trials. The trials are made into an in-memory Optuna study, the search's
own storage untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from evo.space import Domain, Objective, SearchSpace

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

MIN_TRIALS = 20  # fewer successful trials than this at a rung say nothing about genes


def gene_importance(
    trials: pd.DataFrame, space: SearchSpace, objective: Objective
) -> dict[str, float] | None:
    """Importance of each gene of `space` (those that vary) for `objective`, from the
    successful `trials` (one rung's: their values must be comparable), largest first;
    None when fewer than MIN_TRIALS trials have every gene."""
    import optuna  # here, not at the top: only the report's genes section needs it

    distributions = {
        name: _distribution(domain)
        for name, domain in space.genes.items()
        if f"gene.{name}" in trials and _varies(domain)
    }
    usable = _complete(trials, distributions, objective)
    if len(usable) < MIN_TRIALS or not distributions:
        return None
    with _quiet():
        study = optuna.create_study(direction="minimize" if objective.sign > 0 else "maximize")
    for _, row in usable.iterrows():
        params = {name: _value(row[f"gene.{name}"], d) for name, d in distributions.items()}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(row[objective.metric])
            )
        )
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {name: float(value) for name, value in importances.items()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna announces every study it creates; this one is a calculation, not a study."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _distribution(domain: Domain) -> BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if domain.choice is not None:
        return CategoricalDistribution([_choice(c) for c in domain.choice])
    if domain.int_range is not None:
        low, high = domain.int_range
        return IntDistribution(low, high, step=domain.step or 1)
    assert domain.float_range is not None  # a Domain has exactly one kind
    low, high = domain.float_range
    return FloatDistribution(low, high, log=bool(domain.log))


def _varies(domain: Domain) -> bool:
    if domain.choice is not None:
        return len(domain.choice) > 1
    bounds = domain.int_range or domain.float_range
    assert bounds is not None
    return bounds[0] < bounds[1]


def _choice(value: Any) -> Any:
    """A choice as Optuna stores it: None, bool, int, float or str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _value(value: Any, distribution: BaseDistribution) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        for choice in distribution.choices:  # the stored value may have become a float
            if choice == value or str(choice) == str(value):
                return choice
        return _choice(value)
    if isinstance(distribution, IntDistribution):
        return int(value)
    return float(value)


def _complete(
    trials: pd.DataFrame, distributions: dict[str, BaseDistribution], objective: Objective
) -> pd.DataFrame:
    """The trials with a value of the objective and of every gene (a genome made before
    a gene existed lacks it). A choice of null reads back as NaN: there NaN is a value."""
    from optuna.distributions import CategoricalDistribution

    nullable = {
        name
        for name, d in distributions.items()
        if isinstance(d, CategoricalDistribution) and None in d.choices
    }
    required = [f"gene.{name}" for name in distributions if name not in nullable]
    return trials.dropna(subset=[objective.metric, *required], how="any")
