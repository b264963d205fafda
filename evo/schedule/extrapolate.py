"""Each genome's score at a budget beyond the top rung, predicted from its rung scores.

Every rung score is the end of a complete warmup–stable–decay run of that budget (README,
"Rungs, the schedule, and what a score means"), so a genome's rung scores are samples of
its final loss as a function of its training budget D: the curve scaling laws model. One
law is fitted to all of a run's curves at once, so that a genome with two rung scores
(or one) borrows what the others show. See docs/extrapolation.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import stats

from llm.errors import UserError

ALPHA_PRIOR = (0.3, 1.0)  # the median of α and the standard deviation of log α
PRIOR_WEIGHT = 2.0  # how many genomes' worth of evidence a prior spread τ carries
SIZE_EFFECT_SD = 1.0  # prior sd of a size effect (per standard deviation of log size)
ASSUMED_NOISE = 0.01  # seed noise as a share of the median score, when nothing tells it
MAX_STEPS = 200  # Levenberg–Marquardt steps per fit; a few dozen suffice
EM_ROUNDS = 4  # empirical-Bayes rounds (τ, and the noise when estimated); each refits


class ExtrapolationError(UserError):
    """A rung result that cannot be fitted, or a prediction that cannot be made."""


@dataclass(frozen=True)
class RungPoint:
    """One score: a genome's final loss after a complete run of `budget` (tokens or steps;
    one unit for the whole fit)."""

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


@dataclass(frozen=True)
class _Data:
    genomes: tuple[int, ...]  # sorted
    index: np.ndarray  # each point's genome, as a position in `genomes`
    x: np.ndarray  # log(budget / top budget)
    loss: np.ndarray
    top_budget: float
    size: np.ndarray | None  # standardised log size per genome


@dataclass(frozen=True)
class _Jacobian:
    """The law's values at the points and their derivatives by the shared parameters
    (n × shared) and by the point's own genome's parameters (n × 2)."""

    value: np.ndarray
    shared: np.ndarray
    genome: np.ndarray


class Law:
    """A family of curves L(x), x = log(budget / top budget): shared parameters (the
    first is log α), two per genome, and which genome parameters are pooled across
    genomes (a normal prior whose mean is a shared parameter and whose spread is fitted
    by empirical Bayes)."""

    shared: ClassVar[tuple[str, ...]]
    pooled: ClassVar[dict[int, int]]  # genome parameter → the shared parameter of its mean

    def __call__(self, x: np.ndarray, shared: np.ndarray, genome: np.ndarray) -> _Jacobian:
        raise NotImplementedError

    def start(self, data: _Data, noise: float) -> tuple[np.ndarray, np.ndarray]:
        """Shared parameters and per-genome parameters (K × 2) to start from."""
        raise NotImplementedError

    def spread_prior(self, data: _Data, noise: float) -> np.ndarray:
        """τ before the data speak, one per pooled parameter."""
        raise NotImplementedError

    def priors(self, data: _Data) -> list[tuple[int, float, float]]:
        """Fixed normal priors on shared parameters: (index, mean, sd)."""
        return [(0, math.log(ALPHA_PRIOR[0]), ALPHA_PRIOR[1])]

    def asymptote(self, shared: np.ndarray, genome: np.ndarray) -> float:
        """E: the loss the genome's curve tends to with an unlimited budget."""
        raise NotImplementedError


