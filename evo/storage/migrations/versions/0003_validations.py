"""Validation trials (schema version 3): `evo_validations`, one row per genome, budget
and seed that `evo validate` retrained.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
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


def upgrade() -> None:
    allowed = ", ".join(f"'{status}'" for status in STATUSES)
    op.create_table(
        "evo_validations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("evo_runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "genome_id",
            sa.Integer(),
            sa.ForeignKey("evo_genomes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("budget_key", sa.String(64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(f"status IN ({allowed})", name="evo_validations_status"),
        sa.UniqueConstraint("genome_id", "budget_key", "seed"),
    )
    op.create_index("ix_evo_validations_run_id", "evo_validations", ["run_id"])
    op.execute("UPDATE evo_schema SET version = 3")
