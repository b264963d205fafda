"""The checkpoint store of a run (schema version 9).

- evo_runs: `checkpoints`, the URL of the store that holds the run's paused trials'
  checkpoints (`evo run --checkpoints`); NULL for a run recorded before, whose
  checkpoints are in `results/NAME/trials` under the folder it is resumed from.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evo_runs", sa.Column("checkpoints", sa.Text(), nullable=True))
    op.execute("UPDATE evo_schema SET version = 9")
