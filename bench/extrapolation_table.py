"""How well `evo.schedule.extrapolate` predicts a genome's score at a budget beyond the
ones it was scored at, on real rung results, beside the naive rule (rank by the highest
budget seen). A minute; nothing is trained.

Cases (each genome's scores at the lower budgets go in; its score at the held-out
budget is the truth):

- `table, beyond the top`: `bench/data/tiny_table.parquet` (25 configurations × 3 seeds,
  python-docs, rungs of 25k, 75k and 225k tokens; see bench/data/README.md). Each
  (configuration, seed) is one genome, as in a search, where a genome has one seed. All
  75 are seen at 25k and 75k; the truth is their 225k score (3× beyond).
- `table, held-out genomes`: the same, but the other configurations' genomes are seen
  at all three budgets (five folds over configurations), as in a search where some
  genomes reached the top rung: their curves teach the fit the shape of the third rung.
- `README, 3 rungs → 2M` and `README, 2 rungs → 2M`: the eight genomes of the README's
  rung table (python-docs, `bench/rung_fidelity.py --schedules wsd`, one seed each),
  seen at 75k, 225k and 675k tokens (or only the first two: 8.9× beyond); the truth is
  their score at 2M.

For each: Kendall τ and Spearman ρ between predicted and measured (the naive rule's
beside), the mean absolute error and mean error (bias) of the predicted score, the share
of measured scores inside the 80% intervals, their mean width, and the fit's time. The
seed noise is given (`noise given`: the table's pooled seed-to-seed standard deviation at
the held-out budget, as `evo validate` would measure it; 0.022 for the README's genomes,
its five-seed figure on python-docs) or estimated from the residuals. Last, the time of
one fit of 100 genomes × 3 rungs (median of 20).

    python bench/extrapolation_table.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from evo.metrics import TrialStatus
from evo.schedule.extrapolate import LAWS, CurveFit, RungPoint, fit_curves

TABLE = "bench/data/tiny_table.parquet"
TABLE_BUDGETS = (25_000, 75_000, 225_000)

# The README's rung table (Benchmarks → The search, "Eight such genomes"): bits per byte
# at 75k, 225k, 675k and 2M tokens, python-docs, wsd, one seed each.
README_BUDGETS = (75_000, 225_000, 675_000, 2_000_000)
README_SCORES = (
    (2.646, 2.034, 1.478, 1.204),
    (2.517, 1.847, 1.428, 1.205),
    (2.741, 2.313, 1.572, 1.235),
    (2.556, 1.970, 1.448, 1.236),
    (2.528, 1.895, 1.422, 1.237),
    (2.694, 2.231, 1.518, 1.245),
    (2.708, 2.055, 1.467, 1.263),
    (2.667, 2.256, 1.675, 1.294),
)
README_SEED_NOISE = 0.022


@dataclass(frozen=True)
class Case:
    """Genomes' scores: those the fit sees, per fold, and the truth to predict."""

    name: str
    folds: list[list[RungPoint]]  # each fold's points (the held-out genomes' lower rungs too)
    held_out: list[list[int]]  # each fold's genomes to predict
    truth: dict[int, float]  # at `target`
    naive: dict[int, float]  # the score at the highest budget seen
    target: float
    seed_noise: float
    sizes: dict[int, float] | None


def table_cases() -> list[Case]:
    frame = pd.read_parquet(TABLE)
    frame = frame[frame.status == TrialStatus.DONE.value]
    genomes = frame.groupby(["config", "seed"]).ngroup()
    frame = frame.assign(genome=genomes)
    scores = frame.pivot_table(index="genome", columns="budget", values="bits_per_byte")
    config = frame.groupby("genome").config.first()
    sizes = frame.groupby("genome").params.first().astype(float).to_dict()
    low, mid, top = TABLE_BUDGETS
    truth = scores[top].to_dict()
    naive = scores[mid].to_dict()
    noise = float(np.sqrt(frame[frame.budget == top].groupby("config").bits_per_byte.var().mean()))

    def points(genome: int, budgets: Sequence[int]) -> list[RungPoint]:
        return [RungPoint(genome, b, float(scores.loc[genome, b])) for b in budgets]

    everyone = list(scores.index)
    beyond = [p for g in everyone for p in points(g, (low, mid))]
    folds, held = [], []
    for fold in range(5):
        out = [g for g in everyone if config[g] % 5 == fold]
        seen = [p for g in everyone for p in points(g, (low, mid) if g in out else TABLE_BUDGETS)]
        folds.append(seen)
        held.append(out)
    return [
        Case("table, beyond the top", [beyond], [everyone], truth, naive, top, noise, sizes),
        Case("table, held-out genomes", folds, held, truth, naive, top, noise, sizes),
    ]


