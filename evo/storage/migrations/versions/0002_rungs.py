"""Rungs and steady-state searches (schema version 2).

- evo_trials: one row per genome and rung. New columns `rung`, `decision` (the search's
  decisions in order), `seen` (results recorded when it was made), `recorded` (the order
  results came in), `budget`, `seed`, `continued_from` and `checkpoint`; `generation`
  may be empty (steady-state searches have none); the statuses `retried` and
  `interrupted` keep lost attempts in the history instead of deleting them.
- evo_runs: `results`, how many trial results the run has recorded (the last number of
  the order they were recorded in).
- evo_sessions: each `evo run` or `evo resume` of a run, with its worker count.
- Runs made before this version were generational searches: their stored spaces say so,
  since the default mode is now steady_state.

Revision ID: 0002
Revises: 0001
"""

import hashlib

import sqlalchemy as sa
import yaml
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration describes the schema of its own day.
STATUSES = (
    "queued",
    "running",
    "done",
    "diverged",
    "invalid",
    "failed",
    "timeout",
    "retried",
    "interrupted",
)
RESULTS = ("done", "diverged", "invalid", "failed", "timeout")
CONTINUED_FROM_FK = "evo_trials_continued_from_fkey"


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def upgrade() -> None:
    with op.batch_alter_table("evo_trials", recreate="auto") as batch:
        batch.alter_column("generation", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("rung", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("decision", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("seen", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("recorded", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("seed", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("continued_from", sa.Integer(), nullable=True))
        batch.create_foreign_key(CONTINUED_FROM_FK, "evo_trials", ["continued_from"], ["id"])
        batch.add_column(sa.Column("checkpoint", sa.Text(), nullable=True))
        batch.drop_constraint("evo_trials_status", type_="check")
        batch.create_check_constraint("evo_trials_status", f"status IN ({_quoted(STATUSES)})")
    # Each old trial was its own decision, and results were recorded in trial order.
    op.execute("UPDATE evo_trials SET decision = id")
    op.execute(f"UPDATE evo_trials SET recorded = id WHERE status IN ({_quoted(RESULTS)})")
    with op.batch_alter_table("evo_runs") as batch:
        batch.add_column(sa.Column("results", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE evo_runs SET results = COALESCE((SELECT MAX(t.recorded) FROM evo_trials t "
        "JOIN evo_genomes g ON t.genome_id = g.id WHERE g.run_id = evo_runs.id), 0)"
    )
    op.create_table(
        "evo_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("evo_runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("workers", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    _mark_runs_generational()
    op.execute("UPDATE evo_schema SET version = 2")


def _mark_runs_generational() -> None:
    connection = op.get_bind()
    runs = sa.table(
        "evo_runs",
        sa.column("id", sa.Integer),
        sa.column("space_yaml", sa.Text),
        sa.column("space_sha256", sa.String),
    )
    for run_id, text in connection.execute(sa.select(runs.c.id, runs.c.space_yaml)).all():
        space = yaml.safe_load(text)
        if not isinstance(space, dict) or "mode" in space.get("search", {}):
            continue
        space["search"] = {"mode": "generational", **space.get("search", {})}
        new_text = yaml.safe_dump(space, sort_keys=False, default_flow_style=None)
        digest = hashlib.sha256(new_text.encode()).hexdigest()
        connection.execute(
            runs.update()
            .where(runs.c.id == run_id)
            .values(space_yaml=new_text, space_sha256=digest)
        )
