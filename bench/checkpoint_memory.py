"""Do large checkpoints stay out of the driver's memory? A steady-state search over Ray whose
one genome is a model with a checkpoint over 500 MB (weights and AdamW state) climbs three
rungs, so two such checkpoints are published by a worker and fetched by the next one
through the run's checkpoint store (a folder here: `--store` takes any URL). The driver
(this process) records the search; its peak resident memory is read before and after.

Beside it, the peer: what the driver paid when checkpoints came back to it as bytes (evo
before the checkpoint store): one more trial publishes such a checkpoint, and the driver
reads it into memory. Prints both growths and the largest checkpoint that moved.

Goal (issue 27): the driver's peak RSS grows by less than 100 MB while checkpoints over
500 MB move. About 3 minutes on 2 cores.

    python bench/checkpoint_memory.py
    python bench/checkpoint_memory.py --store s3://bucket/prefix    # credentials from the env
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from evo.checkpoints import CheckpointStore
from evo.data import prepare_data
from evo.driver import make_search, open_run
from evo.executor import make_executor
from evo.schedule.budget import cost_to_top
from evo.search.trials import make_job
from evo.space import load_space
from evo.storage import Storage

GOAL_MB = 100
NAME = "checkpoint-memory"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d-model", type=int, default=640)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--store", help="the checkpoint store's URL (default: a temporary folder)")
    return p.parse_args()


def genome(d_model: int, layers: int) -> dict[str, Any]:
    return {"n_layers": layers, "d_model": d_model, "n_heads": d_model // 64, "learning_rate": 1e-3}


def space_dict(corpus: str, d_model: int, layers: int) -> dict[str, Any]:
    """One genome (every gene has one value) on three short rungs."""
    return {
        "genes": {name: {"choice": [value]} for name, value in genome(d_model, layers).items()},
        "fixed": {
            "model": {"max_seq_len": 32, "d_ff": 4 * d_model},
            "train": {"batch_size": 2, "seq_len": 32, "warmup_steps": 1, "eval_max_batches": 1},
        },
        "data": {"corpus": corpus, "tokenizer": "byte"},
        "trial": {"resources": {"cpus": 2}},
        "search": {
            "seed": 0,
            "target": {"max_steps": 8},
            "rungs": [2, 4, 8],
            "objectives": ["bits_per_byte"],
            "initial": [genome(d_model, layers)],
        },
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LargestCheckpoint(threading.Thread):
    """Polls the store for the largest checkpoint published in it (reading manifests only)."""

    def __init__(self, store: CheckpointStore) -> None:
        super().__init__(daemon=True)
        self.store, self.largest, self.done = store, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for name in self.store.names():
                files = self.store.files(name) or {}
                self.largest = max(self.largest, sum(files.values()))


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="evo-checkpoint-memory-") as scratch:
        folder = Path(scratch)
        corpus = folder / "corpus.txt"
        corpus.write_text("the driver never holds a checkpoint in memory.\n" * 4000)
        path = folder / "space.yaml"
        path.write_text(yaml.safe_dump(space_dict(str(corpus), args.d_model, args.layers)))
        genes = genome(args.d_model, args.layers)
        ladder = cost_to_top(load_space(path, ["search.budget={trials: 3}"]), genes, 0).tokens
        space = load_space(path, [f"search.budget={{tokens: {ladder}}}"])
        data, vocab = prepare_data(space)
        storage = Storage(f"sqlite:///{folder / 'evo.db'}")
        open_run(storage, NAME, space)
        store = CheckpointStore(args.store or folder / "trials")
        executor = make_executor(space, local=False)
        search = make_search(space, NAME, storage, executor, data, vocab, None, store)
        watcher = LargestCheckpoint(store)
        watcher.start()
        before, started = peak_rss_mb(), time.perf_counter()
        search.run()
        searched = peak_rss_mb() - before
        watcher.done.set()
        watcher.join()
        trials = storage.trials(NAME)
        print(
            f"search: {len(trials)} trials ({', '.join(t.status.value for t in trials)}) in "
            f"{time.perf_counter() - started:.0f} s; largest checkpoint moved "
            f"{watcher.largest / 2**20:.0f} MB"
        )
        # The peer: a checkpoint brought into the driver's memory, as evo did before.
        job = make_job(space, vocab, 1, genes, 0, None, store)
        outcome = executor_outcome(executor, job, data)
        assert outcome.checkpoint is not None, outcome.result.error
        before = peak_rss_mb()
        held = store.read(outcome.checkpoint)
        through_driver = peak_rss_mb() - before
        size = sum(len(content) for content in held.values()) / 2**20
        executor.close()
    ok = searched < GOAL_MB and watcher.largest > 500 * 2**20
    print(f"driver peak RSS growth, checkpoints through the store: {searched:.0f} MB")
    print(f"driver peak RSS growth, a {size:.0f} MB checkpoint read by it: {through_driver:.0f} MB")
    print(f"goal: < {GOAL_MB} MB while checkpoints over 500 MB move: {'ok' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


def executor_outcome(executor: Any, job: Any, data: Any) -> Any:
    """Run one job on the executor's workers (not in this process) and return its outcome."""
    outcomes = []

    class Keep:
        def started(self, job: Any, attempt: int) -> None: ...
        def retrying(self, job: Any, attempt: int, error: str) -> None: ...
        def progress(self, job: Any, points: Any) -> None: ...
        def finished(self, job: Any, outcome: Any) -> None:
            outcomes.append(outcome)

    executor.run([job], Keep())
    return outcomes[0]


if __name__ == "__main__":
    main()
