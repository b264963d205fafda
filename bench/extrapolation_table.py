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
- `python-code, 3 rungs → 4M (9×)`: `bench/extrapolation.py`'s search, every rung score it
  recorded, judged on the seven genomes it validated at 4M tokens (two seeds each): the
  union of the top 6 by prediction and the top 6 by the top-rung score. Then the same
  with the four genomes `--spread 4` adds from further down the top rung's ranking
  (eleven genomes).
- `12 sampled genomes, 3 rungs → 4M (9×)` and `…, 2 rungs → 4M (18×)`: twelve genomes of
  tiny.yaml's space (configs/tiny.yaml's and a Latin hypercube of eleven, so they differ
  by far more than the seed noise), each trained on python-code to 74k, 222k, 444k and
  4M tokens (`bench/data/far_curves.json`), seen at the first three budgets or two.

Last, the flip the far target's search missed: configs/tiny.yaml's genome, which that
search stopped at 222k tokens, predicted at 4M from the search's fit, beside what it
scored there (its rung scores in far_curves.json are the search's, to the bit: the same
genome and trial seed) and beside the search's pick.

For each: Kendall τ and Spearman ρ between predicted and measured (the naive rule's
beside), the mean absolute error and mean error (bias) of the predicted score, the share
of measured scores inside the 80% intervals, their mean width, κ (the share of a
predicted drop the law may get wrong), what the fit's own check said (predicting each
genome's highest score from its others: its bias, and its τ beside the naive rule's
there), and the CPU time of one fit. The seed noise is given (`noise given`: the
table's pooled seed-to-seed standard deviation at the held-out budget, as `evo validate`
would measure it; 0.022 for the README's genomes, its five-seed figure on python-docs)
or not (estimated from the residuals where a genome has three budgets, else assumed).
Last, the wall and CPU time of one fit of 100 synthetic genomes × 3 rungs (medians of 20).

    python bench/extrapolation_table.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from evo.metrics import TrialStatus
from evo.schedule.extrapolate import Check, RungPoint, fit_curves

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
# `bench/extrapolation.py`'s run: tiny.yaml's space on python-code, every rung score of
# its search (74k, 222k and 444k tokens) and the validated genomes' scores at 4M tokens,
# two seeds each (bench/data/README.md).
FAR_TARGET = "bench/data/far_target.csv"
# `bench/rung_fidelity.py --schedules wsd --genomes 12 --set 'search.rungs=[74000,222000,
# 444000]' --set search.target.max_tokens=4000000 --out …` (bench/data/README.md).
FAR_CURVES = "bench/data/far_curves.json"
FAR_BUDGETS = (74_000, 222_000, 444_000, 4_000_000)


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


def table_cases() -> list[Case]:
    frame = pd.read_parquet(TABLE)
    frame = frame[frame.status == TrialStatus.DONE.value]
    genomes = frame.groupby(["config", "seed"]).ngroup()
    frame = frame.assign(genome=genomes)
    scores = frame.pivot_table(index="genome", columns="budget", values="bits_per_byte")
    config = frame.groupby("genome").config.first()
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
        Case("table, beyond the top", [beyond], [everyone], truth, naive, top, noise),
        Case("table, held-out genomes", folds, held, truth, naive, top, noise),
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
            )
        )
    return cases


def far_target_case(kinds: tuple[str, ...] = ("target",)) -> Case:
    """The search's own fit (every rung score it recorded) judged on the genomes trained
    to the 4M-token target, 9x beyond the top rung: the shared set (rows of kind
    `target`), or with `kinds` also the genomes spread over the rest of the top rung
    (`target_spread`)."""
    frame = pd.read_csv(FAR_TARGET)
    rungs, target = frame[frame.kind == "rung"], frame[frame.kind.isin(kinds)]
    points = [
        RungPoint(int(r.genome), float(r.budget), float(r.bits_per_byte))
        for r in rungs.itertuples()
    ]
    truth = target.groupby("genome").bits_per_byte.mean().to_dict()
    top = rungs.budget.max()
    naive = rungs[rungs.budget == top].set_index("genome").bits_per_byte.to_dict()
    noise = float(np.sqrt(target.groupby("genome").bits_per_byte.var().mean()))
    held = sorted(truth)
    name = "python-code, 3 rungs → 4M (9×)"
    if len(kinds) > 1:
        name = f"python-code, 3 rungs → 4M (9×), {len(held)} genomes with the spread"
    return Case(
        name,
        [points],
        [held],
        truth,
        {g: naive[g] for g in held},
        float(target.budget.max()),
        noise,
    )


def far_curves() -> dict[int, list[float]]:
    """The twelve sampled genomes' scores at FAR_BUDGETS, by genome (0: configs/tiny.yaml's)."""
    return {row["index"]: row["wsd"]["scores"] for row in json.loads(Path(FAR_CURVES).read_text())}


