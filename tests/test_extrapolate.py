"""Extrapolating rung scores to a budget beyond the top rung: the fit recovers known
curves, its intervals hold what they say, and odd input gets a clear answer."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import optimize

from evo.schedule import extrapolate
from evo.schedule.extrapolate import ExtrapolationError, RungPoint, fit_curves
from evo.schedule.interval import interval

RUNGS = (1e5, 3e5, 9e5)
TARGET = 8.1e6  # 9× beyond the top rung


def synthetic(
    rng: np.random.Generator,
    genomes: int,
    *,
    alpha: float = 0.35,
    noise: float = 0.005,
    rungs_seen: list[int] | None = None,
) -> tuple[list[RungPoint], np.ndarray, np.ndarray]:
    """Curves E + A·D^(−α) with one α, E and A drawn per genome, each seen (with noise)
    at its first rungs_seen[g] rungs (all three by default)."""
    floor = rng.normal(1.5, 0.1, genomes)
    scale = np.exp(rng.normal(math.log(40 * 1e5 ** (alpha - 0.35)), 0.3, genomes))
    seen = rungs_seen or [3] * genomes
    points = [
        RungPoint(g, budget, floor[g] + scale[g] * budget**-alpha + rng.normal(0, noise))
        for g in range(genomes)
        for budget in RUNGS[: seen[g]]
    ]
    return points, floor, scale


def truth(floor: np.ndarray, scale: np.ndarray, budget: float, alpha: float = 0.35) -> np.ndarray:
    return floor + scale * budget**-alpha


def test_the_fit_recovers_the_shared_exponent_and_each_genomes_curve() -> None:
    points, floor, scale = synthetic(np.random.default_rng(1), 40)
    fit = fit_curves(points, seed_noise=0.005)
    assert fit.alpha == pytest.approx(0.35, abs=0.04)
    floors, scales = np.array([fit.parameters(g) for g in range(40)]).T
    assert np.median(np.abs(floors - floor)) < 0.03
    assert np.max(np.abs(floors - floor)) < 0.08
    assert np.median(np.abs(np.log(scales / scale))) < 0.25


def test_predictions_nine_times_beyond_the_top_rung_are_within_their_stated_error() -> None:
    points, floor, scale = synthetic(np.random.default_rng(2), 40)
    fit = fit_curves(points, seed_noise=0.005)
    predictions = [fit.predict(g, TARGET) for g in range(40)]
    errors = np.abs([p.mean for p in predictions] - truth(floor, scale, TARGET))
    assert np.mean(errors) < 0.015
    assert all(not p.measured and p.low < p.mean < p.high for p in predictions)
    half_widths = np.array([(p.high - p.low) / 2 for p in predictions])
    assert np.mean(errors <= half_widths) >= 0.8


def test_an_interval_holds_the_seed_noise_where_the_curve_is_known_exactly() -> None:
    """A score measured at the target is one seed's: even where the law is sure (between
    the rungs of a genome seen at three), the interval is as wide as the seed noise."""
    points, _, _ = synthetic(np.random.default_rng(11), 40, noise=0.0)
    fit = fit_curves(points, seed_noise=0.05)
    for g in range(40):
        p = fit.predict(g, 2e5)
        assert p.high - p.mean >= 1.2816 * 0.05


def test_the_80_percent_intervals_hold_about_80_percent_of_held_out_truths() -> None:
    rng = np.random.default_rng(3)
    inside = []
    for _ in range(8):
        alpha = float(rng.uniform(0.2, 0.5))
        seen = list(rng.integers(1, 4, 50))
        points, floor, scale = synthetic(rng, 50, alpha=alpha, noise=0.01, rungs_seen=seen)
        fit = fit_curves(points, seed_noise=0.01)
        measured = truth(floor, scale, TARGET, alpha) + rng.normal(0, 0.01, 50)
        for g in range(50):
            p = fit.predict(g, TARGET)
            inside.append(p.low <= measured[g] <= p.high)
    assert 0.65 <= np.mean(inside) <= 0.95


def test_a_genome_seen_once_gets_a_wider_interval_than_one_seen_three_times() -> None:
    rng = np.random.default_rng(4)
    points, floor, scale = synthetic(rng, 30)
    twin = [  # genome 0's curve again, seen at the lowest rung only
        RungPoint(100, RUNGS[0], next(p.loss for p in points if p.genome_id == 0))
    ]
    fit = fit_curves(points + twin, seed_noise=0.005)
    once, thrice = fit.predict(100, TARGET), fit.predict(0, TARGET)
    assert once.high - once.low > 2 * (thrice.high - thrice.low)
    assert once.low <= truth(floor, scale, TARGET)[0] <= once.high


def test_at_a_budget_a_genome_was_scored_at_the_prediction_is_its_score() -> None:
    """With the target equal to the top rung, ranking by prediction is ranking by the
    measured top-rung score, whatever the lower rungs say."""
    rng = np.random.default_rng(5)
    points, _, _ = synthetic(rng, 12, noise=0.05)
    top = {p.genome_id: p.loss for p in points if p.budget == RUNGS[-1]}
    fit = fit_curves(points)
    assert fit.rank(range(12), RUNGS[-1]) == sorted(range(12), key=top.__getitem__)
    prediction = fit.predict(3, RUNGS[-1])
    assert prediction.measured and prediction.mean == top[3]
    assert prediction.high - prediction.mean == pytest.approx(1.2816 * fit.noise, rel=1e-3)
    # Two seeds at one budget: the prediction there is their mean.
    again = fit_curves([*points, RungPoint(3, RUNGS[-1], top[3] + 0.1)])
    assert again.predict(3, RUNGS[-1]).mean == pytest.approx(top[3] + 0.05)


def test_the_same_points_in_any_order_give_the_same_fit() -> None:
    points, _, _ = synthetic(np.random.default_rng(6), 20, rungs_seen=[1, 2, 3] * 6 + [3, 3])
    shuffled = list(points)
    random.Random(0).shuffle(shuffled)
    first, second = fit_curves(points), fit_curves(shuffled)
    assert [first.predict(g, TARGET) for g in range(20)] == [
        second.predict(g, TARGET) for g in range(20)
    ]
    assert first.noise == second.noise and first.check == second.check


def test_the_noise_is_estimated_from_the_residuals_when_not_given() -> None:
    points, _, _ = synthetic(np.random.default_rng(7), 40, noise=0.01)
    estimated = fit_curves(points)
    assert estimated.noise_source == "residuals"
    assert estimated.noise == pytest.approx(0.01, rel=0.5)
    given = fit_curves(points, seed_noise=0.02)
    assert (given.noise, given.noise_source) == (0.02, "given")
    # Two points per genome leave no residual to learn the noise from.
    two_each = [p for p in points if p.budget < RUNGS[-1]]
    assert fit_curves(two_each).noise_source == "assumed"


def test_the_runs_own_check_widens_the_intervals_when_the_law_does_not_hold() -> None:
    """Curves whose drop still speeds up (a sigmoid in log budget, as very short runs
    are) cannot be a power law: the check sees it and κ grows."""
    rng = np.random.default_rng(8)
    budgets = (1e5, 2e5, 4e5, 8e5)
    centre = rng.normal(math.log(1.2e6), 0.2, 30)

    def loss(g: int, budget: float) -> float:
        return 1.5 + 1.5 / (1 + math.exp(2 * (math.log(budget) - centre[g])))

    points = [RungPoint(g, b, loss(g, b)) for g in range(30) for b in budgets]
    bent = fit_curves(points, seed_noise=0.005)
    straight = fit_curves(synthetic(rng, 30)[0], seed_noise=0.005)
    assert bent.check is not None and straight.check is not None
    assert bent.check.genomes == 30
    assert bent.law_error > 3 * straight.law_error
    assert bent.check.mean_error > 0  # the power law bends the wrong way: too pessimistic
    # Its predictions one doubling on are off by far more than the noise, and the
    # intervals, widened by κ, still hold most of the truths.
    predictions = [bent.predict(g, 1.6e6) for g in range(30)]
    assert np.mean([p.mean - loss(g, 1.6e6) for g, p in enumerate(predictions)]) > 0.1
    assert np.mean([p.low <= loss(g, 1.6e6) <= p.high for g, p in enumerate(predictions)]) >= 0.8


def test_failed_trials_and_unknown_genomes_get_a_clear_answer() -> None:
    points, _, _ = synthetic(np.random.default_rng(9), 5)
    failed = [RungPoint(5, RUNGS[0], math.nan), RungPoint(1, RUNGS[-1] * 3, math.inf)]
    fit = fit_curves(points + failed)
    assert fit.ignored == 2 and fit.genomes == (0, 1, 2, 3, 4)
    assert math.isfinite(fit.predict(1, TARGET).mean)
    with pytest.raises(ExtrapolationError, match="genome 5 has no finite score"):
        fit.predict(5, TARGET)
    with pytest.raises(ExtrapolationError, match="budget -1"):
        fit.predict(1, -1)
    with pytest.raises(ExtrapolationError, match=r"rung point 2 \(genome 7\): budget 0"):
        fit_curves([*points[:2], RungPoint(7, 0, 1.0)])
    with pytest.raises(ExtrapolationError, match=r"level 1\.5"):
        fit_curves(points, level=1.5)
    with pytest.raises(ExtrapolationError, match=r"seed_noise -0\.1"):
        fit_curves(points, seed_noise=-0.1)


@pytest.mark.parametrize(
    "points",
    [
        [RungPoint(g, b, 2.0) for g in range(6) for b in RUNGS],  # all equal
        [RungPoint(0, b, 3.0 - 0.3 * i) for i, b in enumerate(RUNGS)],  # one genome
        [RungPoint(0, RUNGS[0], 2.5)],  # one point
        [RungPoint(g, RUNGS[1], 2.0 + g / 10) for g in range(4)],  # one budget for all
        [RungPoint(g, b, 2.0 + i / 10) for g in range(4) for i, b in enumerate(RUNGS)],  # rising
    ],
    ids=["all-equal", "one-genome", "one-point", "one-budget", "rising"],
)
def test_degenerate_runs_give_finite_predictions(points: list[RungPoint]) -> None:
    fit = fit_curves(points)
    if fit.check is not None:  # every genome's check predicts the same: no τ to tell
        assert fit.check.tau is None or math.isfinite(fit.check.tau)
    for g in fit.genomes:
        p = fit.predict(g, TARGET)
        assert all(math.isfinite(v) for v in (p.mean, p.low, p.high)) and p.low < p.high
        # More training never predicts a worse score, whatever the points do.
        assert p.mean <= fit.predict(g, RUNGS[0] / 2).mean + 1e-9


def test_equal_scores_predict_the_same_score() -> None:
    fit = fit_curves([RungPoint(g, b, 2.0) for g in range(6) for b in RUNGS])
    assert fit.predict(0, TARGET).mean == pytest.approx(2.0, abs=0.01)


def test_an_empty_run_fits_and_predicts_nothing() -> None:
    fit = fit_curves([RungPoint(0, RUNGS[0], math.nan)])
    assert fit.genomes == () and fit.check is None
    with pytest.raises(ExtrapolationError, match="genome 0"):
        fit.predict(0, TARGET)


@pytest.mark.parametrize("single_seeds", [1, 2])
def test_the_schur_solver_finds_scipys_optimum(single_seeds: int) -> None:
    """The hand-written Levenberg–Marquardt over the arrow-shaped problem reaches the
    point scipy's dense least_squares reaches on the same residuals, with the genomes seen
    at one budget (once, or twice: two seeds) left out of its iterations and set after."""
    points, _, _ = synthetic(np.random.default_rng(10), 8, rungs_seen=[1, 2, 3, 3, 2, 3, 3, 1])
    singles = [p for p in points if p.genome_id in (0, 7)]
    points += [RungPoint(p.genome_id, p.budget, p.loss + 0.01) for p in singles][: single_seeds - 1]
    data, _, _ = extrapolate._prepare(points)
    problem = extrapolate._Problem(data, noise=0.005, spread=0.5)
    shared, genome = extrapolate._start(data, 0.005)
    solved_shared, solved_genome = problem.solve(shared, genome)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return problem.residuals(theta[:2], theta[2:].reshape(2, -1).T)

    start = np.concatenate([shared, genome.T.ravel()])
    reference = optimize.least_squares(residuals, start, xtol=1e-12, ftol=1e-12).x
    assert np.allclose(solved_shared, reference[:2], atol=1e-4)
    assert np.allclose(solved_genome.T.ravel(), reference[2:], atol=1e-4)


def test_many_predictions_at_once_are_each_ones_and_their_sd_gives_the_interval() -> None:
    points, _, _ = synthetic(np.random.default_rng(6), 30, rungs_seen=[1, 2, 3] * 10)
    fit = fit_curves(points)
    ids = [29, 0, 7, 3]
    many = fit.predict_many(ids, TARGET)
    assert many == [fit.predict(g, TARGET) for g in ids]
    for p in many:
        # Without the seed noise the law is still uncertain; with it, the stated interval.
        assert p.sd > 0
        assert interval(p.mean, p.sd, fit.noise, fit.level) == pytest.approx((p.low, p.high))
    # Another figure of the seed noise widens or narrows the same interval.
    wide = interval(many[0].mean, many[0].sd, 10 * fit.noise, fit.level)
    assert wide[0] < many[0].low and wide[1] > many[0].high
    # A genome measured at the budget is its score, uncertain by the seed noise only.
    (measured,) = fit.predict_many([2], RUNGS[-1])  # genome 2 was seen at all three
    assert measured.measured and measured.sd == 0.0
    with pytest.raises(ExtrapolationError, match="genome 99 has no finite score"):
        fit.predict_many([0, 99], TARGET)
