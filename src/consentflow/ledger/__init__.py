"""The ledger core: the consent rules and the one way a change is written.

Where things live (one guess each):

- ``_rules``: ``RULES`` and ``plan``, the whole rule book (the only one), and
  ``effective_state``, the one statement of "a given consent whose validity has ended counts as
  expired";
- ``_write``: ``write``, the single write path (sequence numbers, state, history, requests,
  outbox with ``note_outbox``, audit — in the caller's one transaction);
- ``_changes``: single changes (``grant``, ``revoke`` …), each judged by ``plan`` and written by
  ``write``;
- ``_batch``: batch changes (``expire_due``, ``invalidate_stale``, ``import_consents``) through
  the same ``write``;
- ``_reads``: ``current``, ``history``, ``replay`` and ``as_of``.

``consentflow.lifecycle`` is the public facade over this package; import from either.
"""

from consentflow.ledger._batch import ImportRow, expire_due, import_consents, invalidate_stale
from consentflow.ledger._changes import (
    _single,
    expire,
    grant,
    invalidate,
    items_for,
    refuse,
    renew,
    request,
    revoke,
)
from consentflow.ledger._reads import ConsentView, as_of, current, history, replay, subject_id
from consentflow.ledger._rules import (
    IMPORTABLE_STATES,
    RULES,
    Current,
    Outcome,
    Rule,
    effective_state,
    has_lapsed,
    plan,
)
from consentflow.ledger._write import (
    Change,
    Item,
    LockedSubject,
    load_current,
    lock_subjects,
    note_outbox,
    webhook_payload,
    write,
)

__all__ = [
    "IMPORTABLE_STATES",
    "RULES",
    "Change",
    "ConsentView",
    "Current",
    "ImportRow",
    "Item",
    "LockedSubject",
    "Outcome",
    "Rule",
    "_single",
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
    "items_for",
    "load_current",
    "lock_subjects",
    "note_outbox",
    "plan",
    "refuse",
    "renew",
    "replay",
    "request",
    "revoke",
    "subject_id",
    "webhook_payload",
    "write",
]