def far_curves_cases(scores: dict[int, list[float]], seed_noise: float) -> list[Case]:
    """The twelve sampled genomes, seen at three budgets or two, predicted at 4M."""
    everyone = sorted(scores)
    truth = {g: scores[g][3] for g in everyone}
    cases = []
    for seen in (3, 2):
        points = [RungPoint(g, FAR_BUDGETS[r], scores[g][r]) for g in everyone for r in range(seen)]
        naive = {g: scores[g][seen - 1] for g in everyone}
        beyond = FAR_BUDGETS[3] / FAR_BUDGETS[seen - 1]
        name = f"12 sampled genomes, {seen} rungs → 4M ({beyond:.0f}×)"
        cases.append(Case(name, [points], [everyone], truth, naive, FAR_BUDGETS[3], seed_noise))
    return cases


def the_flip(far: Case, scores: dict[int, list[float]]) -> list[str]:
    """configs/tiny.yaml's genome (the far target's genome 1, stopped at 222k; genome 0 of
    `scores`) and the search's pick, each predicted at 4M by the search's fit, and
    measured there."""
    default = scores[0]
    curves = fit_curves(far.folds[0])
    pick = curves.rank(far.held_out[0], far.target)[0]
    lines = []
    for name, genome, measured in (
        ("configs/tiny.yaml's genome (stopped at 222k)", 1, default[3]),
        (f"the search's pick (genome {pick})", pick, far.truth[pick]),
    ):
        p = curves.predict(genome, far.target)
        lines.append(
            f"{name}: predicted {p.mean:.3f} [{p.low:.3f}, {p.high:.3f}], measured {measured:.3f}"
        )
    return lines


@dataclass(frozen=True)
class Scores:
    tau: float
    rho: float
    mae: float
    bias: float
    coverage: float
    width: float
    seconds: float  # CPU seconds of one fit (the machine may be shared)
    law_error: float  # κ, averaged over the folds
    check: str  # what the fit's own check said: τ of the law and the naive rule there


def evaluate(case: Case, seed_noise: float | None) -> Scores:
    mean, low, high, seconds, kappa, checks = {}, {}, {}, [], [], []
    for points, out in zip(case.folds, case.held_out, strict=True):
        start = time.process_time()
        curves = fit_curves(points, seed_noise=seed_noise)
        seconds.append(time.process_time() - start)
        kappa.append(curves.law_error)
        checks.append(curves.check)
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
        law_error=float(np.mean(kappa)),
        check=describe(checks),
    )


def describe(checks: list[Check | None]) -> str:
    if any(c is None for c in checks):
        return "none (fewer than 3 genomes at 3+ budgets)"
    assert all(c is not None for c in checks)
    taus = [c.tau for c in checks if c is not None and c.tau is not None]
    naive = [c.tau_naive for c in checks if c is not None and c.tau_naive is not None]
    error = np.mean([c.mean_error for c in checks if c is not None])
    ranks = f", τ {np.mean(taus):.2f} (naive {np.mean(naive):.2f})" if taus else ""
    return f"bias {error:+.3f}{ranks}"


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
        law_error=float("nan"),
        check="",
    )


def fit_speed(genomes: int = 100, repeats: int = 20) -> tuple[float, float]:
    """Median wall and CPU seconds of one fit of `genomes` synthetic curves × 3 rungs,
    noise estimated."""
    rng = np.random.default_rng(0)
    floor = rng.normal(1.5, 0.1, genomes)
    scale = np.exp(rng.normal(np.log(40), 0.4, genomes))
    points = [
        RungPoint(g, b, floor[g] + scale[g] * b**-0.35 + rng.normal(0, 0.01))
        for g in range(genomes)
        for b in (1e5, 3e5, 9e5)
    ]
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fit_curves(points)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def row(name: str, s: Scores) -> str:
    def maybe(value: float, form: str) -> str:
        return "—" if np.isnan(value) else format(value, form)

    return (
        f"| {name} | {s.tau:.3f} | {s.rho:.3f} | {s.mae:.3f} | {s.bias:+.3f} "
        f"| {maybe(s.coverage, '.0%')} | {maybe(s.width, '.3f')} | {maybe(s.law_error, '.2f')} "
        f"| {s.check} | {s.seconds * 1000:.0f} |"
    )


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    ).parse_args()
    header = "| method | τ | ρ | MAE | bias | in 80% | width | κ | the fit's own check | CPU ms |"
    far, sampled = far_target_case(), far_curves()
    spread = far_target_case(("target", "target_spread"))
    cases = [*table_cases(), *readme_cases(), far, spread]
    for case in [*cases, *far_curves_cases(sampled, far.seed_noise)]:
        print(f"\n{case.name} (predict {case.target:,.0f}; seed noise {case.seed_noise:.3f})")
        print(header)
        print("| --- " * 10 + "|")
        print(row("naive: highest budget seen", naive_scores(case)))
        print(row("law, noise given", evaluate(case, case.seed_noise)))
        print(row("law, noise not given", evaluate(case, None)))
    print("\nat 4M tokens, from the far target's search:")
    print("\n".join(the_flip(far, sampled)))
    wall, cpu = fit_speed()
    print(
        f"\none fit, 100 genomes × 3 rungs (synthetic): {wall * 1000:.1f} ms wall, "
        f"{cpu * 1000:.1f} ms CPU (medians of 20)"
    )


if __name__ == "__main__":
    main()
