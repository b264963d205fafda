"""Each genome's score at a budget beyond the top rung, predicted from its rung scores.

Every rung score is the end of a complete warmup–stable–decay run of that budget
(docs/concepts/rungs.md), so a genome's rung scores are samples of
its final loss as a function of its training budget D: the curve scaling laws model. One
law is fitted to all of a run's curves at once, so that a genome with two rung scores
(or one) borrows what the others show:

    L_g(D) = E_g + A_g · D^(−α),  written as  m_g + s_g · ((D / D_top)^(−α) − 1) / α

with α shared; D_top is the largest budget in the data, m_g the genome's loss there and
s_g its drop per e-fold of budget there (as α → 0 the law is log-linear, with no pole).
Priors: log α ~ N(log 0.3, 0.5); log s_g ~ N(μ, τ²), μ fitted with the rest and τ by
empirical Bayes. The fit is the maximum a posteriori point; the uncertainty is Laplace's.

A prediction's interval holds three parts: the fit's uncertainty, the seed noise (the
score measured at the target is one seed's: `evo validate` measures its spread; without
it, it is estimated from the residuals, else assumed), and the law's own error. The last
is measured on the run itself: the genomes seen at three budgets or more are fitted again
with their highest score hidden, and how far the law misses it, beyond what the first
two parts explain, is the share κ of a predicted drop the law gets wrong (`Check`).

A genome scored at the budget asked for is not predicted: its prediction is its measured
score (the mean, if several), with the seed noise as its interval. So with the target
equal to the top rung, ranking by prediction is ranking by top-rung score.

The fit is a pure function of its input (the points are sorted first; nothing is
random), so a replayed run gets the same fits. docs/extrapolation.md says how far to
trust it; `bench/extrapolation_table.py` measures it and its speed. A caller deciding
often should fit when a new result arrives and keep the `CurveFit` in between.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evo.schedule.interval import interval
from llm.errors import UserError

ALPHA_PRIOR = (0.3, 0.5)  # the median of α and the standard deviation of log α
SLOPE_SPREAD_PRIOR = 1.0  # τ before the data speak: slopes differ by a factor e
LAW_ERROR_PRIOR = 0.5  # κ before the run's own check speaks: half the predicted drop
PRIOR_WEIGHT = 2.0  # how many genomes' evidence the prior on τ counts as
LAW_ERROR_WEIGHT = 1.0  # how many checked genomes' evidence the prior on κ counts as
ASSUMED_NOISE = 0.01  # seed noise as a share of the median score, before the residuals speak
ASSUMED_NOISE_DOF = 2.0  # how many residual degrees of freedom the assumed noise counts as
EM_ROUNDS = 3  # empirical-Bayes rounds (τ, and the noise when estimated); each refits
MAX_STEPS = 200  # Levenberg–Marquardt steps per fit; a few dozen suffice
CONVERGED = 1e-10  # a step that lowers the cost by less than this share ends the fit
MIN_CHECKED = 3  # genomes the law's check needs before its κ counts


Arrays = tuple[np.ndarray, ...]


class ExtrapolationError(UserError):
    """A rung result that cannot be fitted, or a prediction that cannot be made."""


@dataclass(frozen=True)
class RungPoint:
    """One score: a genome's final loss (lower is better) after a complete run of
    `budget` (tokens or steps; one unit for the whole fit)."""

    genome_id: int
    budget: float
    loss: float


@dataclass(frozen=True)
class Prediction:
    """A genome's score at a budget: the mean and the interval at the fit's level."""

    mean: float
    low: float
    high: float
    measured: bool  # the genome was scored at this budget: `mean` is that score
    # The standard deviation of the law's value, the fit's and the law's own error
    # together, without the seed noise (0 for a measured score): with another figure of
    # the seed noise, `interval(mean, sd, noise, level)` is the interval.
    sd: float = 0.0


@dataclass(frozen=True)
class Check:
    """The law tried on the run itself: each genome seen at three budgets or more,
    predicted at its highest budget from its others."""

    genomes: int
    law_error: float  # κ measured: the share of a predicted drop the law got wrong
    mean_error: float  # predicted minus measured, on average (> 0: too pessimistic)
    tau: float | None  # Kendall τ of predicted against measured, at the top budget
    tau_naive: float | None  # the same for the score one budget below (None: all tied)


@dataclass(frozen=True)
class _Data:
    genomes: tuple[int, ...]  # sorted
    index: np.ndarray  # each point's genome, as a position in `genomes`
    x: np.ndarray  # log(budget / top budget)
    loss: np.ndarray
    top_budget: float

    def budgets_seen(self) -> np.ndarray:
        """How many distinct budgets each genome was scored at."""
        first = np.ones(len(self.x), dtype=bool)  # the first point of a (genome, budget)
        first[1:] = (self.index[1:] != self.index[:-1]) | (self.x[1:] != self.x[:-1])
        return np.bincount(self.index[first], minlength=len(self.genomes))

    def subset(self, keep: np.ndarray) -> _Data:
        """The same genomes, with only the points where `keep` holds."""
        return _Data(self.genomes, self.index[keep], self.x[keep], self.loss[keep], self.top_budget)

    def of_genomes(self, chosen: np.ndarray) -> _Data:
        """Only the genomes where `chosen` (one flag per genome) holds, and their points."""
        keep = chosen[self.index]
        position = np.cumsum(chosen) - 1
        genomes = tuple(g for g, c in zip(self.genomes, chosen, strict=True) if c)
        return _Data(
            genomes, position[self.index[keep]], self.x[keep], self.loss[keep], self.top_budget
        )


def _curve(x: np.ndarray, log_alpha: float, level: np.ndarray, log_slope: np.ndarray) -> Arrays:
    """The law at x, and its derivatives by log α, by m and by log s."""
    alpha = math.exp(log_alpha)
    slope = np.exp(log_slope)
    ax = alpha * x
    # shape = (e^(−αx) − 1) / α and its derivative by α; by series where αx ≈ 0.
    decay = np.expm1(-ax)
    shape = decay / alpha
    by_alpha = (-decay - ax * (decay + 1)) / alpha**2
    small = np.abs(ax) < 1e-4
    if small.any():
        xs = x[small]
        shape[small] = -xs + alpha * xs**2 / 2
        by_alpha[small] = xs**2 / 2 - alpha * xs**3 / 3
    return level + slope * shape, slope * by_alpha * alpha, np.ones_like(x), slope * shape


@dataclass
class _Problem:
    """The penalized least-squares problem. Parameters: shared (log α, μ), then each
    genome's (m, log s). Every residual depends on the shared parameters and on at most
    one genome's, so the Gauss–Newton Hessian is an arrow (a 2 × 2 corner and 2 × 2 blocks
    down the diagonal) and each Levenberg–Marquardt step is solved through its Schur
    complement in O(genomes); scipy's least_squares factors it densely, which took
    0.09–2.2 s per solve at 100 genomes here, against about 1 ms."""

    data: _Data
    noise: float
    spread: float  # τ

    def residuals(self, shared: np.ndarray, genome: np.ndarray) -> np.ndarray:
        """Every residual: the scores' (over the noise), the slopes' prior's, α's prior's."""
        error, _, _, deviation, alpha = self._parts(shared, genome)
        return np.concatenate([error / self.noise, deviation / self.spread, [alpha]])

    def _parts(self, shared: np.ndarray, genome: np.ndarray) -> tuple[Any, ...]:
        """Each score's error and the law's derivatives there by log α and by the genome's
        log s, each genome's log s less μ, and α's prior's residual."""
        d = self.data
        mine = genome[d.index]
        value, by_alpha, _, by_slope = _curve(d.x, shared[0], mine[:, 0], mine[:, 1])
        alpha = (shared[0] - math.log(ALPHA_PRIOR[0])) / ALPHA_PRIOR[1]
        return value - d.loss, by_alpha, by_slope, genome[:, 1] - shared[1], alpha

    def normal(self, shared: np.ndarray, genome: np.ndarray) -> tuple[Arrays, float]:
        """The Gauss–Newton Hessian's blocks and the gradient, and the cost. Written out
        from the residuals' Jacobian (a score's row is (∂/∂log α, 0) by the shared
        parameters and (1, ∂/∂log s) by its genome's; a slope prior's is (0, −1/τ) and
        (0, 1/τ)), so that each block is a few sums per genome."""
        d, k = self.data, len(self.data.genomes)
        error, by_alpha, by_slope, deviation, alpha = self._parts(shared, genome)
        w, t = 1 / self.noise**2, 1 / self.spread**2

        def per_genome(values: np.ndarray) -> np.ndarray:
            return np.bincount(d.index, values, minlength=k)

        count, slope_sum = per_genome(np.ones_like(error)), per_genome(by_slope)
        h_gg = np.empty((k, 2, 2))
        h_gg[:, 0, 0], h_gg[:, 0, 1] = w * count, w * slope_sum
        h_gg[:, 1, 0], h_gg[:, 1, 1] = w * slope_sum, w * per_genome(by_slope**2) + t
        h_sg = np.zeros((k, 2, 2))
        h_sg[:, 0, 0], h_sg[:, 0, 1] = w * per_genome(by_alpha), w * per_genome(by_alpha * by_slope)
        h_sg[:, 1, 1] = -t
        g_g = np.stack([w * per_genome(error), w * per_genome(by_slope * error) + t * deviation], 1)
        h_ss = np.diag([w * float(by_alpha @ by_alpha) + 1 / ALPHA_PRIOR[1] ** 2, k * t])
        g_s = np.array([w * float(by_alpha @ error) + alpha / ALPHA_PRIOR[1], -t * deviation.sum()])
        cost = 0.5 * (w * float(error @ error) + t * float(deviation @ deviation) + alpha**2)
        return (h_ss, h_sg, h_gg, g_s, g_g), cost

    def solve(self, shared: np.ndarray, genome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The MAP parameters from (shared, genome).

        A genome scored at one budget only is left out of the iterations and set after
        them: for any shared parameters its own two fit its scores as well as they can be
        (its level through their mean) with its slope at the prior's mean, so it moves
        neither the optimum nor, in Gauss–Newton's Hessian, the shared parameters'
        curvature. In a search most genomes stop at the lowest rung: leaving them out
        makes a fit of a thousand genomes about twice as fast, at the same optimum."""
        single = self.data.budgets_seen() == 1
        if not single.any() or single.all():
            return self._iterate(shared, genome)
        several = _Problem(self.data.of_genomes(~single), self.noise, self.spread)
        shared, fitted = several._iterate(shared, genome[~single])
        genome = genome.copy()
        genome[~single] = fitted
        d = self.data
        alone = single[d.index]
        count = np.bincount(d.index[alone], minlength=len(d.genomes))[single]
        mean = np.bincount(d.index[alone], d.loss[alone], minlength=len(d.genomes))[single] / count
        x = np.zeros(len(d.genomes))
        x[d.index[alone]] = d.x[alone]
        drop = _curve(x[single], shared[0], np.zeros(len(count)), np.full(len(count), shared[1]))[0]
        genome[single] = np.stack([mean - drop, np.full(len(count), shared[1])], 1)
        return shared, genome

    def _iterate(self, shared: np.ndarray, genome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Levenberg–Marquardt from (shared, genome), with Nielsen's damping rule (a valley
        along α → 0, where curves are nearly log-linear, makes the plain ×10 / ÷10 rule
        zig-zag for hundreds of steps)."""
        blocks, cost = self.normal(shared, genome)
        damping, growth = 1e-3, 2.0
        for _ in range(MAX_STEPS):
            h_ss, h_sg, h_gg, g_s, g_g = blocks
            corner, cross_inv, own_inv = _schur(h_ss, h_sg, h_gg, damping)
            d_shared = np.linalg.lstsq(
                corner, -g_s + np.tensordot(cross_inv, g_g, ([0, 2], [0, 1]))
            )[0]
            d_genome = (own_inv @ (-g_g - d_shared @ h_sg)[:, :, None])[:, :, 0]
            scaled = d_shared @ (np.diag(h_ss) * d_shared) + np.sum(
                d_genome * np.diagonal(h_gg, axis1=1, axis2=2) * d_genome
            )
            expected = 0.5 * (damping * scaled - d_shared @ g_s - np.sum(d_genome * g_g))
            with np.errstate(all="ignore"):
                trial = self.normal(shared + d_shared, genome + d_genome)
            gain = cost - trial[1]
            if math.isfinite(trial[1]) and expected > 0 and gain > 0:
                shared, genome = shared + d_shared, genome + d_genome
                blocks, cost = trial
                damping *= max(1 / 3, 1 - (2 * gain / expected - 1) ** 3)
                growth = 2.0
                if gain <= CONVERGED * cost + 1e-12:
                    break
            else:
                damping, growth = damping * growth, growth * 2
                if damping > 1e12:
                    break
        return shared, genome

    def covariance(self, shared: np.ndarray, genome: np.ndarray) -> _Covariance:
        """Laplace's posterior covariance at (shared, genome)."""
        (h_ss, h_sg, h_gg, _, _), _ = self.normal(shared, genome)
        corner, cross_inv, own_inv = _schur(h_ss, h_sg, h_gg, 0.0)
        shared_cov = np.linalg.pinv(corner)
        cross = -np.einsum("st,kth->ksh", shared_cov, cross_inv)
        own = own_inv + np.einsum("ksg,st,kth->kgh", cross_inv, shared_cov, cross_inv)
        return _Covariance(shared_cov, cross, own)


@dataclass(frozen=True)
class _Covariance:
    """The posterior covariance in blocks: shared × shared (2 × 2), each genome's shared ×
    own (K × 2 × 2) and own × own (K × 2 × 2)."""

    shared: np.ndarray
    cross: np.ndarray
    own: np.ndarray

    def variance(self, g: np.ndarray, by_shared: np.ndarray, by_genome: np.ndarray) -> np.ndarray:
        """The variance of values whose gradients are (by_shared, by_genome), each by the
        shared parameters and genome g's."""
        return (
            np.einsum("ns,st,nt->n", by_shared, self.shared, by_shared)
            + 2 * np.einsum("ns,nsg,ng->n", by_shared, self.cross[g], by_genome)
            + np.einsum("ng,ngh,nh->n", by_genome, self.own[g], by_genome)
        )


def _inverse_2x2(a: np.ndarray) -> np.ndarray:
    """The inverses of K 2 × 2 matrices (K × 2 × 2), by their adjugates: several times
    faster than np.linalg.inv's batched LU at this size."""
    inverse = np.empty_like(a)
    inverse[:, 0, 0], inverse[:, 1, 1] = a[:, 1, 1], a[:, 0, 0]
    inverse[:, 0, 1], inverse[:, 1, 0] = -a[:, 0, 1], -a[:, 1, 0]
    inverse /= (a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0])[:, None, None]
    return inverse


