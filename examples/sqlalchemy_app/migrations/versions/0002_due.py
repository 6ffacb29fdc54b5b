"""a due date, and 'untitled' as the default title (batch mode: the table is rebuilt)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notes") as batch:
        batch.add_column(sa.Column("due", sa.String(), nullable=True))
        batch.alter_column("title", server_default="untitled", existing_type=sa.String())


def downgrade() -> None:
    with op.batch_alter_table("notes") as batch:
        batch.drop_column("due")
        batch.alter_column("title", server_default="", existing_type=sa.String())
