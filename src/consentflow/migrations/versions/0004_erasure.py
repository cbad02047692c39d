"""Erasure that keeps the proof: erased subjects, per-subject data keys, erasure webhooks.

Revision ID: 0004
Revises: 0003

- ``subject.erased_at`` (when the person was erased; None while not) and ``subject.generation``
  (which registration of an external id the row is: 1 for every existing row).
- ``subject_key``: one sealed data key per erased subject (``datakeys``); ``sealed_key`` None
  once destroyed (crypto-shredding).
- ``delivery``: a ``subject.erased`` webhook is about a subject, not a consent event, so
  ``event_id`` becomes nullable and ``erasure_subject_id`` names the subject (one delivery per
  system and erased subject; a check keeps exactly one of the two set).

SQLite cannot drop a NOT NULL in place: ``delivery`` is rebuilt (copied once: seconds at a year
of deliveries). A rebuild drops the old table, which SQLite refuses while foreign keys are
enforced and ``delivery_attempt`` rows point at it, and ``PRAGMA foreign_keys`` cannot change
inside a transaction: so the rebuild runs in a transaction of its own with foreign keys off,
checked with ``PRAGMA foreign_key_check`` before it commits, and the connection gets them back
on before the rest of this revision. A crash between the two commits leaves the rebuilt table
and revision 0003 recorded; running the upgrade again skips the rebuild (it is detected). On
PostgreSQL every step is an in-place ``ALTER TABLE``.

Downgrade drops the erasure webhooks (and their attempts), the keys and the columns.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

import consentflow.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "(event_id IS NULL) <> (erasure_subject_id IS NULL)"


@contextmanager
def _foreign_keys_off(table: str) -> Iterator[None]:
    """On SQLite: a transaction of its own with foreign keys off, for rebuilding ``table``."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    raw = bind.connection.driver_connection
    assert raw is not None
    raw.execute("COMMIT")  # what the earlier revisions of this run did is kept
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("BEGIN IMMEDIATE")
    try:
        yield
        broken = raw.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"rebuilding {table} broke {len(broken)} foreign key(s)")
        raw.execute("COMMIT")
    except BaseException:
        raw.execute("ROLLBACK")
        raise
    finally:
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("BEGIN IMMEDIATE")  # the transaction the migration context goes on with


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    if "erasure_subject_id" not in _columns("delivery"):
        with _foreign_keys_off("delivery"), op.batch_alter_table("delivery") as batch_op:
            batch_op.alter_column("event_id", existing_type=sa.Uuid(), nullable=True)
            batch_op.add_column(sa.Column("erasure_subject_id", sa.Integer(), nullable=True))
            batch_op.create_foreign_key(
                op.f("fk_delivery_erasure_subject_id_subject"),
                "subject",
                ["erasure_subject_id"],
                ["id"],
            )
            batch_op.create_unique_constraint(
                op.f("uq_delivery_erasure_subject_id_system_id"),
                ["erasure_subject_id", "system_id"],
            )
            batch_op.create_check_constraint(op.f("ck_delivery_one_target"), _CHECK)
    op.add_column(
        "subject",
        sa.Column("generation", sa.Integer(), server_default="1", nullable=False),
    )
    op.add_column(
        "subject",
        sa.Column("erased_at", consentflow.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "subject_key",
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("sealed_key", sa.String(length=500), nullable=True),
        sa.Column("created_at", consentflow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", consentflow.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subject.id"], name=op.f("fk_subject_key_subject_id_subject")
        ),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_subject_key")),
    )


def downgrade() -> None:
    op.drop_table("subject_key")
    erasures = "SELECT id FROM delivery WHERE erasure_subject_id IS NOT NULL"
    op.execute(f"DELETE FROM delivery_attempt WHERE delivery_id IN ({erasures})")
    op.execute("DELETE FROM delivery WHERE erasure_subject_id IS NOT NULL")
    with _foreign_keys_off("delivery"), op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_constraint(op.f("ck_delivery_one_target"), type_="check")
        batch_op.drop_constraint(op.f("uq_delivery_erasure_subject_id_system_id"), type_="unique")
        batch_op.drop_constraint(op.f("fk_delivery_erasure_subject_id_subject"), type_="foreignkey")
        batch_op.drop_column("erasure_subject_id")
        batch_op.alter_column("event_id", existing_type=sa.Uuid(), nullable=False)
    with _foreign_keys_off("subject"), op.batch_alter_table("subject") as batch_op:
        batch_op.drop_column("erased_at")
        batch_op.drop_column("generation")
