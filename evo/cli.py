"""`evo`: run, resume, inspect, report, export and promote evolutionary searches."""

from __future__ import annotations

import argparse
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llm.cli_support import CommandLine, Handler
from llm.tracking import TRACKERS

# Each command imports what it needs when it runs, so that `evo --help` loads no database
# library and the read commands (ls, status, export, dashboard) no torch, Ray or plotly
# (tests/test_read_imports.py; bench/read_speed.py times them).
if TYPE_CHECKING:
    from evo.checkpoints import CheckpointStore
    from evo.data import TrialData
    from evo.space import SearchSpace
    from evo.storage import Storage


class Command(Protocol):
    """Adds a subcommand that takes --storage (`CommandLine.command`'s arguments)."""

    def __call__(
        self, name: str, func: Handler, help: str, description: str | None = None
    ) -> argparse.ArgumentParser: ...


def main(argv: list[str] | None = None) -> int:
    return build_command_line().main(argv)


def build_command_line() -> CommandLine:
    cli = CommandLine("evo", __doc__)

    def command(
        name: str, func: Handler, help: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        sub = cli.command(name, func, help, description)
        sub.add_argument(
            "--storage",
            metavar="URL",
            help="the results database, any SQLAlchemy URL (default: sqlite:///results/evo.db; "
            "SQLite runs in WAL mode, so readers never block the writer); only evo run "
            "creates a missing SQLite database",
        )
        return sub

    add_search_commands(command)
    add_read_commands(command)
    add_retraining_commands(command)
    return cli


def add_search_commands(command: Command) -> None:
    run = command(
        "run",
        cmd_run,
        "run (or continue) a search described by a space file",
        "Run a search described by a space file. The run's name defaults to the file's stem; "
        "an unfinished run of that name is continued, as evo resume does, and running an "
        "existing name with a different space file is refused.",
    )
    run.add_argument("space", type=Path, help="search space YAML, e.g. search_spaces/tiny.yaml")
    run.add_argument("--name", help="run name (default: the space file's stem)")
    run.add_argument("--new", action="store_true", help="start a fresh run under a new name")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="say what the run would do (rungs, budget, genomes, passes, an estimate of its "
        "time from a few probe steps) and write nothing",
    )
    add_execution_options(run)
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a value of the space file (repeatable); recorded with the run",
    )

    resume = command(
        "resume",
        cmd_resume,
        "continue an interrupted run",
        "Continue an interrupted run, from any folder: the stored history is replayed into a "
        "fresh scheduler, and the interrupted trials run again from the checkpoints they "
        "started from. Refused while the run's driver is alive.",
    )
    resume.add_argument("name", help="the run's name")
    add_execution_options(resume)
    for parser in (run, resume):
        parser.add_argument(
            "--without-missing-checkpoints",
            action="store_true",
            help="continue a run whose paused trials' checkpoints are missing from its "
            "checkpoint store: those genomes are dropped instead of advancing",
        )
        parser.add_argument(
            "--checkpoints",
            metavar="URL",
            help="where workers keep paused trials' checkpoints: a folder (shared by every "
            "node of a cluster) or object storage, e.g. s3://bucket/prefix (default: the "
            "run's, recorded when it started; for a new run results/NAME/trials)",
        )


