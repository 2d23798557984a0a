"""kill_switch: the durable state of the kill switch

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kill_switch",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("engaged", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("set_by", sa.Text(), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_kill_switch_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kill_switch")),
    )


def downgrade() -> None:
    op.drop_table("kill_switch")
