"""Record each LoRA's sampling temperature (the prior's starting-noise scale); rows made
before it existed were sampled at 1.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loras") as batch_op:
        batch_op.add_column(
            sa.Column("temperature", sa.String(length=32), nullable=False, server_default="1.0")
        )


def downgrade() -> None:
    with op.batch_alter_table("loras") as batch_op:
        batch_op.drop_column("temperature")
