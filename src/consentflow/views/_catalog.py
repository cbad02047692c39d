"""Output models: the instance, purposes and their notices, downstream systems."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from consentflow.views._base import Name, View

# ----------------------------------------------------------------------------------- basics


class Health(View):
    status: Literal["ok"]
    database: Literal["ok"]


class Me(View):
    name: str
    scope: Name
    system: str | None


class Revision(View):
    """The schema revision the database is at (``db upgrade``)."""

    revision: str | None


# --------------------------------------------------------------------------------- purposes


class PurposeVersionOut(View):
    key: str
    version: int
    title: str
    description: str
    #: ``{locale: {title?, description?}}``; a missing one falls back to title / description.
    texts: dict[str, dict[str, str]] = Field(default_factory=dict)
    lawful_basis: Name
    data_categories: list[str]
    validity_days: int
    material: bool
    created_at: datetime

    @classmethod
    def of(cls, key: str, version: Any) -> PurposeVersionOut:
        """From a purpose key and one of its ``models.PurposeVersion`` rows."""
        own = set(cls.model_fields) - {"key"}
        return cls(key=key, **{name: getattr(version, name) for name in own})


class PurposeOut(View):
    key: str
    current_version: int
    #: The newest material version: consents on older versions must be re-confirmed.
    material_version: int
    notice: PurposeVersionOut
    systems: list[str]


class PurposeDetail(PurposeOut):
    versions: list[PurposeVersionOut]


# ---------------------------------------------------------------------------------- systems


class SystemOut(View):
    name: str
    display_name: str  # shown to people; the name when none was given
    purposes: list[str]
    webhook_url: str | None
    status: Name


class SystemCreated(View):
    """A registered system with its webhook secret, shown this once."""

    name: str
    webhook_url: str | None
    webhook_secret: str | None


class SystemStatusOut(View):
    """An endpoint after pause / resume / disable / enable, with its pending deliveries."""

    name: str
    status: Name
    reason: str | None
    pending: int


class SecretRotated(View):
    name: str
    webhook_secret: str
    grace_hours: float