class PowerLaw(Law):
    """L = E + A·D^(−α), written at the top budget as m + s·((D/D_top)^(−α) − 1)/α: m is
    the genome's loss there and s its drop per e-fold of budget there; as α → 0 the law
    becomes log-linear, with no pole. Genome parameters (m, log s), log s pooled; shared
    (log α, mean log s)."""

    shared = ("log_alpha", "mean_log_slope")
    pooled: ClassVar[dict[int, int]] = {1: 1}

    def __call__(self, x: np.ndarray, shared: np.ndarray, genome: np.ndarray) -> _Jacobian:
        alpha = math.exp(shared[0])
        slope = np.exp(genome[:, 1])
        ax = alpha * x
        small = np.abs(ax) < 1e-4
        safe = np.where(small, 1.0, ax)
        # shape = (e^(−αx) − 1) / α and its derivative by α; by series where αx ≈ 0.
        shape = np.where(small, -x + alpha * x**2 / 2, np.expm1(-safe) / alpha)
        by_alpha = np.where(
            small, x**2 / 2 - alpha * x**3 / 3, (1 - np.exp(-safe) * (1 + safe)) / alpha**2
        )
        d_shared = np.zeros((len(x), len(self.shared)))
        d_shared[:, 0] = slope * by_alpha * alpha
        return _Jacobian(
            genome[:, 0] + slope * shape, d_shared, np.stack([np.ones_like(x), slope * shape], 1)
        )

    def start(self, data: _Data, noise: float) -> tuple[np.ndarray, np.ndarray]:
        k = len(data.genomes)
        level = np.empty(k)
        for g in range(k):
            mine = data.index == g
            level[g] = data.loss[mine][np.argmax(data.x[mine])]
        log_slope = math.log(max(float(np.std(data.loss)), noise))
        return np.array([math.log(ALPHA_PRIOR[0]), log_slope]), np.stack(
            [level, np.full(k, log_slope)], 1
        )

    def spread_prior(self, data: _Data, noise: float) -> np.ndarray:
        return np.array([1.0])  # slopes differ by a factor e

    def asymptote(self, shared: np.ndarray, genome: np.ndarray) -> float:
        return float(genome[0] - math.exp(genome[1]) / math.exp(shared[0]))


class ShiftedPowerLaw(Law):
    """L = E + (L0 − E)·(1 + D/D0)^(−α): from L0, the loss of an untrained model (shared),
    flat while D ≪ D0, then a power law down to E. It bends both ways, as curves whose
    drop still speeds up between the rungs do. Genome parameters (E, log(D0/D_top)), both
    pooled; shared (log α, L0, mean E, mean log D0)."""

    shared = ("log_alpha", "initial_loss", "mean_floor", "mean_log_scale")
    pooled: ClassVar[dict[int, int]] = {0: 2, 1: 3}

    def __call__(self, x: np.ndarray, shared: np.ndarray, genome: np.ndarray) -> _Jacobian:
        alpha, initial = math.exp(shared[0]), shared[1]
        floor, scale = genome[:, 0], genome[:, 1]
        u = np.logaddexp(0.0, x - scale)
        w = np.exp(-alpha * u)
        height = initial - floor
        d_shared = np.zeros((len(x), len(self.shared)))
        d_shared[:, 0] = -height * w * u * alpha
        d_shared[:, 1] = w
        by_scale = height * w * alpha * stats.logistic.cdf(x - scale)
        return _Jacobian(floor + height * w, d_shared, np.stack([1 - w, by_scale], 1))

    def start(self, data: _Data, noise: float) -> tuple[np.ndarray, np.ndarray]:
        k = len(data.genomes)
        initial = self._initial(data)
        floor = float(np.min(data.loss)) - float(np.ptp(data.loss)) - noise
        scale = float(np.min(data.x))
        shared = np.array([math.log(ALPHA_PRIOR[0]), initial, floor, scale])
        return shared, np.stack([np.full(k, floor), np.full(k, scale)], 1)

    def spread_prior(self, data: _Data, noise: float) -> np.ndarray:
        return np.array([max(float(np.ptp(data.loss)), noise), 1.0])

    def priors(self, data: _Data) -> list[tuple[int, float, float]]:
        spread = max(float(np.ptp(data.loss)), 0.1 * abs(self._initial(data)))
        return [*super().priors(data), (1, self._initial(data), spread)]

    def asymptote(self, shared: np.ndarray, genome: np.ndarray) -> float:
        return float(genome[0])

    @staticmethod
    def _initial(data: _Data) -> float:
        return float(np.max(data.loss)) + 0.1 * float(np.ptp(data.loss))


