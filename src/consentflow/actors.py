"""Who expressed a change, and how it reached consentflow (ISO 27560 "by" and collection method).

Every write records one: the consent events and the audit entries of subjects, purposes and
systems alike, so that "who did this?" always has an answer.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

from consentflow.models import ActorType, Channel


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
