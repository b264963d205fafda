"""The forecast of a target beyond the top rung (schema version 7).

- evo_forecasts: a run's latest fit of its rung scores (the law's exponent, its error κ,
  the seed noise and where it came from, the law's check on the run itself).
- evo_predictions: each genome's predicted score at the run's target from that fit, with
  its interval.
- evo_runs: `train_tokens`, the tokens of the pretraining corpus's training split (how
  many passes over it the target makes). NULL for runs recorded before.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evo_forecasts",
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("evo_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("level", sa.Float(), nullable=False),
        sa.Column("recorded", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("law_error", sa.Float(), nullable=False),
        sa.Column("noise", sa.Float(), nullable=False),
        sa.Column("noise_source", sa.String(16), nullable=False),
        sa.Column("check", sa.JSON(), nullable=True),
    )
    op.create_table(
        "evo_predictions",
        sa.Column(
            "genome_id",
            sa.Integer(),
            sa.ForeignKey("evo_genomes.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("evo_runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.Column("sd", sa.Float(), nullable=False),
        sa.Column("measured", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_evo_predictions_run_id", "evo_predictions", ["run_id"])
    op.add_column("evo_runs", sa.Column("train_tokens", sa.BigInteger(), nullable=True))
    op.execute("UPDATE evo_schema SET version = 7")
