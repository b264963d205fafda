"""Unigram baselines and unambiguous measurements (schema version 4).

- evo_runs: `unigram_bits_per_byte`, the bits per byte of the best unigram model of the
  validation text, by which a trial that learned nothing is told apart (NULL until a
  search of the run prepares its data again).
- evo_promotions: metrics stored by evo-llm 0.1 named the validation loss `loss` and the
  number of tokens evaluated `tokens`, the name trials use for tokens trained; they are
  renamed `val_loss` and `eval_tokens` (the tokens trained were not stored then).
- evo_trials: `peak_memory_bytes` of a trial not trained on a GPU was the growth of its
  worker's resident size, which also holds what the worker loaded before (interpreter,
  torch, earlier trials); it measured nothing of the trial and is cleared.

Revision ID: 0004
Revises: 0003
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration describes the schema of its own day.
RENAMED = {"loss": "val_loss", "tokens": "eval_tokens"}


def upgrade() -> None:
    op.add_column("evo_runs", sa.Column("unigram_bits_per_byte", sa.Float(), nullable=True))
    _rename_promotion_metrics()
    op.execute(
        "UPDATE evo_trials SET peak_memory_bytes = NULL "
        "WHERE device IS NULL OR device NOT LIKE 'cuda%'"
    )
    op.execute("UPDATE evo_schema SET version = 4")


def _rename_promotion_metrics() -> None:
    connection = op.get_bind()
    promotions = sa.table(
        "evo_promotions", sa.column("id", sa.Integer), sa.column("metrics", sa.JSON)
    )
    rows = connection.execute(sa.select(promotions.c.id, promotions.c.metrics)).all()
    for promotion_id, metrics in rows:
        # Metrics with eval_tokens were stored under today's names already.
        if not metrics or "eval_tokens" in metrics:
            continue
        connection.execute(
            promotions.update()
            .where(promotions.c.id == promotion_id)
            .values(metrics=_renamed(metrics))
        )


def _renamed(metrics: dict[str, Any]) -> dict[str, Any]:
    return {RENAMED.get(key, key): value for key, value in metrics.items()}