def add_read_commands(command: Command) -> None:
    command("ls", cmd_ls, "list the runs in the database")

    status = command(
        "status",
        cmd_status,
        "progress, best values and Pareto front of a run",
        "A run's progress: the target and rungs, what the search has spent of its budget, "
        "trials and advances per rung, worker utilization (and where idle worker time went: "
        "workers starting, between trials, after the last trials, and how much of it was lent "
        "to the trials still running), the best trials (the Pareto front for several "
        "objectives) at the top rung, the validation's ρ, τ and noise floor, promotions. "
        "Safe while the run writes.",
    )
    status.add_argument("name", help="the run's name")
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=5.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 5) until the run stops running",
    )

    report = command(
        "report",
        cmd_report,
        "write a self-contained HTML report of a run",
        "An HTML report with the time it was generated: summary, trials and scores per rung, "
        "objectives per generation (best so far and median), the best value against compute "
        "spent, the top rung's Pareto front (or, for one objective, the optimisation history "
        "with its best-so-far line), parallel coordinates of the genes (real values on log "
        "axes, the best trial alone in red), gene importance (Optuna's PED-ANOVA over the "
        "lowest rung's trials) with slice plots of the four most important genes, learning "
        "curves (nats per token) of the best genomes across rungs, a table of every trial (by "
        "rung, the top first, then best first), what each worker did over time, failures and "
        "stalled trials, the validation (validated against search rank), promotions with the "
        "genome's search score (at its highest rung), validated and promoted scores, tokens "
        "trained and tokens evaluated.",
    )
    report.add_argument("name", help="the run's name")
    report.add_argument("--out", type=Path, help="default: results/NAME/report.html")
    report.add_argument(
        "--plotly",
        choices=["inline", "file"],
        default="inline",
        help="inline (default): plotly.js inside the page, one file that opens anywhere "
        "offline (about 4.9 MB); file: plotly-VERSION.min.js written once beside the page, "
        "which then stays small (about 30 KB plus 1 KB per trial)",
    )

    dashboard = command(
        "dashboard",
        cmd_dashboard,
        "a live web view of the database's runs",
        "A live web view of every run in the database: / lists the runs, /runs/NAME is a "
        "run's report, /runs/NAME/trials/ID one trial, updated in place as trials start and "
        "end; /api/runs and the addresses below it give the same as JSON. It reads the "
        "database read-only and needs no network.",
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="the interface to listen on")
    dashboard.add_argument("--port", type=int, default=8080, help="the port to listen on")
    dashboard.add_argument(
        "--token", help="required off loopback (default: $EVO_DASHBOARD_TOKEN); open ?token=…"
    )

    export = command(
        "export",
        cmd_export,
        "write one row per trial as CSV or Parquet",
        "Write one row per trial (a genome at a rung), with its genes (gene.*) and metrics as "
        "columns.",
    )
    export.add_argument("name", help="the run's name")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format")
    export.add_argument("--out", type=Path, help="default: results/NAME/trials.FORMAT")


def add_retraining_commands(command: Command) -> None:
    validate = command(
        "validate",
        cmd_validate,
        "retrain a run's best genomes with other seeds; compare rankings",
        "Retrain the search's best genomes (in the search's order: the highest rung each "
        "reached, then the first objective there, or predicted at the target where the search "
        "forecast it) at the space's target (or the budget given; 10 × the trial budget "
        "without a target) with fresh seeds, as trials on the same workers; stored as "
        "validation trials of the run. Prints both rankings, Spearman ρ and Kendall τ between "
        "them, and the noise floor (the pooled seed-to-seed standard deviation beside the "
        "median gap between neighbouring genomes). Interrupted, it is run again to finish: "
        "finished validations are never retrained.",
    )
    validate.add_argument("name", help="the run's name")
    validate.add_argument("--top", type=int, default=8, help="genomes, the search's best first")
    validate.add_argument("--seeds", type=int, default=2, help="seeds per genome")
    validate.add_argument(
        "--genome",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="validate this genome (repeat for several) instead of the best --top",
    )
    add_budget_options(validate, "default: the space's target")
    add_execution_options(validate, live_view=False)
    add_promote_command(command)


