"""consentflow: record consent, keep it true over time, and make the rest of the company obey it.

The public surface: the lifecycle changes and reads, the access check, the audit chain, and the
types they return. Everything else is reachable through its module.
"""

from consentflow.access import Decision, Reason, check
from consentflow.errors import (
    Conflict,
    ConsentflowError,
    InvalidInput,
    NotFound,
    TransitionNotAllowed,
)
from consentflow.lifecycle import (
    Actor,
    Change,
    ConsentView,
    as_of,
    current,
    expire,
    expire_due,
    grant,
    history,
    invalidate,
    invalidate_stale,
    refuse,
    renew,
    request,
    revoke,
)
from consentflow.models import Action, ActorType, Channel, State

__all__ = [
    "Action",
    "Actor",
    "ActorType",
    "Change",
    "Channel",
    "Conflict",
    "ConsentView",
    "ConsentflowError",
    "Decision",
    "InvalidInput",
    "NotFound",
    "Reason",
    "State",
    "TransitionNotAllowed",
    "as_of",
    "check",
    "current",
    "expire",
    "expire_due",
    "grant",
    "history",
    "invalidate",
    "invalidate_stale",
    "refuse",
    "renew",
    "request",
    "revoke",
]