LAWS: dict[str, type[Law]] = {"power": PowerLaw, "shifted": ShiftedPowerLaw}


@dataclass
class _Problem:
    """The penalized least-squares problem. Parameters: the law's shared ones, then one
    size effect per pooled parameter (with sizes), then each genome's two. Every residual
    depends on the shared parameters and on at most one genome's, so the Gauss–Newton
    Hessian is an arrow (a small dense corner, 2 × 2 blocks down the diagonal) and each
    Levenberg–Marquardt step is solved through its Schur complement in O(genomes):
    scipy's solvers factor it densely, about 50 times slower at 100 genomes."""

    law: Law
    data: _Data
    noise: float
    spread: np.ndarray  # τ per pooled parameter

    @property
    def n_genomes(self) -> int:
        return len(self.data.genomes)

    @property
    def n_shared(self) -> int:
        return len(self.law.shared) + (len(self.law.pooled) if self.data.size is not None else 0)

    def rows(self, shared: np.ndarray, genome: np.ndarray):
        """Residuals and their Jacobian as (r, by shared, by own genome, genome index)."""
        d, law, k = self.data, self.law, self.n_genomes
        ns, base = self.n_shared, len(law.shared)
        fit = law(d.x, shared, genome[d.index])
        residuals = [(fit.value - d.loss) / self.noise]
        by_shared = [np.pad(fit.shared, ((0, 0), (0, ns - base))) / self.noise]
        by_genome, index = [fit.genome / self.noise], [d.index]
        for j, (param, mean) in enumerate(law.pooled.items()):
            tau = self.spread[j]
            rows = np.zeros((k, ns))
            rows[:, mean] = -1 / tau
            centre = shared[mean]
            if d.size is not None:
                rows[:, base + j] = -d.size / tau
                centre = centre + shared[base + j] * d.size
            residuals.append((genome[:, param] - centre) / tau)
            by_shared.append(rows)
            own = np.zeros((k, 2))
            own[:, param] = 1 / tau
            by_genome.append(own)
            index.append(np.arange(k))
        fixed = law.priors(d) + (
            [(base + j, 0.0, SIZE_EFFECT_SD) for j in range(len(law.pooled))]
            if d.size is not None
            else []
        )
        for position, mean, sd in fixed:
            row = np.zeros((1, ns))
            row[0, position] = 1 / sd
            residuals.append(np.array([(shared[position] - mean) / sd]))
            by_shared.append(row)
            by_genome.append(np.zeros((1, 2)))
            index.append(np.zeros(1, dtype=int))
        return (
            np.concatenate(residuals),
            np.concatenate(by_shared),
            np.concatenate(by_genome),
            np.concatenate(index),
        )

    def normal(self, shared: np.ndarray, genome: np.ndarray):
        """The Gauss–Newton Hessian's blocks and the gradient, and the cost."""
        r, a, b, index = self.rows(shared, genome)
        k = self.n_genomes
        h_ss, g_s = a.T @ a, a.T @ r
        h_sg = _sum_by(index, a[:, :, None] * b[:, None, :], k)
        h_gg = _sum_by(index, b[:, :, None] * b[:, None, :], k)
        g_g = _sum_by(index, b * r[:, None], k)
        return (h_ss, h_sg, h_gg, g_s, g_g), 0.5 * float(r @ r)

    def step(self, blocks, damping: float) -> tuple[np.ndarray, np.ndarray]:
        h_ss, h_sg, h_gg, g_s, g_g = blocks
        corner, cross_inv, own_inv = _schur(h_ss, h_sg, h_gg, damping)
        rhs = -g_s + np.einsum("ksh,kh->s", cross_inv, g_g)
        d_shared = np.linalg.lstsq(corner, rhs, rcond=None)[0]
        d_genome = np.einsum("kgh,kh->kg", own_inv, -g_g - np.einsum("ksg,s->kg", h_sg, d_shared))
        return d_shared, d_genome

    def solve(self, shared: np.ndarray, genome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The MAP parameters by Levenberg–Marquardt from (shared, genome), with Nielsen's
        damping rule (a valley along α → 0, where curves are nearly log-linear, makes the
        plain ×10 / ÷10 rule zig-zag for hundreds of steps)."""
        blocks, cost = self.normal(shared, genome)
        damping, growth = 1e-3, 2.0
        for _ in range(MAX_STEPS):
            d_shared, d_genome = self.step(blocks, damping)
            h_ss, _, h_gg, g_s, g_g = blocks
            scaled = d_shared @ (np.diag(h_ss) * d_shared) + np.sum(
                d_genome * np.einsum("kii->ki", h_gg) * d_genome
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
                if gain <= 1e-10 * cost + 1e-12:
                    break
            else:
                damping, growth = damping * growth, growth * 2
                if damping > 1e12:
                    break
        return shared, genome

    def covariance(self, shared: np.ndarray, genome: np.ndarray):
        """Laplace's posterior covariance, as blocks: shared × shared (S), each genome's
        shared × own (K × S × 2) and own × own (K × 2 × 2)."""
        (h_ss, h_sg, h_gg, _, _), _ = self.normal(shared, genome)
        corner, cross_inv, own_inv = _schur(h_ss, h_sg, h_gg, 0.0)
        shared_cov = np.linalg.pinv(corner)
        cross = -np.einsum("st,kth->ksh", shared_cov, cross_inv)
        own = own_inv + np.einsum("ksg,st,kth->kgh", cross_inv, shared_cov, cross_inv)
        return shared_cov, cross, own


def _sum_by(index: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """values (n × …) summed by index into k × …."""
    flat = values.reshape(len(values), -1)
    sums = np.stack([np.bincount(index, flat[:, c], minlength=k) for c in range(flat.shape[1])], 1)
    return sums.reshape((k, *values.shape[1:]))


def _schur(h_ss: np.ndarray, h_sg: np.ndarray, h_gg: np.ndarray, damping: float):
    """The Schur complement of the genome blocks in the damped Hessian, H_sg·B⁻¹ per
    genome, and B⁻¹ per genome."""
    own = h_gg + damping * (h_gg * np.eye(2)) + 1e-12 * np.eye(2)
    own_inv = np.linalg.inv(own)
    cross_inv = np.einsum("ksg,kgh->ksh", h_sg, own_inv)
    corner = h_ss + damping * np.diag(np.diag(h_ss)) - np.einsum("ksh,kth->st", cross_inv, h_sg)
    return corner, cross_inv, own_inv


@dataclass(frozen=True)
class CurveFit:
    """A fitted law for a run's genomes; `predict` and `rank` read it."""

    law: str
    genomes: tuple[int, ...]
    top_budget: float
    alpha: float
    noise: float  # the seed-to-seed standard deviation of one score
    noise_source: str  # "given", "residuals" or "assumed"
    level: float  # the intervals' coverage, e.g. 0.8
    ignored: int  # points left out: a non-finite loss (a failed trial)
    _shared: np.ndarray = field(repr=False)
    _genome: np.ndarray = field(repr=False)
    _cov: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)
    _measured: Mapping[tuple[int, float], float] = field(repr=False)

    def predict(self, genome_id: int, budget: float) -> Prediction:
        """The genome's score after a complete run of `budget`: its measured score when it
        has one there, else the law's."""
        z = float(stats.norm.ppf(0.5 + self.level / 2))
        measured = self._measured.get((genome_id, float(budget)))
        if measured is not None:
            return Prediction(measured, measured - z * self.noise, measured + z * self.noise, True)
        if genome_id not in self.genomes:
            raise ExtrapolationError(
                f"genome {genome_id} has no finite rung score to extrapolate from"
            )
        if not (math.isfinite(budget) and budget > 0):
            raise ExtrapolationError(f"budget {budget}: must be a positive number")
        g = self.genomes.index(genome_id)
        x = np.array([math.log(budget / self.top_budget)])
        fit = LAWS[self.law]()(x, self._shared, self._genome[g : g + 1])
        shared_cov, cross, own = self._cov
        by_shared, by_genome = fit.shared[0, : len(shared_cov)], fit.genome[0]
        by_shared = np.pad(by_shared, (0, len(shared_cov) - len(by_shared)))
        variance = (
            by_shared @ shared_cov @ by_shared
            + 2 * by_shared @ cross[g] @ by_genome
            + by_genome @ own[g] @ by_genome
        )
        half = z * math.sqrt(max(float(variance), 0.0) + self.noise**2)
        mean = float(fit.value[0])
        return Prediction(mean, mean - half, mean + half, False)

    def rank(self, genome_ids: Iterable[int], budget: float) -> list[int]:
        """`genome_ids` best first by their predicted score at `budget` (ties: the lower
        id first). Genomes all scored at `budget` keep the order of their scores."""
        return sorted(sorted(set(genome_ids)), key=lambda g: self.predict(g, budget).mean)

    def asymptote(self, genome_id: int) -> float:
        """E: the loss the genome's curve tends to with an unlimited budget."""
        g = self.genomes.index(genome_id)
        return LAWS[self.law]().asymptote(self._shared, self._genome[g])


