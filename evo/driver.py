"""Running a search: its record in storage (`open_run`, `load_run_space`) and the loop of
its mode (`make_search`; the loops are in `evo.search`)."""

from __future__ import annotations

import hashlib

import yaml

from evo.checkpoints import CheckpointStore
from evo.data import TrialData, unigram_bits_per_byte
from evo.executor import Executor
from evo.search.generational import GenerationalSearch
from evo.search.steady_state import SteadyStateSearch, missing_checkpoints, trials_folder
from evo.space import SearchSpace, space_from_dict
from evo.storage import Storage
from evo.view import SearchView
from llm.errors import UserError


def space_hash(space: SearchSpace) -> str:
    return hashlib.sha256(space.canonical_yaml().encode()).hexdigest()


def open_run(storage: Storage, name: str, space: SearchSpace) -> bool:
    """Create the run, or check that an existing one has this space; True when it is new."""
    run = storage.get_run(name)
    if run is None:
        storage.create_run(name, space.canonical_yaml(), space.search.seed)
        return True
    # A run stored by an older evo lacks the defaults added since; it is the same space if
    # it reads back to this one.
    if run.space_sha256 != space_hash(space) and load_run_space(storage, name) != space:
        raise UserError(
            f"run {name!r} exists with a different search space; resume it with "
            f"`evo resume {name}`, or start a new run with --new or --name"
        )
    return False


def checkpoint_store(storage: Storage, name: str, url: str | None = None) -> CheckpointStore:
    """The run's checkpoint store: at `url` when given (`--checkpoints`), else where the run
    recorded it, else (a run recorded before schema 9, or a new one) results/NAME/trials
    in this folder. A local path is made absolute, so the run finds its checkpoints when
    resumed from another folder."""
    run = storage.get_run(name)
    return CheckpointStore(url or (run and run.checkpoints) or trials_folder(name))


def check_checkpoints(
    storage: Storage, name: str, space: SearchSpace, store: CheckpointStore, *, go_on: bool
) -> None:
    """Refuse to continue a run whose paused genomes' checkpoints are not in `store`
    (unless `go_on`: then those genomes cannot advance, and an interrupted trial that
    continued one fails when it is run again)."""
    if space.search.mode == "generational":
        return  # its trials keep no checkpoints
    missing = missing_checkpoints(storage.trials(name), store)
    if missing and not go_on:
        raise UserError(
            f"run {name!r} needs {len(missing)} checkpoints of paused trials that are missing "
            f"from {store.url} (first: {missing[0]}); point --checkpoints at where they are, "
            "or pass --without-missing-checkpoints to go on without them (those genomes are "
            "dropped)"
        )


def load_run_space(storage: Storage, name: str) -> SearchSpace:
    run = storage.require_run(name)
    return space_from_dict(yaml.safe_load(run.space_yaml), where=f"run {name!r}")


def make_search(
    space: SearchSpace,
    name: str,
    storage: Storage,
    executor: Executor,
    data: TrialData,
    vocab_size: int,
    view: SearchView | None = None,
    checkpoints: CheckpointStore | None = None,
) -> GenerationalSearch | SteadyStateSearch:
    """The search loop of the space's mode, once the run's unigram baseline and its
    checkpoint store (default: `checkpoint_store`'s) are recorded."""
    record_unigram_baseline(storage, name, data)
    if space.search.mode == "generational":
        return GenerationalSearch(space, name, storage, executor, data, vocab_size, view)
    checkpoints = checkpoints or checkpoint_store(storage, name)
    storage.set_checkpoints(name, checkpoints.url)
    return SteadyStateSearch(
        space, name, storage, executor, data, vocab_size, view, checkpoints=checkpoints
    )


def record_unigram_baseline(storage: Storage, name: str, data: TrialData) -> None:
    """Store the run's unigram baseline (see evo.summary.stalled), of the validation text
    a trial's final metrics are scored on: the adapt corpus's when there is one; and the
    size of the pretraining corpus's training split (evo.describe.target_passes)."""
    scored = data.adapt if data.adapt is not None else data.pretrain
    storage.set_unigram_baseline(name, unigram_bits_per_byte(scored))
    storage.set_train_tokens(name, len(data.pretrain.train))
