"""Search small, train big: a genome searched at width 128 or less, promoted at width 512
under μP and under the standard parametrization, side by side.

The space's search (`tiny.yaml`, with d_model limited to `--search-widths`, 64 and 128 by
default: 96's head sizes do not divide 512) runs on a local Ray instance as `evo run`
does; its pick is then promoted three times for the same tokens (`--tokens`, default the
space's target) with `evo promote`'s own code: at its searched width, and at `--width`
(heads at its head size, d_ff by its multiplier) with `--parametrization mup` (base: the
searched width, so its learning rate and init carry over) and with `standard` (the same
rate and init, unscaled). Each model is scored in bits per byte on the whole validation
split. Prints a row per model (width, parameters, steps, bits per byte, minutes), then
`ratio=<μP / standard>` at the wide width (below 1: μP's wide model is better).

    python bench/promote_wide.py          # a 15M-token search, 3 runs of 2M tokens: hours
    python bench/promote_wide.py --quick  # a 200k-token search, width 256, 72k tokens: minutes

The quick mode is a check that the comparison runs, not a result.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from target_quality import search

from evo.promote import Budget, Scaling, promote
from evo.space import load_space
from evo.storage import Storage
from llm.checkpoint import read_model_config
from llm.config import Parametrization

PARAMETRIZATIONS: tuple[Parametrization, ...] = ("mup", "standard")
# Minutes: rungs too short for the initial genome's 20 warmup steps, so the search starts
# from its Latin hypercube alone (repaired to fit).
QUICK = [
    "search.target.max_tokens=72000",
    "search.rungs=[24000, 72000]",
    "search.budget.tokens=200000",
    "search.initial=[]",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", default="search_spaces/tiny.yaml")
    p.add_argument("--search-widths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--width", type=int, help="the promoted width (default 512; 256 with --quick)")
    p.add_argument("--tokens", type=int, help="training tokens of each promotion (default: target)")
    p.add_argument("--quick", action="store_true", help="minutes: a check that it runs")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    args.width = args.width or (256 if args.quick else 512)
    return args


@dataclass(frozen=True)
class Promoted:
    label: str
    d_model: int
    params: int
    steps: int
    bits_per_byte: float
    minutes: float


def promoted(
    storage: Storage, name: str, out: Path, label: str, scaling: Scaling, budget: Budget
) -> Promoted:
    """The search's pick trained as `evo promote` does, scaled thus."""
    started = time.perf_counter()
    promote(storage, name, budget=budget, scaling=scaling, out=out)
    minutes = (time.perf_counter() - started) / 60
    metrics = storage.promotions(name)[-1].metrics
    assert metrics is not None and "bits_per_byte" in metrics, f"{label} did not finish"
    model = read_model_config(out)
    return Promoted(
        label,
        model.d_model,
        model.param_count().total,
        metrics["steps"],
        metrics["bits_per_byte"],
        minutes,
    )


def main() -> None:
    args = parse_args()
    widths = ", ".join(str(w) for w in args.search_widths)
    overrides = [
        f"genes.d_model={{choice: [{widths}]}}",
        *(QUICK if args.quick else []),
        *args.overrides,
    ]
    space = load_space(args.space, overrides)
    budget = Budget(max_tokens=args.tokens) if args.tokens else Budget()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder, name = Path(tmp), "bench-wide"
        storage, seconds = search(space, name, folder)
        runs = [("searched width", Scaling())] + [
            (f"width {args.width}, {kind}", Scaling(args.width, None, kind))
            for kind in PARAMETRIZATIONS
        ]
        print(f"search: {seconds / 60:.1f} min over widths {widths}", flush=True)
        print(f"{'model':28}{'d_model':>8}{'params':>12}{'steps':>8}{'bits/byte':>11}{'min':>7}")
        rows = []
        for i, (label, scaling) in enumerate(runs):
            rows.append(promoted(storage, name, folder / f"promoted-{i}", label, scaling, budget))
            r = rows[-1]
            cells = f"{r.d_model:8d}{r.params:12,d}{r.steps:8d}{r.bits_per_byte:11.4f}"
            print(f"{r.label:28}{cells}{r.minutes:7.1f}", flush=True)
        genome = storage.promotions(name)[-1].genome_id
        print(f"the search's pick, genome {genome}: {storage.genomes(name)[genome]}")
    _, mup, standard = rows
    print(f"{(time.perf_counter() - started) / 60:.1f} min in all")
    print(f"ratio={mup.bits_per_byte / standard.bits_per_byte:.4f}")


if __name__ == "__main__":
    main()
