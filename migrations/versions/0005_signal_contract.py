"""the signal contract: orders.requested_amount, signals.idempotency_key

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding them rewrites no row. Older orders read
    # as having asked for exactly their amount; older outbox rows have no key (a
    # signal id recorded twice before this revision stays recorded twice).
    op.add_column("orders", sa.Column("requested_amount", sa.Numeric(), nullable=True))
    op.add_column("signals", sa.Column("idempotency_key", sa.String(length=36), nullable=True))
    op.create_index("uq_signals_idempotency_key", "signals", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_signals_idempotency_key", table_name="signals")
    op.drop_column("signals", "idempotency_key")
    op.drop_column("orders", "requested_amount")
