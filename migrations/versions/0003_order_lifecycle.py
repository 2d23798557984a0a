"""orders: the task that placed an order, and when its unknown outcome was alerted

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The Celery task whose result a tracker updates when a resting or unknown order ends.
    op.add_column("orders", sa.Column("task_id", sa.String(length=255), nullable=True))
    # Set once the critical alert for an order whose create stays unknown was raised.
    op.add_column("orders", sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("orders", "alerted_at")
    op.drop_column("orders", "task_id")
