"""Forecasting a target far beyond the top rung: does the search's prediction rank the
genomes as training them to the target does, and better than the top rung's scores?

The space is search_spaces/tiny.yaml on builtin:python-code with a ladder ending at 444k
tokens and a 4M-token target (9x beyond the top rung, under one pass of the 4.4M training
tokens). `evo run` searches it with `--budget` training tokens, forecasting the target
from the rung scores (evo.schedule.forecast). Then one shared set of genomes is trained
to the target with `--seeds` seeds each by `evo validate --genome ...`: the union of the
top `--top` by predicted score and the top `--top` by measured score at the top rung,
and `--spread` more from further down the ranking (the genomes near the top of a
converged search can be closer to each other than their seeds are).
On that set, from `evo validate`'s report:

- Kendall τ between the predicted and the measured scores at the target, and the top-rung
  ranking's τ beside it (goal: τ ≥ 0.6 and above the top rung's);
- the search's pick (best predicted) against the naive pick (best at the top rung): the
  pick's measured score better than the naive pick's, or within the noise floor (the
  pooled seed-to-seed spread) of the set's best;
- the share of measured values inside the 80% intervals (goal: 60-95%), and the mean
  absolute error of the predictions.

Prints each figure with its goal, and the wall time of the search and of the
validation. About 1.5 hours on 2 cores (measured: a 17-minute search, a 65-minute
validation of 7 genomes; the validation trains up to (2 x top + spread) genomes x seeds x
4M tokens). `--quick` runs the same steps at a 72k-token target (rungs of 8k and
24k tokens, a 200k-token search, the top 3) in minutes: a check that it runs, not a
result.

    python bench/extrapolation.py
    python bench/extrapolation.py --quick
    python bench/extrapolation.py --keep /tmp/extrap    # keep (and resume) the run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evo.driver import load_run_space
from evo.storage import Storage
from evo.validate import Candidate, ValidationReport, search_ranking, validation_report

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "search_spaces" / "tiny.yaml"
NAME = "extrapolation"
LADDER = ["search.rungs=[74000, 222000, 444000]", "search.target.max_tokens=4000000"]
# Rungs too short for the initial genome's 20 warmup steps: the search starts from its
# Latin hypercube alone (repaired to fit).
QUICK_LADDER = [
    "search.rungs=[8000, 24000]",
    "search.target.max_tokens=72000",
    "search.initial=[]",
]
TAU_GOAL = 0.6
INSIDE_GOAL = (0.60, 0.95)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", type=int, help="search budget in training tokens (default 12M)")
    p.add_argument("--top", type=int, help="of each ranking (default 6, 3 with --quick)")
    p.add_argument(
        "--spread",
        type=int,
        default=4,
        help="more genomes, evenly spread over the rest of the top rung's ranking by "
        "prediction: a set of near-equal genomes is ranked by seed noise alone",
    )
    p.add_argument("--seeds", type=int, default=2, help="per genome at the target")
    p.add_argument("--seed", type=int, default=0, help="the search's")
    p.add_argument("--quick", action="store_true", help="minutes: a check that it runs")
    p.add_argument("--local", action="store_true", help="trials in this process, not on Ray")
    p.add_argument("--keep", type=Path, help="the run's folder, kept (an existing one resumes)")
    args = p.parse_args()
    args.budget = args.budget or (200_000 if args.quick else 12_000_000)
    args.top = args.top or (3 if args.quick else 6)
    return args


def evo(args: list[str], folder: Path) -> None:
    """Run an evo command in `folder`, with this checkout's evo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=folder, env=env, check=True)


def searched(args: argparse.Namespace, folder: Path, url: str) -> float:
    """Search the space (or finish an earlier search of it); the wall seconds it took."""
    ladder = QUICK_LADDER if args.quick else LADDER
    settings = [*ladder, f"search.budget.tokens={args.budget}", f"search.seed={args.seed}"]
    sets = [part for setting in settings for part in ("--set", setting)]
    local = ["--local"] if args.local else []
    started = time.perf_counter()
    with Storage(url) as storage:
        exists = storage.get_run(NAME) is not None
    command = ["resume", NAME] if exists else ["run", str(SPACE), "--name", NAME, *sets]
    evo([*command, "--storage", url, "--quiet", *local], folder)
    return time.perf_counter() - started