def _prepare(
    points: Iterable[RungPoint], sizes: Mapping[int, float] | None
) -> tuple[_Data, int, dict[tuple[int, float], float]]:
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
    size = None
    if sizes is not None and len(genomes) > 1:
        missing = [g for g in genomes if not (sizes.get(g, 0) > 0)]
        if missing:
            raise ExtrapolationError(f"sizes: genome {missing[0]} has no positive size")
        log_size = np.log([float(sizes[g]) for g in genomes])
        size = (log_size - log_size.mean()) / (log_size.std() or 1.0)
    data = _Data(
        genomes=genomes,
        index=np.searchsorted(genomes, [p.genome_id for p in kept]).astype(int),
        x=np.log(np.array([p.budget for p in kept], dtype=float) / top),
        loss=np.array([p.loss for p in kept], dtype=float),
        top_budget=top,
        size=size,
    )
    groups: dict[tuple[int, float], list[float]] = {}
    for p in kept:
        groups.setdefault((p.genome_id, float(p.budget)), []).append(p.loss)
    return data, ignored, {key: float(np.mean(v)) for key, v in groups.items()}


def _refine(problem: _Problem, shared, genome, cov, prior_spread, estimate_noise: bool) -> bool:
    """One empirical-Bayes round: each τ from the genomes' pooled parameters and their
    posterior variances (an EM step, the prior counted as PRIOR_WEIGHT genomes), and the
    noise from the residuals over their degrees of freedom. Whether the noise could be
    estimated (at least one degree of freedom)."""
    shared_cov, cross, own = cov
    d, law, k = problem.data, problem.law, problem.n_genomes
    base = len(law.shared)
    for j, (param, mean) in enumerate(law.pooled.items()):
        # The deviation of genome parameter `param` from its centre, linear in the
        # parameters: +1 on the genome's, −1 on the mean, −z on the size effect.
        centre = np.zeros((k, len(shared_cov)))
        centre[:, mean] = 1.0
        if d.size is not None:
            centre[:, base + j] = d.size
        deviation = genome[:, param] - centre @ shared
        variance = (
            own[:, param, param]
            - 2 * np.einsum("ks,ks->k", centre, cross[:, :, param])
            + np.einsum("ks,st,kt->k", centre, shared_cov, centre)
        )
        problem.spread[j] = math.sqrt(
            (PRIOR_WEIGHT * prior_spread[j] ** 2 + float(np.sum(deviation**2 + variance)))
            / (PRIOR_WEIGHT + k)
        )
    if not estimate_noise:
        return True
    fit = law(d.x, shared, genome[d.index])
    a = np.pad(fit.shared, ((0, 0), (0, len(shared_cov) - fit.shared.shape[1])))
    b = fit.genome
    leverage = (
        np.einsum("ns,st,nt->n", a, shared_cov, a)
        + 2 * np.einsum("ns,nsg,ng->n", a, cross[d.index], b)
        + np.einsum("ng,ngh,nh->n", b, own[d.index], b)
    ) / problem.noise**2
    dof = len(d.x) - float(np.sum(leverage))
    if dof < 1:
        return False
    rss = float(np.sum((fit.value - d.loss) ** 2))
    problem.noise = max(math.sqrt(rss / dof), 1e-6 * float(np.median(np.abs(d.loss))))
    return True


