"""refreshes, deploy windows and schedules

Per environment: masking rules (for refreshes into it), deploy windows, a refresh
schedule and when it next fires. Per run: `not_before`, when a `scheduled` run may start.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 19:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for name in ("masking_rules", "deploy_windows", "refresh_schedule"):
        op.add_column(
            "environment",
            sa.Column(name, postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        )
    op.add_column(
        "environment", sa.Column("refresh_next_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_environment_refresh_next_at",
        "environment",
        ["refresh_next_at"],
        postgresql_where=sa.text("refresh_next_at IS NOT NULL"),
    )
    op.add_column("run", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("run", "not_before")
    op.drop_index("ix_environment_refresh_next_at", table_name="environment")
    for name in ("refresh_next_at", "refresh_schedule", "deploy_windows", "masking_rules"):
        op.drop_column("environment", name)