def shared_set(storage: Storage) -> tuple[list[Candidate], list[Candidate]]:
    """The top-rung genomes by predicted score (the search's order) and by measured score."""
    space = load_run_space(storage, NAME)
    ranking = search_ranking(storage, NAME, space)
    top_rung = max(c.rung for c in ranking)
    at_top = [c for c in ranking if c.rung == top_rung]
    sign = space.search.objectives[0].sign
    return at_top, sorted(at_top, key=lambda c: sign * c.value)


def main() -> None:
    args = parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}", flush=True)
    with contextlib.ExitStack() as stack:
        folder = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / 'evo.db'}"
        search_s = searched(args, folder, url)
        with Storage(url) as storage:
            by_prediction, by_rung = shared_set(storage)
            if by_prediction[0].predicted is None:
                sys.exit("the search made no forecast: is the target beyond the top rung?")
            chosen = {c.genome_id for c in by_prediction[: args.top] + by_rung[: args.top]}
            chosen |= spread(by_prediction, chosen, args.spread)
            print(
                f"search: {search_s / 60:.1f} min; {len(by_rung)} genomes at the top rung; "
                f"validating {len(chosen)} ({args.top} by prediction ∪ {args.top} by the top "
                f"rung ∪ {args.spread} spread over the rest) with {args.seeds} seeds at the "
                "target",
                flush=True,
            )
            started = time.perf_counter()
            genomes = [f"--genome={g}" for g in sorted(chosen)]
            local = ["--local"] if args.local else []
            seeds = ["--seeds", str(args.seeds)]
            evo(["validate", NAME, *genomes, *seeds, "--storage", url, *local], folder)
            validate_s = time.perf_counter() - started
            space = load_run_space(storage, NAME)
            report = validation_report(storage, NAME, space, space.target_budget())
        print(f"validation: {validate_s / 60:.1f} min")
        sign = space.search.objectives[0].sign
        judge(report, by_prediction[0].genome_id, by_rung[0].genome_id, sign)


def spread(ranking: list[Candidate], chosen: set[int], count: int) -> set[int]:
    """`count` genomes of `ranking` not in `chosen`, at evenly spaced places of the rest."""
    rest = [c.genome_id for c in ranking if c.genome_id not in chosen]
    if count <= 0 or not rest:
        return set()
    step = len(rest) / min(count, len(rest))
    return {rest[int(i * step)] for i in range(min(count, len(rest)))}


def judge(report: ValidationReport | None, pick: int, naive: int, sign: float) -> None:
    """Print the figures of the shared set with the goals (`sign` × value is a cost)."""
    if report is None or report.check is None:
        sys.exit("the validation made no prediction check (no forecast at its budget)")
    check = report.check
    means = {g.candidate.genome_id: g.mean for g in report.genomes}
    best = min(means.values(), key=lambda v: sign * v)
    noise = report.noise or 0.0
    tau_ok = check.kendall is not None and check.kendall >= TAU_GOAL
    above = (
        check.kendall is not None
        and check.naive_kendall is not None
        and check.kendall > check.naive_kendall
    )
    print(
        f"Kendall τ predicted vs measured: {check.kendall:.3f} (goal ≥ {TAU_GOAL}: "
        f"{'ok' if tau_ok else 'MISSED'}); top rung's τ {check.naive_kendall:.3f} "
        f"({'below' if above else 'NOT below'} the prediction's); Spearman ρ {check.spearman:.3f}"
    )
    pick_ok = sign * means[pick] <= sign * means[naive] or abs(means[pick] - best) <= noise
    print(
        f"pick: genome {pick} {report.metric} {means[pick]:.4f}; naive pick: genome {naive} "
        f"{means[naive]:.4f}; best of the set {best:.4f}; noise floor {noise:.4f} "
        f"({'ok' if pick_ok else 'MISSED'})"
    )
    low, high = INSIDE_GOAL
    inside_ok = low <= check.inside <= high
    print(
        f"inside the {check.level:.0%} intervals: {check.inside:.0%} (goal {low:.0%}-{high:.0%}: "
        f"{'ok' if inside_ok else 'MISSED'}); mean absolute error {check.mae:.4f} over "
        f"{check.genomes} genomes"
    )


if __name__ == "__main__":
    main()
