"""A search of tiny models of a generated corpus, seconds in all: the one the test suite
runs (tests/conftest.py re-exports these) and the chaos bench's (bench/chaos.py), written
once. It lives here, not in tests/, because a bench must not depend on the test suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT = (
    "the model reads tokens and predicts the next one while the optimizer follows the "
    "gradient of the loss down towards a better fit of the training text"
)
WORDS = TEXT.split()


def write_corpus(folder: Path, documents: int = 24) -> Path:
    """A folder of small text files: enough documents for a train/validation split."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(120)]
        (folder / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n", encoding="utf-8")
    return folder


def space_dict(corpus: Path, **search: Any) -> dict[str, Any]:
    """A generational search of tiny models, seconds in all."""
    return {
        "genes": {
            "n_layers": {"int": [1, 2]},
            "d_model": {"choice": [16, 32]},
            "n_heads": {"choice": [1, 2]},
            "learning_rate": {"float": [1.0e-3, 2.0e-2], "log": True},
        },
        "fixed": {
            "model": {"max_seq_len": 16, "d_ff": 32},
            "train": {"batch_size": 4, "seq_len": 16, "warmup_steps": 1, "threads": 1},
        },
        "data": {"corpus": str(corpus), "tokenizer": "char", "vocab_size": 64},
        "trial": {"max_steps": 3, "resources": {"cpus": 1}},
        "search": {
            "mode": "generational",
            "population": 4,
            "generations": 3,
            "seed": 1,
            "objectives": ["bits_per_byte"],
            **search,
        },
    }


def steady_space_dict(corpus: Path, **search: Any) -> dict[str, Any]:
    """A steady-state search over three rungs (3, 9 and 27 steps) of tiny models."""
    space = space_dict(corpus)
    del space["trial"]["max_steps"]
    space["search"] = {
        "population": 4,
        "seed": 1,
        "target": {"max_steps": 27},
        "rungs": [3, 9, 27],
        "budget": {"trials": 16},
        "objectives": ["bits_per_byte"],
        **search,
    }
    return space
