"""File expiry and size in characters, the reproducibility manifest on jobs, and measured throughput.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("n_chars", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("manifest", sa.JSON(), nullable=True))
    op.create_table(
        "throughput",
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("worker_class", sa.String(length=128), nullable=False),
        sa.Column("tokens_per_second", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "worker_class"),
    )


def downgrade() -> None:
    op.drop_table("throughput")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("manifest")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("n_chars")
        batch.drop_column("expires_at")
