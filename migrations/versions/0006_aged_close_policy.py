"""aged episodes: the failure policy's state, and one current episode per position

``last_attempt_at`` (the backoff runs from it) and ``alerted_failures`` (the
failure count of the last ``aged_close_failing`` alert) are what the policy
after failed closes reads. The unique index on an open position's episode
now covers ``unclosable`` too: that episode stays the position's current one
until the position closes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRACKED = "status IN ('active', 'closing')"
_CURRENT = "status IN ('active', 'closing', 'unclosable')"


def upgrade() -> None:
    op.add_column(
        "aged_positions", sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "aged_positions",
        sa.Column("alerted_failures", sa.Integer(), server_default="0", nullable=False),
    )
    op.drop_index(
        "uq_aged_positions_active_position",
        table_name="aged_positions",
        postgresql_where=sa.text(_TRACKED),
    )
    op.create_index(
        "uq_aged_positions_active_position",
        "aged_positions",
        ["position_id"],
        unique=True,
        postgresql_where=sa.text(_CURRENT),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_aged_positions_active_position",
        table_name="aged_positions",
        postgresql_where=sa.text(_CURRENT),
    )
    op.create_index(
        "uq_aged_positions_active_position",
        "aged_positions",
        ["position_id"],
        unique=True,
        postgresql_where=sa.text(_TRACKED),
    )
    op.drop_column("aged_positions", "alerted_failures")
    op.drop_column("aged_positions", "last_attempt_at")
