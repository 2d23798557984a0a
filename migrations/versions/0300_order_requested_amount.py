"""orders.requested_amount: the amount a signal asked, before the market's step

Revision ID: 0300_order_requested_amount
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0300_order_requested_amount"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites no row. Older orders read
    # as having asked for exactly their amount.
    op.add_column("orders", sa.Column("requested_amount", sa.Numeric(), nullable=True))


def downgrade() -> None:
    op.drop_column("orders", "requested_amount")
