"""A run with 10,000 trials: resuming it, deciding, and reading its status still work.
(How fast is measured by bench/scheduler_scale.py, not here.)"""

from __future__ import annotations

import io
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml
from conftest import steady_space_dict, write_corpus
from rich.console import Console
from sqlalchemy import create_engine, insert

from evo.data import prepare_data
from evo.driver import open_run
from evo.executor import LocalExecutor
from evo.search.steady_state import SteadyStateSearch
from evo.space import load_space
from evo.status import print_status
from evo.storage import Storage
from evo.storage.models import GenomeRow, RunRow, TrialRow

TRIALS = 10_000
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fill(url: str, run: str, rng: random.Random) -> dict[int, int]:
    """Store TRIALS finished trials of a three-rung search in bulk: genomes start at rung 0
    and some go on to each rung above, continuing from the one below. Returns how many
    trials each rung got."""
    with create_engine(url).begin() as connection:
        run_id = connection.execute(RunRow.__table__.select().where(RunRow.name == run)).one().id
        genomes, trials, per_rung = [], [], {0: 0, 1: 0, 2: 0}
        chains: list[list[int]] = []  # trial ids of each genome, rung by rung
        for number in range(TRIALS):
            candidates = [c for c in chains[-30:] if len(c) < 3]
            if candidates and rng.random() < 0.3:
                chain = rng.choice(candidates)
                rung, continued = len(chain), chain[-1]
                genome = trials[continued - 1]["genome_id"]
            else:
                genome = len(genomes) + 1
                genes = {"n_layers": 1 + genome % 2, "d_model": 32, "n_heads": 2}
                genomes.append(
                    {
                        "id": genome,
                        "run_id": run_id,
                        "hash": f"{genome:064x}",
                        "genes": {**genes, "learning_rate": 1e-3 * (1 + genome % 97)},
                    }
                )
                chain, rung, continued = [], 0, None
                chains.append(chain)
            trial_id = number + 1
            chain.append(trial_id)
            per_rung[rung] += 1
            start = T0 + timedelta(seconds=number)
            trials.append(
                {
                    "id": trial_id,
                    "genome_id": genome,
                    "rung": rung,
                    "decision": number,
                    "seen": number,
                    "recorded": number + 1,
                    "continued_from": continued,
                    "attempt": 0,
                    "status": "done",
                    "started_at": start,
                    "finished_at": start + timedelta(seconds=2),
                    "metrics": {
                        "bits_per_byte": 4.0 - 0.3 * rung - rng.random(),
                        "steps": 3,
                        "tokens": 192,
                        "wall_seconds": 2.0,
                    },
                }
            )
        connection.execute(insert(GenomeRow.__table__), genomes)
        connection.execute(insert(TrialRow.__table__), trials)
        connection.execute(
            RunRow.__table__.update().where(RunRow.id == run_id).values(results=TRIALS)
        )
    return per_rung


def test_a_run_of_ten_thousand_trials_resumes_decides_and_reports(workdir: Path) -> None:
    corpus = write_corpus(workdir / "corpus")
    space_dict = steady_space_dict(corpus, budget={"trials": TRIALS + 2})
    (workdir / "space.yaml").write_text(yaml.safe_dump(space_dict))
    space = load_space(workdir / "space.yaml")
    url = f"sqlite:///{workdir / 'evo.db'}"
    storage = Storage(url)
    open_run(storage, "big", space)
    per_rung = fill(url, "big", random.Random(0))
    bred = len(storage.genomes("big"))
    data, vocab = prepare_data(space)
    # Resuming replays the ten thousand trials, then makes the two decisions left: no
    # checkpoint was kept, so nothing can advance and two new genomes are bred.
    search = SteadyStateSearch(space, "big", storage, LocalExecutor(), data, vocab)
    search.run()
    replayed = [len(results) for results in search.scheduler.results]
    assert replayed == [per_rung[0] + 2, per_rung[1], per_rung[2]]
    new = [t for t in storage.trials("big") if t.decision >= TRIALS]
    assert [(t.decision, t.rung, t.status) for t in new] == [
        (TRIALS, 0, "done"),
        (TRIALS + 1, 0, "done"),
    ]
    assert len(storage.genomes("big")) == bred + 2  # never a genome bred before
    console = Console(file=io.StringIO(), width=120)
    print_status(storage, "big", console)
    status = console.file.getvalue()
    assert f"spent: {TRIALS + 2:,} of {TRIALS + 2:,} trials (100%)" in status
    assert f"trials: {TRIALS + 2} done" in status