def add_promote_command(command: Command) -> None:
    promote = command(
        "promote",
        cmd_promote,
        "pretrain a run's best genome in full",
        "Pretrain a genome into a model directory, with the genome's schedule and seed: the "
        "best validated genome (by its mean over seeds) when evo validate has run, else the "
        "best genome at the highest rung the search reached (by the first objective, or "
        "--objective); it says which it used. It trains for the space's search.target (or the "
        "budget given; 2000 steps when the space has no target), and is recorded in the "
        "database with where it came from (provenance.json beside the model).",
    )
    promote.add_argument("name", help="the run's name")
    promote.add_argument("--genome", type=int, help="genome id (default: the best)")
    promote.add_argument("--objective", help="rank by this objective (default: the first)")
    add_budget_options(promote, "default: the space's target")
    promote.add_argument(
        "--width",
        type=int,
        metavar="D",
        help="train at d_model D: heads at the genome's head size, d_ff by its multiplier",
    )
    promote.add_argument(
        "--layers",
        type=int,
        metavar="L",
        help="train with L layers (μP does not carry across depth)",
    )
    promote.add_argument(
        "--parametrization",
        choices=["standard", "mup"],
        help="default: mup when --width changes the width (the genome's rate and init carry "
        "over, its searched width the base), else the genome's own",
    )
    promote.add_argument(
        "--lr-horizon",
        type=float,
        default=0.0,
        metavar="B",
        help="train at the genome's learning rate times (tokens of the run / tokens of the "
        "highest rung it reached)^-B: the best rate falls as a run gets longer "
        "(docs/scale-up.md); default 0, the genome's rate",
    )
    promote.add_argument("--corpus", help="pretraining corpus (default: the search's)")
    promote.add_argument(
        "--out",
        type=Path,
        help="model directory to write (default: results/NAME/promoted-genome-ID, with "
        "-width-D, -layers-L, -PARAMETRIZATION or -lr-horizon-B added where they change the "
        "genome)",
    )
    promote.add_argument("--resume", action="store_true", help="continue an interrupted one")
    promote.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train in N data-parallel processes on this machine (one per GPU on GPUs)",
    )


def add_budget_options(parser: argparse.ArgumentParser, default: str) -> None:
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"training steps ({default})")
    budget.add_argument("--tokens", type=int, help="training tokens")
    budget.add_argument("--seconds", type=float, help="training seconds")


def add_execution_options(parser: argparse.ArgumentParser, live_view: bool = True) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS or local)")
    parser.add_argument("--local", action="store_true", help="run trials in this process, no Ray")
    if live_view:
        parser.add_argument("--quiet", action="store_true", help="plain progress lines, no view")
        parser.add_argument(
            "--tracker",
            choices=TRACKERS,
            default="none",
            help="also write each trial's curves for TensorBoard or offline W&B, one run per "
            "trial, under results/NAME/tensorboard/ or results/NAME/wandb/ (W&B runs grouped by "
            "the search's name)",
        )


def storage_url(args: argparse.Namespace) -> str:
    """The database `--storage` names, or evo's default one."""
    from evo.storage import DEFAULT_URL

    return DEFAULT_URL if args.storage is None else args.storage


def open_storage(args: argparse.Namespace, *, create: bool = False) -> Storage:
    from evo.storage import Storage

    return Storage(storage_url(args), create=create)


def read_storage(args: argparse.Namespace) -> Storage:
    """The database for a command that only reads: never created, upgraded or written."""
    from evo.storage import Storage

    return Storage(storage_url(args), create=False, read_only=True)


def cmd_run(args: argparse.Namespace) -> int:
    from evo.data import prepare_data
    from evo.driver import check_checkpoints, checkpoint_store, open_run
    from evo.lease import RunLease
    from evo.operators import check_initial
    from evo.schedule.budget import check_budget
    from evo.space import load_space
    from evo.storage import RunStatus

    space = load_space(args.space, args.overrides)
    if args.dry_run:
        return dry_run(args, space)
    # The data, the initial genomes and the budget are checked before a run is created,
    # so a missing corpus or an impossible genome leaves nothing behind to clean up.
    data, vocab_size = prepare_data(space, progress=sys.stderr.isatty())
    check_budget(space, check_initial(space, vocab_size))
    storage = open_storage(args, create=True)
    name = args.name or args.space.stem
    if args.new:
        name = fresh_name(storage, name)
    new = open_run(storage, name, space)
    if not new and storage.require_run(name).status == RunStatus.FINISHED:
        print(f"run {name!r} is finished; see `evo status {name}`", file=sys.stderr)
        return 0
    lease = RunLease(storage, name)
    store = checkpoint_store(storage, name, args.checkpoints)
    if not new:
        lease.check_free()
        check_checkpoints(storage, name, space, store, go_on=args.without_missing_checkpoints)
    with lease:
        return search(args, storage, name, space, (data, vocab_size), store)


