"""migration settings and version tables

How a project's migrations run (ini section, its env.py or Hatchery's, version table,
requirements, variables), and where each environment keeps its revision.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 15:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "project",
        sa.Column("migration_settings", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("environment", sa.Column("version_table", sa.String(length=130), nullable=True))


def downgrade() -> None:
    op.drop_column("environment", "version_table")
    op.drop_column("project", "migration_settings")
