"""A trial's metrics in one JSON column (schema version 6).

- evo_trials: `metrics`, the metrics the trial measured by name, so that a new metric
  needs no new column. The values of the metric columns move there and the columns
  are dropped; a NULL is left out, and so is an infinite value (strict JSON has none).

Revision ID: 0006
Revises: 0005
"""

import math

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration describes the schema of its own day.
METRIC_COLUMNS = (
    "val_loss",
    "perplexity",
    "bits_per_byte",
    "accuracy",
    "train_tokens_per_s",
    "decode_tokens_per_s",
    "params",
    "params_non_embedding",
    "flops_per_token",
    "peak_memory_bytes",
    "wall_seconds",
    "steps",
    "tokens",
)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def upgrade() -> None:
    op.add_column("evo_trials", sa.Column("metrics", sa.JSON(), nullable=True))
    trials = sa.table(
        "evo_trials",
        sa.column("id", sa.Integer()),
        sa.column("metrics", sa.JSON()),
        *(sa.column(name) for name in METRIC_COLUMNS),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(trials.c.id, *(trials.c[n] for n in METRIC_COLUMNS)))
    moved = [
        {"trial_id": row.id, "values": values}
        for row in rows.mappings()
        if (values := {n: row[n] for n in METRIC_COLUMNS if _finite(row[n])})
    ]
    if moved:
        connection.execute(
            trials.update()
            .where(trials.c.id == sa.bindparam("trial_id"))
            .values(metrics=sa.bindparam("values", type_=sa.JSON())),
            moved,
        )
    with op.batch_alter_table("evo_trials") as batch:
        for name in METRIC_COLUMNS:
            batch.drop_column(name)
    op.execute("UPDATE evo_schema SET version = 6")
