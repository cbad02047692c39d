"""Finding a person by their email address from an index (``lookup.search``).

Revision ID: 0005
Revises: 0004

- ``ix_subject_email``: the workspace's search by address (``GET /subjects?q=``,
  ``GET /api/v1/subjects?q=``) compares the stored, normalised address for equality; without
  the index every search read the whole ``subject`` table (a sequential scan of 1,000,000 rows
  on PostgreSQL). Erased subjects hold no address (None), so they are never found by one.

Building it reads the ``subject`` table once (seconds at a million people); downgrade drops it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_subject_email"


def upgrade() -> None:
    op.create_index(_NAME, "subject", ["email"])


def downgrade() -> None:
    op.drop_index(_NAME, table_name="subject")
