"""Downstream systems: which purposes each may process, and where its webhooks go."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass

from sqlmodel import Session, col, select

from consentflow import audit, purposes, secretbox, webhook_urls
from consentflow.actors import Actor, audit_fields, check_text, column_length
from consentflow.errors import Conflict, InvalidInput, NotFound
from consentflow.models import Purpose, System, SystemPurpose

_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{column_length('system', 'name') - 1}}}$")


def check_display_name(display_name: str | None) -> str | None:
    """The name people see, trimmed (None or blank: the system's name is shown)."""
    if display_name is None or not display_name.strip():
        return None
    return check_text(display_name.strip(), "system", "display_name", "the display name")


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_webhook_url(url: str) -> str:
    """Length (the column's) and printable text, then shape and the SSRF rules
    (``webhook_urls.check_registration``; checked again at every send). ``InvalidInput`` in one
    line for any URL that breaks them, however malformed."""
    check_text(url, "system", "webhook_url", "the webhook URL")
    if any(c.isspace() for c in url):
        raise InvalidInput("bad webhook URL: it must not contain spaces")
    return webhook_urls.check_registration(url)


@dataclass(frozen=True)
class SystemView:
    name: str
    display_name: str
    purposes: list[str]
    webhook_url: str | None
    status: str


def add(
    session: Session,
    name: str,
    purpose_keys: list[str],
    *,
    webhook_url: str | None = None,
    display_name: str | None = None,
    actor: Actor | None = None,
) -> tuple[System, str | None]:
    """Register a system for ``purpose_keys``; returns it and its webhook secret (shown once).

    ``display_name``: what people are shown as a recipient of their data (default: ``name``)."""
    if not _NAME.match(name):
        raise InvalidInput(f"bad system name {name!r}: use letters, digits, '_', '-', '.'")
    if not purpose_keys:
        raise InvalidInput("give at least one purpose the system may process (--purposes a,b)")
    display_name = check_display_name(display_name)
    infos = purposes.info(session, purpose_keys)
    if webhook_url is not None:
        check_webhook_url(webhook_url)
    if session.exec(select(System.id).where(System.name == name)).first():
        raise Conflict(f"system {name!r} exists already")
    secret = new_secret() if webhook_url else None
    stored = None
    if secret:
        stored = secretbox.seal(session, secret)  # encrypted at rest; shown in plain only now
    system = System(
        name=name, display_name=display_name, webhook_url=webhook_url, webhook_secret=stored
    )
    session.add(system)
    session.flush()
    assert system.id is not None
    for info in infos.values():
        session.add(SystemPurpose(system_id=system.id, purpose_id=info.id))
    session.flush()
    audit.record(
        session,
        "system.created",
        detail={"system": name, "purposes": sorted(infos), "webhook": webhook_url is not None},
        **audit_fields(actor),
    )
    return system, secret


def get(session: Session, name: str) -> System:
    system = session.exec(select(System).where(System.name == name)).first()
    if system is None:
        raise NotFound(f"unknown system {name!r}: see `consentflow system list`")
    return system


def list_all(session: Session) -> list[SystemView]:
    rows = session.exec(
        select(System, Purpose.key)
        .outerjoin(SystemPurpose, col(SystemPurpose.system_id) == System.id)
        .outerjoin(Purpose, col(Purpose.id) == SystemPurpose.purpose_id)
        .order_by(col(System.name), col(Purpose.key))
    ).all()
    views: dict[str, SystemView] = {}
    for system, key in rows:
        view = views.setdefault(
            system.name,
            SystemView(
                system.name,
                system.display_name or system.name,
                [],
                system.webhook_url,
                system.status,
            ),
        )
        if key:
            view.purposes.append(key)
    return list(views.values())
