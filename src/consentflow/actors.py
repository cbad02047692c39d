"""Who expressed a change, and how it reached consentflow (ISO 27560 "by" and collection method).

Every write records one: the consent events and the audit entries of subjects, purposes and
systems alike, so that "who did this?" always has an answer.

An ``Actor`` checks itself when it is made, so every door (CLI ``--agent``/``--reason``, the API,
the pages, the flows) meets the same rule before anything is written: the name and the reason are
printable text (no control characters, no unencodable surrogates) that fits its column, and an
overlong or unprintable one raises ``InvalidInput`` in one line (exit 2, 422), never a database
error halfway through a write.

``check_text`` is that rule for any free text the ledger stores (names, reasons, display names,
URLs): the limit is read from the column's definition in ``models`` (``column_length``), never
restated, so what the ledger accepts is exactly what the database accepts.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from typing import Any

from consentflow.errors import InvalidInput
from consentflow.models import ActorType, Channel, metadata

#: What no stored text may hold: C0 controls (NUL included), DEL, and lone surrogates (the
#: undecodable bytes of a non-UTF-8 argument, which no UTF-8 column can store).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def column_length(table: str, column: str) -> int:
    """The length limit of a ``VARCHAR`` column, as the model defines it."""
    length = getattr(metadata.tables[table].c[column].type, "length", None)
    if not isinstance(length, int):
        raise TypeError(f"{table}.{column} has no length limit")
    return length


def unprintable(value: str) -> str | None:
    """The first character of ``value`` no stored text may hold (as ``repr`` shows it), or None."""
    found = _UNPRINTABLE.search(value)
    return None if found is None else repr(found.group())


def check_text(value: str, table: str, column: str, what: str) -> str:
    """``value`` if it is printable and fits ``table.column``; else ``InvalidInput`` (one line,
    naming ``what`` and never echoing the value)."""
    limit = column_length(table, column)
    if len(value) > limit:
        raise InvalidInput(f"{what} must be at most {limit} characters (got {len(value)})")
    bad = unprintable(value)
    if bad is not None:
        raise InvalidInput(f"{what} must be printable text: it contains {bad}")
    return value


@dataclass(frozen=True)
class Actor:
    """Who expressed a change and how it reached us (ISO 27560 'by' and collection method)."""

    type: ActorType = ActorType.SUBJECT
    channel: Channel = Channel.API
    name: str | None = None
    reason: str | None = None
    run_id: str | None = None
    #: Optional proof such as IP address or user agent; store only what you need.
    evidence: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            check_text(self.name, "consent_event", "actor", "the actor's name")
        if self.reason is not None:
            check_reason(self.reason)
        if self.run_id is not None:
            check_text(self.run_id, "consent_event", "run_id", "the run id")


def check_reason(reason: str) -> str:
    """A reason as stored with a change (the consent event's and a system's status reason share
    the limit): printable, within the column."""
    return check_text(reason, "consent_event", "reason", "the reason")


def system_actor(run_id: str | None = None, name: str = "consentflow") -> Actor:
    """consentflow itself acting (expiry, invalidation), optionally inside a flow run."""
    return Actor(ActorType.SYSTEM, Channel.SYSTEM, name=name, run_id=run_id)


def agent_actor(name: str | None = None, reason: str | None = None) -> Actor:
    """A support agent acting on a subject's behalf (default name: the OS user)."""
    return Actor(ActorType.AGENT, Channel.SUPPORT, name=name or getpass.getuser(), reason=reason)


def audit_fields(actor: Actor | None) -> dict[str, Any]:
    """The actor's part of an audit entry (``audit.Entry`` fields)."""
    if actor is None:
        return {}
    return {
        "actor_type": actor.type.value,
        "actor": actor.name,
        "channel": actor.channel.value,
        "run_id": actor.run_id,
    }
