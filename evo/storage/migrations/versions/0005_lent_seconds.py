"""Cores lent to the last trials (schema version 5).

- evo_trials: `lent_seconds`, the worker-seconds of idle workers whose cores trained the
  trial (at the end of a budget or a generation, the trials still running train with
  the idle workers' threads too). NULL for trials recorded before.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evo_trials", sa.Column("lent_seconds", sa.Float(), nullable=True))
    op.execute("UPDATE evo_schema SET version = 5")
