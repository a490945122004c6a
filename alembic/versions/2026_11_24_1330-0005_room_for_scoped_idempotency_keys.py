"""room for scoped idempotency keys

A client's key may be 200 characters; stored behind its scope (`deployment:`, `create:`)
it did not fit in 200.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 13:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "run",
        "idempotency_key",
        existing_type=sa.String(length=200),
        type_=sa.String(length=255),
        existing_nullable=True,
    )


def downgrade() -> None:
    op.alter_column(
        "run",
        "idempotency_key",
        existing_type=sa.String(length=255),
        type_=sa.String(length=200),
        existing_nullable=True,
    )
