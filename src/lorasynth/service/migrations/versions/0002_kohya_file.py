"""Store each LoRA's kohya file as its own blob (stable sha256 and ETag per format).

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
    with op.batch_alter_table("loras") as batch_op:
        batch_op.add_column(sa.Column("kohya_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loras") as batch_op:
        batch_op.drop_column("kohya_sha256")
