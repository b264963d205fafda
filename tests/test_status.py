"""`evo status` on a small hand-made results database: generations, stalled trials, the
best trials and promotions beside their search scores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import outcome, space_dict, steady_space_dict, write_corpus
from rich.console import Console

from evo.metrics import EVAL_TOKENS
from evo.status import print_status, watch_status
from evo.storage import Storage
from llm.errors import UserError

RUN = "s"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    """A generational run of 3 generations with 2 complete: 2.9, a stalled 4.8 (against a
    baseline of 4.7) and 2.4 bits per byte; the 2.4 genome was promoted."""
    space = space_dict(write_corpus(tmp_path / "corpus"))
    with Storage(f"sqlite:///{tmp_path / 'evo.db'}") as storage:
        storage.create_run(RUN, yaml.safe_dump(space), seed=0)
        storage.set_unigram_baseline(RUN, 4.7)
        for generation, (layers, value) in enumerate([(1, 2.9), (2, 4.8), (1, 2.4)]):
            rate = 0.001 * (generation + 1)
            genes = {"n_layers": layers, "d_model": 16, "n_heads": 1, "learning_rate": rate}
            genome = storage.genome_id(RUN, genes)
            trial = storage.add_trial(RUN, genome, generation=generation)
            storage.finish_trial(trial, outcome("done", {"bits_per_byte": value, "device": "cpu"}))
            if generation < 2:
                storage.save_generation(RUN, generation, [genome], None, {})
        metrics = {"bits_per_byte": 2.31, "tokens": 3_771_648, EVAL_TOKENS: 50_678}
        storage.record_promotion(RUN, genome, "out/promoted", "finished", metrics)
        yield storage


def status_text(storage: Storage) -> str:
    console = Console(record=True, width=120)
    print_status(storage, RUN, console)
    return console.export_text()


def test_status_counts_generations_from_one_and_lists_stalled_trials(store: Storage) -> None:
    text = status_text(store)
    assert f"{RUN}: running, 2 of 3 generations complete" in text
    assert "trials: 3 done, 1 stalled (of the done; see evo report)" in text
    assert "best bits_per_byte (min): 2.4" in text
    assert "4.8" not in text  # the stalled trial is not among the best


def test_stalled_trials_below_the_top_rung_are_not_counted_as_stalled_at_the_top(
    tmp_path: Path,
) -> None:
    space = steady_space_dict(write_corpus(tmp_path / "corpus"))
    with Storage(f"sqlite:///{tmp_path / 'evo.db'}") as storage:
        storage.create_run(RUN, yaml.safe_dump(space), seed=0)
        storage.set_unigram_baseline(RUN, 4.7)
        genome = storage.genome_id(RUN, {"n_layers": 1, "d_model": 16, "n_heads": 1})
        trial = storage.add_trial(RUN, genome, rung=0)
        storage.finish_trial(trial, outcome("done", {"bits_per_byte": 4.8, "device": "cpu"}))
        text = status_text(storage)
    assert "1 stalled (of the done" in text
    assert "no successful trial at the top rung yet" in text
    assert "has learned yet" not in text  # nothing at the top rung has stalled


def test_status_shows_a_promotion_beside_its_search_score(store: Storage) -> None:
    text = status_text(store)
    assert "promoted genome 3: finished, bits_per_byte 2.31 (search: 2.4 at rung 1)" in text


def test_watch_redraws_while_the_run_runs_and_stops_when_it_ends(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evo.status

    naps: list[float] = []

    def nap(seconds: float) -> None:  # the search, meanwhile, finishes on the third nap
        naps.append(seconds)
        if len(naps) == 3:
            store.set_run_status(RUN, "finished")

    monkeypatch.setattr(evo.status.time, "sleep", nap)
    console = Console(record=True, width=120)
    watch_status(store, RUN, console, 0.5)
    assert naps == [0.5, 0.5, 0.5]
    assert console.export_text().count("s: finished") == 1  # the last drawing, once it ended
    with pytest.raises(UserError, match="positive number of seconds"):
        watch_status(store, RUN, console, 0)
