"""signals: the producers' outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signals",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("task_name", sa.String(length=64), nullable=False),
        sa.Column("signal_id", sa.Text(), nullable=False),
        sa.Column("client_order_id", sa.String(length=36), nullable=True),
        sa.Column("kwargs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_sent_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_signals")),
    )
    op.create_index("ix_signals_signal_id", "signals", ["signal_id"], unique=False)
    op.create_index(
        "ix_signals_unsettled",
        "signals",
        ["last_sent_at"],
        unique=False,
        postgresql_where=sa.text("settled_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_signals_unsettled", table_name="signals", postgresql_where=sa.text("settled_at IS NULL")
    )
    op.drop_index("ix_signals_signal_id", table_name="signals")
    op.drop_table("signals")