def fit_curves(
    points: Sequence[RungPoint],
    *,
    sizes: Mapping[int, float] | None = None,
    seed_noise: float | None = None,
    level: float = 0.8,
    law: str = "power",
) -> CurveFit:
    """Fit `law` to a run's rung scores (non-finite losses are left out: failed trials).

    `sizes`: each genome's model size (e.g. params_non_embedding), a covariate of its
    pooled parameters. `seed_noise`: the measured seed-to-seed standard deviation of one
    score; None to estimate it. `level`: the intervals' coverage."""
    if law not in LAWS:
        raise ExtrapolationError(f"law {law!r}: one of {', '.join(LAWS)}")
    if not 0 < level < 1:
        raise ExtrapolationError(f"level {level}: must be between 0 and 1")
    if seed_noise is not None and not (math.isfinite(seed_noise) and seed_noise >= 0):
        raise ExtrapolationError(f"seed_noise {seed_noise}: must be a number ≥ 0")
    data, ignored, measured = _prepare(points, sizes)
    curve = LAWS[law]()
    scale = float(np.median(np.abs(data.loss))) if len(data.loss) else 1.0
    assumed = ASSUMED_NOISE * (scale or 1.0)
    floor = 1e-6 * (scale or 1.0)
    noise = max(seed_noise if seed_noise is not None else assumed, floor)
    source = "given" if seed_noise is not None else "assumed"
    shared, genome = curve.start(data, noise) if data.genomes else (np.zeros(0), np.zeros((0, 2)))
    if data.size is not None:
        shared = np.concatenate([shared, np.zeros(len(curve.pooled))])  # no size effect yet
    prior_spread = curve.spread_prior(data, noise) if data.genomes else np.ones(0)
    problem = _Problem(curve, data, noise, prior_spread.copy())
    cov: tuple[np.ndarray, np.ndarray, np.ndarray] = (np.zeros((0, 0)),) * 3  # type: ignore[assignment]
    if data.genomes:
        for _ in range(EM_ROUNDS):
            shared, genome = problem.solve(shared, genome)
            cov = problem.covariance(shared, genome)
            if _refine(problem, shared, genome, cov, prior_spread, seed_noise is None):
                source = "given" if seed_noise is not None else "residuals"
            else:
                problem.noise, source = max(assumed, floor), "assumed"
        shared, genome = problem.solve(shared, genome)
        cov = problem.covariance(shared, genome)
    return CurveFit(
        law=law,
        genomes=data.genomes,
        top_budget=data.top_budget,
        alpha=math.exp(shared[0]) if len(shared) else ALPHA_PRIOR[0],
        noise=seed_noise if seed_noise is not None else problem.noise,
        noise_source=source,
        level=level,
        ignored=ignored,
        _shared=shared,
        _genome=genome,
        _cov=cov,
        _measured=measured,
    )