def dry_run(args: argparse.Namespace, space: SearchSpace) -> int:
    """Print what `evo run` would do with `space`, writing nothing: a corpus the cache
    lacks is tokenized in a temporary folder, removed after."""
    import tempfile

    from evo.data import prepare_data
    from evo.dry_run import plan_lines, probe, usable_workers
    from evo.operators import check_initial
    from evo.schedule.budget import check_budget

    with tempfile.TemporaryDirectory(prefix="evo-dry-run-") as scratch:
        data, vocab_size = prepare_data(space, sys.stderr.isatty(), scratch=Path(scratch))
    first = check_initial(space, vocab_size)
    check_budget(space, first)
    speed = probe(space, data, vocab_size, first[0])
    workers = usable_workers(space, args.local)
    for line in plan_lines(space, first[0], speed, len(data.pretrain.train), workers):
        print(line)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from evo.data import prepare_data
    from evo.driver import check_checkpoints, checkpoint_store, load_run_space
    from evo.lease import RunLease
    from evo.storage import RunStatus

    storage = open_storage(args)
    space = load_run_space(storage, args.name)
    if storage.require_run(args.name).status == RunStatus.FINISHED:
        print(f"run {args.name!r} is finished; see `evo status {args.name}`", file=sys.stderr)
        return 0
    lease = RunLease(storage, args.name)
    lease.check_free()
    store = checkpoint_store(storage, args.name, args.checkpoints)
    check_checkpoints(storage, args.name, space, store, go_on=args.without_missing_checkpoints)
    with lease:
        prepared = prepare_data(space, sys.stderr.isatty())
        return search(args, storage, args.name, space, prepared, store)


def search(
    args: argparse.Namespace,
    storage: Storage,
    name: str,
    space: SearchSpace,
    prepared: tuple[TrialData, int],
    store: CheckpointStore,
) -> int:
    from evo.describe import target_lines
    from evo.driver import make_search
    from evo.executor import make_executor
    from evo.storage import RunStatus
    from evo.view import TrackedView, make_view

    data, vocab_size = prepared
    for line in target_lines(space, len(data.pretrain.train)):
        print(f"evo: {line}", file=sys.stderr)
    executor = make_executor(space, local=args.local, address=args.address)
    elsewhere = executor.hosts() - {socket.gethostname()}
    if store.is_local and elsewhere and space.search.mode == "steady_state":
        print(
            f"evo: warning: checkpoints go to the folder {store.url}, and trials also run on "
            f"{', '.join(sorted(elsewhere))}: every node must see that folder (a shared "
            "filesystem), or pass --checkpoints with object storage (s3://…)",
            file=sys.stderr,
        )
    try:
        with make_view(space, name, quiet=args.quiet) as shown:
            view = shown
            if args.tracker != "none":
                view = TrackedView(shown, args.tracker, Path("results") / name, name)
            loop = make_search(space, name, storage, executor, data, vocab_size, view, store)
            summary = loop.run()
    except KeyboardInterrupt:
        storage.interrupt_active(name, at=datetime.now(timezone.utc))
        storage.set_run_status(name, RunStatus.INTERRUPTED)
        print(f"evo: stopped; resume with `evo resume {name}`", file=sys.stderr)
        return 130
    finally:
        executor.close()
    best = ", ".join(f"{k} {v:.4g}" for k, v in summary.best.items()) or "none"
    print(
        f"run {name!r}: {summary.detail}; {summary.trials} trained by this command; "
        f"best measured at the top rung: {best}"
    )
    return 0


