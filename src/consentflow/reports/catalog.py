"""Which downstream systems receive each purpose (the purpose list of the API shows them)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from consentflow.models import Purpose, System, SystemPurpose


def purpose_systems(session: Session) -> dict[str, list[str]]:
    """The names of the systems registered for each purpose, by purpose key, names sorted."""
    names: dict[str, list[str]] = {}
    for key, name in session.exec(
        select(Purpose.key, System.name)
        .join(SystemPurpose, col(SystemPurpose.purpose_id) == Purpose.id)
        .join(System, col(System.id) == SystemPurpose.system_id)
        .order_by(col(System.name))
    ).all():
        names.setdefault(key, []).append(name)
    return names
