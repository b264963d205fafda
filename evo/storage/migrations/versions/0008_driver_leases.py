"""Driver leases (schema version 8).

- evo_runs: the driver that holds the run (`driver_host`, `driver_pid`,
  `driver_started`), its `heartbeat`, when its lease expires (`lease_expires`), and
  `lease`, how many times a driver took the run (the fencing token its writes are checked
  against). Times are seconds since the epoch by the database's clock. Runs recorded
  before have no driver: lease 0, the rest NULL.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evo_runs", sa.Column("lease", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("evo_runs", sa.Column("driver_host", sa.String(255), nullable=True))
    op.add_column("evo_runs", sa.Column("driver_pid", sa.Integer(), nullable=True))
    for column in ("driver_started", "heartbeat", "lease_expires"):
        op.add_column("evo_runs", sa.Column(column, sa.Float(), nullable=True))
    op.execute("UPDATE evo_schema SET version = 8")
