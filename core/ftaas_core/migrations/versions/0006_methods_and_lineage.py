"""Preference tuning and continued fine-tunes: the format a file holds, a job's method, the
catalogue model it trains (its ``model`` may be a fine-tuned one) and what it continues from.

Existing files keep a NULL format (they were all supervised); existing jobs are supervised and
trained the model they name.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("dataset_format", sa.String(length=16), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("method", sa.String(length=16), nullable=False, server_default="supervised")
        )
        batch.add_column(sa.Column("base_model", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("parent", sa.JSON(), nullable=True))
    op.execute("UPDATE jobs SET base_model = model")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("base_model", existing_type=sa.String(length=256), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parent")
        batch.drop_column("base_model")
        batch.drop_column("method")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("dataset_format")
