"""keys bound to existing projects

A key could be bound to a project id that did not exist.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 14:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_foreign_key(
        "fk_api_key_project_id_project", "api_key", "project", ["project_id"], ["id"]
    )


def downgrade() -> None:
    op.drop_constraint("fk_api_key_project_id_project", "api_key", type_="foreignkey")
