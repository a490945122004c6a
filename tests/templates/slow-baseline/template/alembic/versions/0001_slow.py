import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("item", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("SELECT pg_sleep(3)")


def downgrade() -> None:
    op.drop_table("item")