def _schur(h_ss: np.ndarray, h_sg: np.ndarray, h_gg: np.ndarray, damping: float) -> Arrays:
    """The Schur complement of the genome blocks in the damped Hessian, H_sg·B⁻¹ and B⁻¹
    per genome."""
    own_inv = _inverse_2x2(h_gg + damping * (h_gg * np.eye(2)) + 1e-12 * np.eye(2))
    cross_inv = h_sg @ own_inv
    # Σ_k cross_inv[k] · h_sg[k]ᵀ as one product of 2 × 2K matrices
    k = len(h_sg)
    left = cross_inv.transpose(1, 0, 2).reshape(2, 2 * k)
    right = h_sg.transpose(1, 0, 2).reshape(2, 2 * k)
    corner = h_ss + damping * np.diag(np.diag(h_ss)) - left @ right.T
    return corner, cross_inv, own_inv


@dataclass(frozen=True)
class _Fit:
    """A solved problem: parameters, covariance, and the law at any point of a genome."""

    shared: np.ndarray
    genome: np.ndarray
    cov: _Covariance

    def at(self, g: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The law's value for genomes g at x, and the fit's variance of it."""
        value, by_alpha, by_level, by_slope = _curve(
            x, self.shared[0], self.genome[g, 0], self.genome[g, 1]
        )
        by_shared = np.stack([by_alpha, np.zeros_like(x)], 1)
        by_genome = np.stack([by_level, by_slope], 1)
        return value, self.cov.variance(g, by_shared, by_genome)


@dataclass(frozen=True)
class CurveFit:
    """The law fitted to a run's genomes; `predict` and `rank` read it."""

    genomes: tuple[int, ...]
    top_budget: float
    alpha: float
    noise: float  # the seed-to-seed standard deviation of one score
    noise_source: str  # "given", "residuals" or "assumed"
    law_error: float  # κ: the share of a predicted drop the law may get wrong (1 sd)
    check: Check | None  # the law tried on the run itself; None with too few genomes
    level: float  # the intervals' coverage, e.g. 0.8
    ignored: int  # points left out: a non-finite loss (a failed trial)
    _fit: _Fit | None = field(repr=False)
    _data: _Data = field(repr=False)
    _measured: Mapping[tuple[int, float], float] = field(repr=False)

    @property
    def extrapolates(self) -> bool:
        """Whether some genome was scored at two budgets or more. Until one is, nothing in
        the data says how fast scores fall with the budget: the law's prediction at a budget
        no genome was scored at is its priors' guess, with an interval of ±10⁵."""
        return bool((self._data.budgets_seen() >= 2).any())

    def predict(self, genome_id: int, budget: float) -> Prediction:
        """The genome's score after a complete run of `budget`: its measured score when it
        has one there, else the law's."""
        return self.predict_many([genome_id], budget)[0]

    def predict_many(self, genome_ids: Sequence[int], budget: float) -> list[Prediction]:
        """`predict` for each of `genome_ids`, the law evaluated for all of them at once."""
        keys = [(g, float(budget)) for g in genome_ids]
        measured = [self._measured.get(key) for key in keys]
        predicted = [g for g, m in zip(genome_ids, measured, strict=True) if m is None]
        law = iter(self._law(predicted, budget) if predicted else [])
        return [
            Prediction(m, *interval(m, 0.0, self.noise, self.level), True)
            if m is not None
            else next(law)
            for m in measured
        ]

    def _law(self, genome_ids: Sequence[int], budget: float) -> list[Prediction]:
        """The law's predictions at `budget` (no genome's measured score)."""
        if not (math.isfinite(budget) and budget > 0):
            raise ExtrapolationError(f"budget {budget}: must be a positive number")
        fit, g = self._located(genome_ids)
        x = math.log(budget / self.top_budget)
        # Each genome's measured budget nearest to x: the law's error grows with the
        # distance from it.
        d = self._data
        order = np.lexsort((np.abs(d.x - x), d.index))
        first = np.ones(len(order), dtype=bool)
        first[1:] = d.index[order][1:] != d.index[order][:-1]
        nearest = np.empty(len(d.genomes))
        nearest[d.index[order][first]] = d.x[order][first]
        both = np.concatenate([g, g])
        (values, variances) = fit.at(both, np.concatenate([np.full(len(g), x), nearest[g]]))
        mean, anchor, variance = values[: len(g)], values[len(g) :], variances[: len(g)]
        sd = np.sqrt(np.maximum(variance, 0.0) + (self.law_error * (anchor - mean)) ** 2)
        return [
            Prediction(
                float(m), *interval(float(m), float(s), self.noise, self.level), False, float(s)
            )
            for m, s in zip(mean, sd, strict=True)
        ]

    def rank(self, genome_ids: Iterable[int], budget: float) -> list[int]:
        """`genome_ids` best first by their predicted score at `budget` (ties: the lower
        id first). Genomes all scored at `budget` keep the order of their scores."""
        return sorted(sorted(set(genome_ids)), key=lambda g: self.predict(g, budget).mean)

    def _located(self, genome_ids: Sequence[int]) -> tuple[_Fit, np.ndarray]:
        """The fit and the genomes' positions in it."""
        known = np.asarray(self.genomes, dtype=np.int64)
        wanted = np.asarray(genome_ids, dtype=np.int64)
        position = np.searchsorted(known, wanted)
        found = position < len(known)
        found[found] = known[position[found]] == wanted[found]
        if self._fit is None or not found.all():
            missing = int(wanted[~found][0]) if len(wanted) else None
            raise ExtrapolationError(f"genome {missing} has no finite score to extrapolate from")
        return self._fit, position

    def parameters(self, genome_id: int) -> tuple[float, float]:
        """The genome's E and A in L = E + A·D^(−α) (D in the points' unit)."""
        fit, (g,) = self._located([genome_id])
        level, log_slope = fit.genome[g]
        slope = math.exp(log_slope)
        return level - slope / self.alpha, slope * self.top_budget**self.alpha / self.alpha


def _prepare(points: Iterable[RungPoint]) -> tuple[_Data, int, dict[tuple[int, float], float]]:
    """The finite points, sorted (so the fit does not depend on their order), the number
    left out, and the mean measured score per (genome, budget)."""
    kept: list[RungPoint] = []
    ignored = 0
    for number, point in enumerate(points):
        if not (math.isfinite(point.budget) and point.budget > 0):
            raise ExtrapolationError(
                f"rung point {number} (genome {point.genome_id}): budget {point.budget} "
                "must be a positive number"
            )
        if math.isfinite(point.loss):
            kept.append(point)
        else:
            ignored += 1
    kept.sort(key=lambda p: (p.genome_id, p.budget, p.loss))
    genomes = tuple(sorted({p.genome_id for p in kept}))
    top = max((p.budget for p in kept), default=1.0)
    data = _Data(
        genomes=genomes,
        index=np.searchsorted(genomes, [p.genome_id for p in kept]).astype(int),
        x=np.log(np.array([p.budget for p in kept], dtype=float) / top),
        loss=np.array([p.loss for p in kept], dtype=float),
        top_budget=top,
    )
    groups: dict[tuple[int, float], list[float]] = {}
    for p in kept:
        groups.setdefault((p.genome_id, float(p.budget)), []).append(p.loss)
    return data, ignored, {key: sum(v) / len(v) for key, v in groups.items()}


def _start(data: _Data, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Each genome's level at its highest budget's score, every slope at a guess."""
    k = len(data.genomes)
    highest = np.full(k, -np.inf)
    np.maximum.at(highest, data.index, data.x)
    level = np.zeros(k)
    at_highest = data.x == highest[data.index]
    level[data.index[at_highest]] = data.loss[at_highest]
    log_slope = math.log(max(float(np.std(data.loss)), noise))
    return np.array([math.log(ALPHA_PRIOR[0]), log_slope]), np.stack(
        [level, np.full(k, log_slope)], 1
    )


def _refine(problem: _Problem, fit: _Fit, assumed_noise: float | None) -> None:
    """One empirical-Bayes round: τ from the genomes' log slopes and their posterior
    variances (an EM step, the prior counted as PRIOR_WEIGHT genomes); with
    `assumed_noise`, the noise too, from the residuals over their degrees of freedom (n
    minus the hat matrix's trace), the assumed noise counted as ASSUMED_NOISE_DOF of them.
    """
    cov, k = fit.cov, len(problem.data.genomes)
    deviation = fit.genome[:, 1] - fit.shared[1]
    variance = cov.own[:, 1, 1] - 2 * cov.cross[:, 1, 1] + cov.shared[1, 1]
    problem.spread = math.sqrt(
        (PRIOR_WEIGHT * SLOPE_SPREAD_PRIOR**2 + float(np.sum(deviation**2 + variance)))
        / (PRIOR_WEIGHT + k)
    )
    if assumed_noise is None:
        return
    d = problem.data
    value, variance = fit.at(d.index, d.x)
    dof = max(len(d.x) - float(np.sum(variance)) / problem.noise**2, 0.0)
    rss = float(np.sum((value - d.loss) ** 2))
    problem.noise = math.sqrt(
        (ASSUMED_NOISE_DOF * assumed_noise**2 + rss) / (ASSUMED_NOISE_DOF + dof)
    )


def _check(problem: _Problem, fit: _Fit) -> Check | None:
    """Hide the highest score of every genome seen at three budgets or more, refit (τ and
    the noise kept) and compare: κ² is the squared error beyond the fit's and the noise's
    variance, over the squared predicted drops from the nearest score left. (Genomes seen
    at two budgets would test only the prior on slopes, not the law's shape.)"""
    d = problem.data
    k = len(d.genomes)
    checked = np.flatnonzero(d.budgets_seen() >= 3)
    if len(checked) < MIN_CHECKED:
        return None
    highest = np.full(k, -np.inf)
    np.maximum.at(highest, d.index, d.x)
    hidden = np.isin(d.index, checked) & (d.x == highest[d.index])
    below = np.full(k, -np.inf)
    np.maximum.at(below, d.index[~hidden], d.x[~hidden])
    held = _Problem(d.subset(~hidden), problem.noise, problem.spread)
    shared, genome = held.solve(fit.shared, fit.genome)
    refit = _Fit(shared, genome, held.covariance(shared, genome))
    g, x = d.index[hidden], d.x[hidden]
    predicted, variance = refit.at(g, x)
    anchor, _ = refit.at(g, below[g])
    error = predicted - d.loss[hidden]
    excess = float(np.sum(error**2 - variance - problem.noise**2))
    drops = float(np.sum((anchor - predicted) ** 2))
    law_error = math.sqrt(max(excess, 0.0) / drops) if drops > 0 else 0.0
    top = x == 0.0
    tau = tau_naive = None
    if np.count_nonzero(top) >= MIN_CHECKED:
        truth = d.loss[hidden][top]
        naive = np.array([d.loss[(d.index == i) & (d.x == below[i])].mean() for i in g[top]])
        tau, tau_naive = _kendall(predicted[top], truth), _kendall(naive, truth)
    return Check(int(hidden.sum()), law_error, float(np.mean(error)), tau, tau_naive)


def _kendall(a: np.ndarray, b: np.ndarray) -> float | None:
    """Kendall's τ, None where it is undefined (all of one side tied)."""
    from scipy import stats  # here: a reader of stored predictions (`evo status`) needs none

    tau = float(stats.kendalltau(a, b).statistic)
    return tau if math.isfinite(tau) else None


def fit_curves(
    points: Sequence[RungPoint], *, seed_noise: float | None = None, level: float = 0.8
) -> CurveFit:
    """Fit the law to a run's rung scores (non-finite losses are left out: failed trials).

    `seed_noise`: the measured seed-to-seed standard deviation of one score, in the loss's
    unit; None to estimate it. `level`: the intervals' coverage."""
    if not 0 < level < 1:
        raise ExtrapolationError(f"level {level}: must be between 0 and 1")
    if seed_noise is not None and not (math.isfinite(seed_noise) and seed_noise >= 0):
        raise ExtrapolationError(f"seed_noise {seed_noise}: must be a number ≥ 0")
    data, ignored, measured = _prepare(points)
    scale = float(np.median(np.abs(data.loss))) if len(data.loss) else 1.0
    assumed = max(ASSUMED_NOISE * scale, 1e-6)
    noise = max(seed_noise if seed_noise is not None else assumed, 1e-6 * max(scale, 1.0))
    problem = _Problem(data, noise, SLOPE_SPREAD_PRIOR)
    # With two points per genome or fewer, a curve passes through every point: the
    # residuals say nothing of the noise (only of the prior on slopes, with which the
    # noise would be confounded), so it stays assumed.
    learnable = len(data.x) - np.minimum(data.budgets_seen(), 2).sum() - 1 >= 1
    estimate = assumed if seed_noise is None and learnable else None
    fit, check = None, None
    if data.genomes:
        shared, genome = _start(data, noise)
        for _ in range(EM_ROUNDS):
            shared, genome = problem.solve(shared, genome)
            fit = _Fit(shared, genome, problem.covariance(shared, genome))
            _refine(problem, fit, estimate)
        shared, genome = problem.solve(shared, genome)
        fit = _Fit(shared, genome, problem.covariance(shared, genome))
        check = _check(problem, fit)
    source = "given" if seed_noise is not None else "residuals" if estimate else "assumed"
    checked = check.genomes if check is not None else 0
    law_error = math.sqrt(
        (LAW_ERROR_WEIGHT * LAW_ERROR_PRIOR**2 + checked * (check.law_error if check else 0.0) ** 2)
        / (LAW_ERROR_WEIGHT + checked)
    )
    return CurveFit(
        genomes=data.genomes,
        top_budget=data.top_budget,
        alpha=math.exp(fit.shared[0]) if fit is not None else ALPHA_PRIOR[0],
        noise=seed_noise if seed_noise is not None else problem.noise,
        noise_source=source,
        law_error=law_error,
        check=check,
        level=level,
        ignored=ignored,
        _fit=fit,
        _data=data,
        _measured=measured,
    )
