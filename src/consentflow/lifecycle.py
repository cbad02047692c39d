"""The consent lifecycle: the public facade over ``consentflow.ledger``.

Invariants (the code lives in the ``ledger`` package):

- One rule book: ``RULES`` and the pure ``plan`` (``ledger/_rules.py``) decide, for every action,
  from which states it may start, what it leads to and how the validity is stamped.
  ``effective_state`` (same module) is the one statement of "a given consent whose validity has
  ended counts as expired".
- One write path: everything that changes a consent (the CLI, the web app, the flows, the
  import) goes through ``ledger._write.write``, which in the caller's single transaction writes
  the subject's new sequence number (subject row locked first), the current state and the history
  event, the collection requests, one outbox row per subscribed system when permission is
  withdrawn (noted with ``note_outbox`` so the commit wakes delivery), and the audit entries, last.
- Single changes (``grant``, ``revoke`` …, ``ledger/_changes.py``) and batch changes
  (``expire_due``, ``invalidate_stale``, ``import_consents``, ``ledger/_batch.py``) share that
  path, so a batch writes exactly the rows the single forms would.
- Reads (``current``, ``history``, ``as_of``, ``ledger/_reads.py``): the ``consent`` table always
  equals the replay of ``consent_event``.

Failure modes: ``NotFound`` (unknown subject or purpose), ``TransitionNotAllowed`` (the rules
refuse, with what to do instead); nothing is written then.
"""

from __future__ import annotations

# Re-exported: callers build actors with the changes they ask for.
from consentflow.actors import Actor as Actor
from consentflow.actors import agent_actor as agent_actor
from consentflow.actors import system_actor as system_actor
from consentflow.errors import NotFound as NotFound
from consentflow.errors import TransitionNotAllowed as TransitionNotAllowed
from consentflow.ledger import (
    IMPORTABLE_STATES,
    RULES,
    Change,
    ConsentView,
    Current,
    ImportRow,
    Outcome,
    Rule,
    _single,
    as_of,
    current,
    effective_state,
    expire,
    expire_due,
    grant,
    has_lapsed,
    history,
    import_consents,
    invalidate,
    invalidate_stale,
    note_outbox,
    plan,
    refuse,
    renew,
    replay,
    request,
    revoke,
    subject_id,
    webhook_payload,
)
from consentflow.models import WITHDRAWING_STATES as WITHDRAWING_STATES

__all__ = [
    "IMPORTABLE_STATES",
    "RULES",
    "WITHDRAWING_STATES",
    "Actor",
    "Change",
    "ConsentView",
    "Current",
    "ImportRow",
    "NotFound",
    "Outcome",
    "Rule",
    "TransitionNotAllowed",
    "_single",
    "agent_actor",
    "as_of",
    "current",
    "effective_state",
    "expire",
    "expire_due",
    "grant",
    "has_lapsed",
    "history",
    "import_consents",
    "invalidate",
    "invalidate_stale",
    "note_outbox",
    "plan",
    "refuse",
    "renew",
    "replay",
    "request",
    "revoke",
    "subject_id",
    "system_actor",
    "webhook_payload",
]
