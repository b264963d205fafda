"""Batch size, learning rate, shape and seed noise from the top rung to a target 9x beyond it.

Reads bench/data/horizon_sweeps.json (configs/tiny.yaml's shape on python-code, trained
to 74k, 222k, 444k and 4M tokens as a search's genome is, each budget continuing the
stable checkpoint of the one below; see bench/data/README.md for the commands) and
prints:

- the batch variants: the shape at batch 8, 16 and 32 (the rate as given, or scaled by
  the square root of the batch), one seed each;
- the shapes: depth, width, heads and d_ff of about a million parameters (the space's
  ceiling) under configs/tiny.yaml's training, one seed each, by their score at 444k, with
  Kendall's τ between the 444k and the 4M order;
- the cool-down: the default's shape and its two-head variant (the best at 4M) with
  each rung's and the target's cool-down 20% (the default), 40% and 50% of its budget,
  one seed each;
- the learning-rate sweep at batch 16, two seeds (two values of `search.seed`, so two
  trial seeds) for each rate: every score, then at each budget the seed-to-seed standard
  deviation (pooled over the rates), the rate with the best mean, and the optimum of a
  parabola in log2(rate) fitted to the means, the rate `evo promote --lr-horizon` would
  have to move.

Nothing is trained; a second or so.

    python bench/horizon_sweeps.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

DATA = Path(__file__).parent / "data" / "horizon_sweeps.json"


def describe(genes: dict[str, Any]) -> str:
    return f"batch {genes['batch_size']:>2}, lr {genes['learning_rate']:.5f}"


def batch_table(runs: list[dict[str, Any]], budgets: list[int]) -> None:
    print("batch variants (seed 0):")
    print(f"{'':>26}" + "".join(f"{b:>11,}" for b in budgets))
    for run in runs:
        if run["study"] in ("batch", "both"):
            print(f"{describe(run['genes']):>26}" + "".join(f"{s:11.4f}" for s in run["scores"]))


def shape_table(runs: list[dict[str, Any]], budgets: list[int]) -> None:
    shapes = [r for r in runs if r["study"] in ("shape", "both")]
    shapes.sort(key=lambda r: r["scores"][2])
    print("\nshapes (batch 16, lr 0.003), best at 444k first:")
    print(f"{'layers, d_model, heads, d_ff':>30}" + "".join(f"{b:>11,}" for b in budgets))
    for run in shapes:
        g = run["genes"]
        shape = f"{g['n_layers']}, {g['d_model']}, {g['n_heads']}, {g['d_ff_mult']:g}x"
        print(f"{shape:>30}" + "".join(f"{s:11.4f}" for s in run["scores"]))
    tau = stats.kendalltau([r["scores"][2] for r in shapes], [r["scores"][3] for r in shapes])
    print(f"Kendall τ between the 444k and 4M orders: {tau.statistic:.3f}")


def cool_down_table(runs: list[dict[str, Any]], budgets: list[int]) -> None:
    print("\ncool-down share (batch 16, lr 0.003, 4 layers of 128, seed 0):")
    print(f"{'heads, cool-down':>30}" + "".join(f"{b:>11,}" for b in budgets))
    variants = [
        r
        for r in runs
        if r["study"] in ("cool_down", "both")
        or (r["study"] == "shape" and r["genes"]["n_layers"] == 4 and r["genes"]["n_heads"] == 2)
    ]
    variants.sort(key=lambda r: (r["genes"]["n_heads"], r["genes"]["decay_fraction"]))
    for run in variants:
        g = run["genes"]
        name = f"{g['n_heads']} heads, {g['decay_fraction']:.0%}"
        print(f"{name:>30}" + "".join(f"{s:11.4f}" for s in run["scores"]))


def rate_sweep(runs: list[dict[str, Any]], budgets: list[int]) -> None:
    scores: dict[float, dict[int, list[float]]] = {}
    for run in runs:
        if run["study"] in ("learning_rate", "both"):
            rate = run["genes"]["learning_rate"]
            scores.setdefault(rate, {})[run["search_seed"]] = run["scores"]
    print("\nlearning rates at batch 16 (seed 0 / seed 1):")
    print(f"{'lr':>10}" + "".join(f"{b:>17,}" for b in budgets))
    for rate, seeds in sorted(scores.items()):
        cells = [
            " / ".join(f"{seeds[s][i]:.3f}" if s in seeds else "  -  " for s in (0, 1))
            for i in range(len(budgets))
        ]
        print(f"{rate:10.5f}" + "".join(f"{c:>17}" for c in cells))
    both = sorted(rate for rate, seeds in scores.items() if len(seeds) == 2)
    print(f"\nover the {len(both)} rates with both seeds ({both[0]:g} to {both[-1]:g}):")
    for i, budget in enumerate(budgets):
        pairs = [(scores[r][0][i], scores[r][1][i]) for r in both]
        sd = math.sqrt(sum((a - b) ** 2 for a, b in pairs) / (2 * len(pairs)))
        means = np.array([(a + b) / 2 for a, b in pairs])
        curve, slope, _ = np.polyfit(np.log2(both), means, 2)
        optimum = 2 ** (-slope / (2 * curve)) if curve > 0 else math.nan
        best = both[int(np.argmin(means))]
        print(
            f"{budget:>11,} tokens: seed sd {sd:.4f} ({sd / means.mean():.1%}); best mean at "
            f"lr {best:g} ({means.min():.4f}); parabola's optimum lr {optimum:.5f}; means "
            f"span {means.max() - means.min():.3f}"
        )


def main() -> None:
    data = json.loads(DATA.read_text())
    batch_table(data["runs"], data["budgets"])
    shape_table(data["runs"], data["budgets"])
    cool_down_table(data["runs"], data["budgets"])
    rate_sweep(data["runs"], data["budgets"])


if __name__ == "__main__":
    main()
