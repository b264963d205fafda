"""`evo run --dry-run`: says what the run would do and writes nothing; the rungs and
budget it states are those the real run then uses."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import space_dict, steady_space_dict, write_corpus

from evo.cli import main as evo
from evo.dry_run import Probe, plan
from evo.schedule.budget import trial_cost
from evo.space import space_from_dict
from evo.storage import Storage


def tree(folder: Path) -> dict[str, int]:
    """Every file and folder under `folder`, with its size (0 for a folder)."""
    return {
        str(path.relative_to(folder)): path.stat().st_size if path.is_file() else 0
        for path in folder.rglob("*")
    }


def scratch_folders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("evo-dry-run-")}


@pytest.fixture
def space(workdir) -> Path:
    corpus = write_corpus(workdir / "corpus")
    path = workdir / "space.yaml"
    path.write_text(yaml.safe_dump(steady_space_dict(corpus)), encoding="utf-8")
    return path


def test_a_dry_run_writes_nothing_and_states_what_the_run_then_does(space, workdir, capsys):
    before, scratch = tree(workdir), scratch_folders()
    assert evo(["run", str(space), "--dry-run", "--local"]) == 0
    out = capsys.readouterr().out
    assert tree(workdir) == before  # no database, no results/ folder, no cache
    assert scratch_folders() == scratch  # the corpus tokenized aside is gone too
    assert "rungs: 3 steps / 9 steps / 27 steps" in out
    assert "budget: 16 trials" in out
    passes = re.search(
        r"target: 27 steps, ([\d.]+) of a pass over the training split \(([\d,]+) tokens", out
    )
    assert passes is not None, out
    split = int(passes[2].replace(",", ""))
    assert float(passes[1]) == pytest.approx(27 * 4 * 16 / split, rel=0.05)  # 27 steps of 4 × 16
    assert re.search(r"its trials end the search after about 11 new genomes in 16 trials", out)
    assert "about 1.2 of them reach the top rung (1 in 3^2" in out
    assert re.search(r"estimated wall time: .* on 1 worker\(s\) of this machine", out)
    assert re.search(r"[\d,]+ tokens/s .*\(measured over 10 probe steps", out)

    assert evo(["run", str(space), "--local", "--quiet"]) == 0
    with Storage("sqlite:///results/evo.db", create=False) as storage:
        trials = storage.trials("space")
    assert {trial.budget["max_steps"] for trial in trials} == {3, 9, 27}
    assert len({trial.decision for trial in trials}) == 16


def test_the_plan_spends_the_budget_at_the_schedulers_costs(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    space = space_from_dict(steady_space_dict(corpus, budget={"tokens": 100_000}))
    genes = {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": 0.001}
    found = plan(space, genes, Probe(steps=10, tokens_per_s=1000.0, overhead_s=1.0))
    costs = [trial_cost(space, genes, rung).tokens for rung in range(3)]
    assert found.tokens == costs
    assert found.limit == "tokens"
    per_genome = costs[0] + costs[1] / 3 + costs[2] / 9
    assert found.genomes == pytest.approx(100_000 / per_genome)
    assert found.trained_tokens == pytest.approx(100_000)
    assert found.trials == pytest.approx(found.genomes * (1 + 1 / 3 + 1 / 9))


def test_a_generational_dry_run_counts_the_trials_its_generations_run(workdir, capsys):
    path = workdir / "gen.yaml"
    path.write_text(yaml.safe_dump(space_dict(write_corpus(workdir / "corpus"))))
    assert evo(["run", str(path), "--dry-run", "--local"]) == 0
    out = capsys.readouterr().out
    assert not (workdir / "results").exists()
    assert "budget: 3 generations of 4 genomes" in out
    assert "its generations end the search after about 12 new genomes in 12 trials" in out
    assert evo(["run", str(path), "--local", "--quiet"]) == 0
    with Storage("sqlite:///results/evo.db", create=False) as storage:
        assert len({trial.decision for trial in storage.trials("gen")}) == 12
