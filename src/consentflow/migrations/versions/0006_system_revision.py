"""A revision on each downstream system, for forms that must act once (issue 10).

Revision ID: 0006
Revises: 0005

- ``system.revision``: one more at every change of the system's status and every replay of one
  of its deliveries (``delivery.ops``). A workspace form (pause, resume, replay) carries the
  revision it was shown with and acts only if it still holds, so a form sent again after any
  later change (a pause form after the resume that followed it, a replay form after the dead
  letter died again) does nothing. Existing systems start at 0.

Adding a column with a default rewrites nothing on PostgreSQL 11+ and SQLite; downgrade drops it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("system", sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("system") as batch:
        batch.drop_column("revision")
