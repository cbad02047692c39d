"""The undelivered queue by endpoint from an index alone (``/metrics``).

Revision ID: 0003
Revises: 0002

- ``ix_delivery_state_system_id_attempts_created_at``: the outbox gauges of ``reports.metrics``
  (queue depth by endpoint and state, dead letters, oldest undelivered age) read only the
  undelivered rows and only this index; without it SQLite's planner scanned every delivery
  to group by endpoint (0.4 s at 200,000 deliveries, on every scrape).

Building it reads the ``delivery`` table once (seconds at a year of deliveries); downgrade drops
it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_delivery_state_system_id_attempts_created_at"


def upgrade() -> None:
    op.create_index(_NAME, "delivery", ["state", "system_id", "attempts", "created_at"])


def downgrade() -> None:
    op.drop_index(_NAME, table_name="delivery")
