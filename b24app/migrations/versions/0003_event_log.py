"""the event log

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import b24app.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "event_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("occurred_at", b24app.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("message", sa.String(length=255), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("event_log", schema=None) as batch_op:
        batch_op.create_index("ix_event_log_occurred", ["occurred_at", "id"], unique=False)
        batch_op.create_index(
            "ix_event_log_member_occurred", ["member_id", "occurred_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_event_log_kind_occurred", ["kind", "occurred_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_event_log_outcome_occurred", ["outcome", "occurred_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_event_log_member_kind_occurred",
            ["member_id", "kind", "occurred_at", "id"],
            unique=False,
        )


def downgrade():
    op.drop_table("event_log")