def fresh_name(storage: Storage, name: str) -> str:
    taken = {run.name for run in storage.list_runs()}
    if name not in taken:
        return name
    suffix = 2
    while f"{name}-{suffix}" in taken:
        suffix += 1
    return f"{name}-{suffix}"


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from evo.generations import generations_complete

    storage = read_storage(args)
    table = Table("name", "status", "generations", "trials", "created", "updated")
    counts = storage.trial_counts()
    for run in storage.list_runs():
        generation = "-" if run.generation is None else str(generations_complete(run))
        table.add_row(
            run.name,
            run.shown_status,
            generation,
            str(counts.get(run.name, 0)),
            f"{run.created_at:%Y-%m-%d %H:%M}",
            f"{run.updated_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from evo.status import print_status, watch_status

    storage = read_storage(args)
    if args.watch is None:
        print_status(storage, args.name, Console())
    else:
        watch_status(storage, args.name, Console(), args.watch)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evo.report.page import write_report

    storage = read_storage(args)
    storage.require_run(args.name)
    out = args.out or Path("results") / args.name / "report.html"
    path = write_report(storage, args.name, out, plotly=args.plotly)
    print(path)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from evo.dashboard import serve_dashboard

    serve_dashboard(storage_url(args), host=args.host, port=args.port, token=args.token)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evo.export import export_trials

    storage = read_storage(args)
    storage.require_run(args.name)
    out = args.out or Path("results") / args.name / f"trials.{args.format}"
    print(export_trials(storage, args.name, out, args.format))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from evo.data import prepare_data
    from evo.describe import budget_text
    from evo.driver import load_run_space, record_unigram_baseline
    from evo.executor import make_executor
    from evo.promote import Budget
    from evo.status.trials import print_validation
    from evo.validate import (
        check_request,
        validate,
        validation_budget,
        validation_jobs,
        validation_report,
        validation_timeout,
    )

    check_request(len(args.genome) or args.top, args.seeds)
    storage = open_storage(args)
    space = load_run_space(storage, args.name)
    note_search(storage, args.name)
    budget = validation_budget(space, Budget(args.steps, args.tokens, args.seconds).limits())
    which = (
        f"genomes {', '.join(map(str, args.genome))}"
        if args.genome
        else f"its best {args.top} genomes"
    )
    print(
        f"evo: validating run {args.name!r}: {which}, {args.seeds} seeds "
        f"each, at {budget_text(budget)}",
        file=sys.stderr,
        flush=True,
    )
    data, vocab_size = prepare_data(space, progress=sys.stderr.isatty())
    record_unigram_baseline(storage, args.name, data)  # for a run made before it was stored
    jobs = validation_jobs(
        storage,
        args.name,
        space,
        vocab_size,
        top=args.top,
        seeds=args.seeds,
        budget=budget,
        genome_ids=args.genome,
    )
    timeout = validation_timeout(space, budget)
    limit = "" if args.local or timeout is None else f", each stopped after {timeout:,.0f} s"
    print(f"evo: {len(jobs)} validation trials to run{limit}", file=sys.stderr)
    executor = make_executor(space, local=args.local, address=args.address, timeout_s=timeout)
    try:
        executor.load_data(data)
        validate(storage, args.name, space, executor, jobs, budget, say=_progress_line)
    except KeyboardInterrupt:
        print(f"evo: stopped; run `evo validate {args.name}` again to finish", file=sys.stderr)
        return 130
    finally:
        executor.close()
    report = validation_report(storage, args.name, space, budget)
    assert report is not None  # validations were just stored
    print_validation(report, Console(), table=True)
    return 0


def note_search(storage: Storage, name: str) -> None:
    """Say so when a search of the run is still going: `evo validate` and `evo promote`
    work beside it (they hold no lease and write rows of their own), on the best of what
    it has found so far."""
    run = storage.require_run(name)
    if run.shown_status == "running" and run.driver is not None:
        print(
            f"evo: run {name!r} is still being searched by {run.driver}: its best so far "
            "may not be its best at the end",
            file=sys.stderr,
        )


def _progress_line(line: str) -> None:
    print(f"evo: {line}", file=sys.stderr, flush=True)


def cmd_promote(args: argparse.Namespace) -> int:
    from evo.promote import Budget, HorizonRate, Scaling, promote

    budget = Budget(args.steps, args.tokens, args.seconds)
    scaling = Scaling(args.width, args.layers, args.parametrization)
    horizon = HorizonRate(args.lr_horizon)
    storage = open_storage(args)
    note_search(storage, args.name)
    out = promote(
        storage,
        args.name,
        genome_id=args.genome,
        objective=args.objective,
        budget=budget,
        scaling=scaling,
        horizon=horizon,
        corpus=args.corpus,
        out=args.out,
        resume=args.resume,
        nproc=args.nproc,
        say=_progress_line,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
