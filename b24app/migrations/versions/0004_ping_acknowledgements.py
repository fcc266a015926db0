"""ping acknowledgements, so that each user's page counts a ping once

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

import b24app.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ping_acknowledgements",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", b24app.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["member_id"], ["portals.member_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("member_id", "sequence", "user_id"),
    )


def downgrade():
    op.drop_table("ping_acknowledgements")
