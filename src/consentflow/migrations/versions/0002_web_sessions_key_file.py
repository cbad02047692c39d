"""Server-side web sessions; the instance secret leaves the database (issue 14).

Revision ID: 0002
Revises: 0001

- ``web_session``: one row per browser sign-in; the cookie carries a random id, the row only its
  SHA-256 hash, so logout, token revocation and expiry end a session on the server.
- ``instance_key``: an older consentflow generated the instance secret into this table, so a
  database dump held the key to every link and pseudonym. Its key is first written to the key
  file (``keys.adopt_legacy_secret``: once, mode 0600; refused if a different key is there
  already), so links already sent keep working, then the table is dropped. On SQLite the freed
  pages are overwritten (``secure_delete``) so the key does not linger in the file.

Downgrade puts the key file's key back into ``instance_key`` (what 0001 expects).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import consentflow.models
from consentflow import keys

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "web_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("id_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", consentflow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", consentflow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", consentflow.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", consentflow.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_token.id"], name=op.f("fk_web_session_token_id_api_token")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_session")),
        sa.UniqueConstraint("id_hash", name=op.f("uq_web_session_id_hash")),
    )
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_session_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_web_session_token_id"), ["token_id"], unique=False)

    bind = op.get_bind()
    row = bind.execute(sa.text("SELECT secret FROM instance_key WHERE id = 1")).first()
    if row is not None:
        keys.adopt_legacy_secret(bind.engine.url, row[0])
    if bind.dialect.name == "sqlite":
        op.execute("PRAGMA secure_delete = ON")
        op.execute("DELETE FROM instance_key")
    op.drop_table("instance_key")


def downgrade() -> None:
    op.create_table(
        "instance_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", consentflow.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_key")),
    )
    bind = op.get_bind()
    path = keys.key_file_path(bind.engine.url)
    if path.exists():
        table = sa.table(
            "instance_key",
            sa.column("id", sa.Integer()),
            sa.column("secret", sa.String()),
            sa.column("created_at", consentflow.models.UTCDateTime(timezone=True)),
        )
        secret = path.read_text(encoding="utf-8").strip()
        op.bulk_insert(
            table, [{"id": 1, "secret": secret, "created_at": consentflow.models.utcnow()}]
        )
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_session_token_id"))
        batch_op.drop_index(batch_op.f("ix_web_session_expires_at"))
    op.drop_table("web_session")
