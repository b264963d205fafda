from __future__ import annotations

import random

import pandas as pd
import pytest

from evo.importance import MIN_TRIALS, gene_importance
from evo.space import Objective, space_from_dict

SPACE = space_from_dict(
    {
        "genes": {
            "n_layers": {"int": [1, 6]},
            "learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True},
            "pos_encoding": {"choice": ["rope", "alibi", "none"]},
            "attn_window": {"choice": [None, 16, 32]},
        },
        "data": {"vocab_size": 64},
        "trial": {"max_steps": 5},
        "search": {"budget": {"trials": 30}, "population": 6},
    }
)
BITS = Objective(metric="bits_per_byte", direction="min")


def frame(n: int, decides: str, seed: int = 0) -> pd.DataFrame:
    """Trials whose bits per byte depends on the gene `decides` alone (plus noise)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        genes = SPACE.sample(rng)
        value = {
            "n_layers": abs(genes["n_layers"] - 4),
            "pos_encoding": {"rope": 0.0, "alibi": 1.0, "none": 3.0}[genes["pos_encoding"]],
        }[decides]
        rows.append(
            {
                **{f"gene.{k}": v for k, v in genes.items()},
                "bits_per_byte": 2 + value + 0.01 * rng.random(),
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("decides", ["n_layers", "pos_encoding"])
def test_the_gene_that_decides_the_objective_is_the_most_important(decides: str) -> None:
    importance = gene_importance(frame(200, decides), SPACE, BITS)
    assert importance is not None
    assert set(importance) == set(SPACE.genes)
    assert next(iter(importance)) == decides
    assert importance[decides] > 0.5
    assert sum(importance.values()) == pytest.approx(1.0)


def test_too_few_trials_say_nothing_and_null_choices_count_as_values() -> None:
    assert gene_importance(frame(MIN_TRIALS - 1, "n_layers"), SPACE, BITS) is None
    trials = frame(40, "n_layers")
    assert trials["gene.attn_window"].isna().any()  # null choices read back as NaN
    importance = gene_importance(trials, SPACE, BITS)
    assert importance is not None and "attn_window" in importance
    old = trials.assign(**{"gene.learning_rate": float("nan")})  # before the gene existed
    assert gene_importance(old, SPACE, BITS) is None
