"""portal access problems and backoff; application_token as text (it is stored encrypted)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import b24app.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("portals", schema=None) as batch_op:
        batch_op.alter_column(
            "application_token", existing_type=sa.String(length=128), type_=sa.Text()
        )
        batch_op.add_column(sa.Column("access_problem", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("access_problem_detail", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(
            sa.Column("access_problem_at", b24app.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("backoff_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("backoff_until", b24app.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade():
    with op.batch_alter_table("portals", schema=None) as batch_op:
        batch_op.drop_column("backoff_until")
        batch_op.drop_column("backoff_failures")
        batch_op.drop_column("access_problem_at")
        batch_op.drop_column("access_problem_detail")
        batch_op.drop_column("access_problem")
        batch_op.alter_column(
            "application_token", existing_type=sa.Text(), type_=sa.String(length=128)
        )
