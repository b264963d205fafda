"""Baseline: the schema that evo-llm 0.1 created (schema version 1).

Databases of that release have no alembic_version table; evo stamps them with this
revision before upgrading them, so the revision itself changes nothing.

Revision ID: 0001
Revises:
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to do: a version-1 database already has this schema."""