def readme_cases() -> list[Case]:
    everyone = list(range(len(README_SCORES)))
    truth = {g: s[3] for g, s in enumerate(README_SCORES)}
    cases = []
    for seen in (3, 2):
        points = [
            RungPoint(g, README_BUDGETS[r], README_SCORES[g][r])
            for g in everyone
            for r in range(seen)
        ]
        naive = {g: README_SCORES[g][seen - 1] for g in everyone}
        cases.append(
            Case(
                f"README, {seen} rungs → 2M",
                [points],
                [everyone],
                truth,
                naive,
                README_BUDGETS[3],
                README_SEED_NOISE,
                None,
            )
        )
    return cases


@dataclass(frozen=True)
class Scores:
    tau: float
    rho: float
    mae: float
    bias: float
    coverage: float
    width: float
    seconds: float


def evaluate(case: Case, fit: Callable[[list[RungPoint]], CurveFit]) -> Scores:
    mean, low, high, seconds = {}, {}, {}, []
    for points, out in zip(case.folds, case.held_out, strict=True):
        start = time.perf_counter()
        curves = fit(points)
        seconds.append(time.perf_counter() - start)
        for g in out:
            p = curves.predict(g, case.target)
            mean[g], low[g], high[g] = p.mean, p.low, p.high
    ids = sorted(mean)
    predicted = np.array([mean[g] for g in ids])
    truth = np.array([case.truth[g] for g in ids])
    inside = [low[g] <= case.truth[g] <= high[g] for g in ids]
    return Scores(
        tau=float(stats.kendalltau(predicted, truth).statistic),
        rho=float(stats.spearmanr(predicted, truth).statistic),
        mae=float(np.mean(np.abs(predicted - truth))),
        bias=float(np.mean(predicted - truth)),
        coverage=float(np.mean(inside)),
        width=float(np.mean([high[g] - low[g] for g in ids])),
        seconds=float(np.mean(seconds)),
    )


def naive_scores(case: Case) -> Scores:
    ids = sorted(case.naive)
    naive = np.array([case.naive[g] for g in ids])
    truth = np.array([case.truth[g] for g in ids])
    return Scores(
        tau=float(stats.kendalltau(naive, truth).statistic),
        rho=float(stats.spearmanr(naive, truth).statistic),
        mae=float(np.mean(np.abs(naive - truth))),
        bias=float(np.mean(naive - truth)),
        coverage=float("nan"),
        width=float("nan"),
        seconds=0.0,
    )


def fit_speed(law: str, genomes: int = 100, repeats: int = 20) -> float:
    """Median seconds of one fit of `genomes` synthetic curves × 3 rungs, noise estimated."""
    rng = np.random.default_rng(0)
    floor = rng.normal(1.5, 0.1, genomes)
    scale = np.exp(rng.normal(np.log(40), 0.4, genomes))
    points = [
        RungPoint(g, b, floor[g] + scale[g] * b**-0.35 + rng.normal(0, 0.01))
        for g in range(genomes)
        for b in (1e5, 3e5, 9e5)
    ]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit_curves(points, law=law)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(name: str, s: Scores) -> str:
    cover = "—" if np.isnan(s.coverage) else f"{s.coverage:.0%}"
    width = "—" if np.isnan(s.width) else f"{s.width:.3f}"
    return (
        f"| {name} | {s.tau:.3f} | {s.rho:.3f} | {s.mae:.3f} | {s.bias:+.3f} | {cover} "
        f"| {width} | {s.seconds * 1000:.0f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--laws", nargs="+", choices=list(LAWS), default=list(LAWS))
    args = p.parse_args()
    header = "| method | τ | ρ | MAE | bias | in 80% | width | fit ms |"
    for case in table_cases() + readme_cases():
        print(f"\n{case.name} (predict {case.target:,.0f}; seed noise {case.seed_noise:.3f})")
        print(header)
        print("| --- " * 8 + "|")
        print(row("naive: highest budget seen", naive_scores(case)))
        for law in args.laws:
            variants: list[tuple[str, dict]] = [
                ("noise given", {"seed_noise": case.seed_noise}),
                ("noise estimated", {}),
            ]
            if case.sizes is not None:
                variants.append(
                    ("noise given, size", {"seed_noise": case.seed_noise, "sizes": case.sizes})
                )
            for label, options in variants:
                scores = evaluate(
                    case,
                    lambda points, law=law, options=options: fit_curves(points, law=law, **options),
                )
                print(row(f"{law}, {label}", scores))
    for law in args.laws:
        print(f"\none fit, 100 genomes × 3 rungs, {law}: {fit_speed(law) * 1000:.1f} ms (median)")


if __name__ == "__main__":
    main()
