"""Link stored idempotent answers to the subject they concern, so erasure removes them too.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency") as batch_op:
        batch_op.add_column(sa.Column("subject_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_idempotency_subject_id"), ["subject_id"])


def downgrade() -> None:
    with op.batch_alter_table("idempotency") as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_subject_id"))
        batch_op.drop_column("subject_id")
