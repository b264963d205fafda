"""Shared fixtures: a small local corpus and a search space sized to run in seconds.

`TEST_ORDER_SEED=N pytest` runs the tests in an order shuffled by N, to show that no
test depends on what ran before it."""

import contextlib
import itertools
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from evo.executor import TrialOutcome
from evo.metrics import TrialStatus
from evo.schedule.rungs import Ladder
from evo.schedule.steady_state import Advance, Breed, SteadyStateScheduler
from evo.search.steady_state import history
from evo.space import SearchSpace
from evo.storage import Storage
from llm.config import ModelConfig
from llm.model import Transformer
from llm.trial import CurvePoint, TrialEnd, TrialResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postgres_server import NoPostgres, fresh_database, postgres_server

# The tiny search, shared with the chaos bench, re-exported: tests import it from conftest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from tiny_search import space_dict as space_dict
from tiny_search import steady_space_dict as steady_space_dict
from tiny_search import write_corpus as write_corpus


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With TEST_ORDER_SEED set, run the files in a shuffled order and each file's tests in
    a shuffled order: an order dependence shows, and a file's module-scoped fixtures are
    still built once (a shuffle across files would rebuild them and double the time)."""
    seed = os.environ.get("TEST_ORDER_SEED")
    if seed is None:
        return
    rng = random.Random(seed)
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(files.values())
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    items[:] = [item for group in groups for item in group]


def outcome(
    status: str, result: TrialResult | dict[str, Any] | None = None, **where: Any
) -> TrialOutcome:
    """A trial's outcome as an executor reports it. `result` is a TrialResult, or a result
    written as one dict: its metrics by name, and its `device`, `error`, `curve` (as
    dicts) and `pretrain` where given. What is not given is not reported, and storage
    keeps what the driver recorded: the device the trial was marked running on, its
    start; `where` sets the outcome's own fields (host, started, lent_seconds, ...)."""
    if not isinstance(result, TrialResult):
        fields = dict(result or {})
        fields.pop("status", None)
        curve = [CurvePoint(**point) for point in fields.pop("curve", None) or []]
        named = {key: fields.pop(key) for key in ("device", "error", "pretrain") if key in fields}
        ends = {end.value for end in TrialEnd}
        ended = TrialEnd(status) if status in ends else TrialEnd.FAILED
        result = TrialResult(ended, metrics=fields, curve=curve, **{"device": "", **named})
    unreported = {"host": "", "worker": "", "started": None, "finished": None}
    return TrialOutcome(result, TrialStatus(status), **{**unreported, **where})


def train_small_model(work: Path, data: dict, train: dict) -> Path:
    """A 2-layer model (d_model 64) trained by `llm train` into `work/base`, with these
    data settings (a cache under `work`) and these training settings (on one CPU thread,
    no evaluation during training)."""
    from llm.cli import main as llm

    config = {
        "model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_seq_len": 64},
        "data": {**data, "cache_dir": str(work / "cache")},
        "train": {**train, "eval_interval": 0, "device": "cpu", "threads": 1},
    }
    (work / "base.yaml").write_text(yaml.safe_dump(config))
    assert llm(["train", str(work / "base.yaml"), "--out", str(work / "base")]) == 0
    return work / "base"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in a fresh folder, so results/ and its cache land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def space_file(workdir) -> Path:
    corpus = write_corpus(workdir / "corpus")
    path = workdir / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(corpus)), encoding="utf-8")
    return path


def peaked_model(vocab_size: int, max_seq_len: int, seed: int = 0) -> Transformer:
    """A small untrained model in eval mode. Its large init gives peaked logits, so greedy
    choices are never near-ties that rounding could flip."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size,
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_ff=64,
        max_seq_len=max_seq_len,
        init_std=0.3,
    )
    return Transformer(config).eval()


def search_history(storage: Storage, name: str) -> list[tuple[Any, ...]]:
    """What a search did, independent of timing: each decision's genome, rung and result."""
    genomes, exact = storage.genomes(name), ("val_loss", "bits_per_byte", "steps", "tokens")
    return sorted(
        (
            t.decision,
            sorted(genomes[t.genome_id].items()),
            t.rung,
            t.status,
            [t.metric(m) for m in exact],  # not the timings
        )
        for t in storage.trials(name)
        if t.status.is_result
    )


def run_steady_search(folder: Path, database: str, settings: Sequence[str] = ()) -> str:
    """Run the small steady-state search (`steady_space_dict`, with `evo run`'s extra
    `settings`) without interruption, from `folder` as a user would, on the SQLite file
    `database` there; its URL."""
    from evo.cli import main as evo

    corpus = write_corpus(folder / "corpus")
    (folder / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    url = f"sqlite:///{folder / database}"
    here = Path.cwd()
    os.chdir(folder)
    try:
        assert evo(["run", "space.yaml", *settings, "--local", "--quiet", "--storage", url]) == 0
    finally:
        os.chdir(here)
    return url


def replayed_decisions(space: SearchSpace, vocab: int, storage: Storage, name: str) -> int:
    """Replay a finished steady-state run's history into a fresh scheduler, checking that
    before each stored decision the scheduler, given only the results recorded before
    it, makes that very decision; returns how many decisions were checked."""
    events, pending = history(space, storage.trials(name), storage.genomes(name))
    assert pending == []
    ladder = Ladder(space.rung_budgets(), space.search.eta, slack=space.search.population)
    scheduler = SteadyStateScheduler(space, vocab, ladder)
    decisions = 0
    for event in events:
        if event.kind == "result":
            scheduler.result(event.genome_id, event.rung, event.trial_id, event.values)
            continue
        decision = scheduler.decide(decisions, lambda d: True)
        if event.kind == "bred":
            assert decision == Breed(event.genes), decisions
            scheduler.bred_genome(event.genome_id, event.genes)
        else:
            assert isinstance(decision, Advance), decisions
            assert (decision.genome_id, decision.rung) == (event.genome_id, event.rung)
            scheduler.advanced(event.genome_id, event.rung)
        decisions += 1
    return decisions


# The databases the storage tests run against, as Optuna's storage tests are parametrized
# over its storages: SQLite (the default) and PostgreSQL (for a cluster).
STORAGES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """The PostgreSQL server of the session (`tests/postgres_server.py`): its superuser's
    URL. Without one, every PostgreSQL case fails, saying why; none is skipped."""
    try:
        with postgres_server() as url:
            yield url
    except NoPostgres as err:
        pytest.fail(str(err), pytrace=False)


_databases = itertools.count()


@pytest.fixture(params=STORAGES)
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases of one kind (the test runs once with each kind): each
    call returns the URL of another one (with its password), dropped after the test."""
    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    with contextlib.ExitStack() as made:

        def make() -> str:
            number = next(_databases)
            if server is None:
                return f"sqlite:///{tmp_path / f'evo-{number}.db'}"
            return made.enter_context(fresh_database(server, f"evo_test_{os.getpid()}_{number}"))

        yield make


@pytest.fixture
def database_url(new_database: Callable[[], str]) -> str:
    """A new, empty database: SQLite in one run of the test, PostgreSQL in the other."""
    return new_database()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3 endpoint on loopback for the session (moto's server: real HTTP, as a worker on
    another node would reach object storage), with its credentials and endpoint in the
    environment the way a user sets them, so subprocesses reach it too."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "evo-test",
        "AWS_SECRET_ACCESS_KEY": "evo-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_buckets = itertools.count()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on the session's S3 endpoint: its name."""
    import boto3

    name = f"evo-test-{next(_buckets)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
