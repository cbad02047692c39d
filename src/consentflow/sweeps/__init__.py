"""What the lifecycle flows do, as plain batch functions (the flows in ``flows/`` only loop them).

Every sweep has one shape, ``sweep(ctx, size, cursor) -> Batch``: it handles the next ``size``
due items after ``cursor`` in transactions of its own and returns a ``Batch`` (counts per
(purpose, outcome), how many due items it looked at, where the next batch starts). ``ctx`` is a
frozen ``SweepContext`` shared by every batch of a run (as_of, run id, dry run, purposes, engine,
mailer, and the email sweeps' policy). The flows call a sweep until nothing is left, one Prefect
task per batch (``drain``); tests and benchmarks call them directly. With ``ctx.dry_run`` the same
selection and classification runs, nothing is written, and the counts say exactly what a real run
would have done (same outcome names); the expiry sweep previews instead (``preview_expiry``).

Modules (one concept each):

- ``_context``: ``SweepContext``, the ``Sweep`` shape, and ``parse_stages`` (the one rule for
  reminder stages);
- ``_batching``: ``Batch``, ``drain``, transient failures, the transaction (rolled back for a dry
  run), subject locking and the paging of due items;
- ``claims``: the email protocol (claim, send, record; stale claims released after a lease),
  with ``_undo`` (how a claim advances its item, and how that is undone) and ``_recorder``
  (each outcome recorded as the server answers it, shielded from cancels);
- ``expiry``, ``reminders``, ``followups``, ``reconsent``, ``retention``: one module per sweep
  (``retention`` is imported as ``consentflow.sweeps.retention``).

The lifecycle rules stay in ``lifecycle.py``: expiry and invalidation go through its batch
functions (``expire_due``, ``invalidate_stale``), which lock subjects with ``SKIP LOCKED`` on
PostgreSQL, re-check each item and write state, history, outbox and audit in one transaction.
"""

from __future__ import annotations

from consentflow.mail import MailUnavailable
from consentflow.sweeps._batching import Batch, Counts, drain, retry_transient, transient
from consentflow.sweeps._context import Sweep, SweepContext, parse_stages
from consentflow.sweeps.claims import Claim, record_results, release_stale_claims
from consentflow.sweeps.expiry import expire_batch, preview_expiry
from consentflow.sweeps.followups import followup_batch
from consentflow.sweeps.reconsent import (
    reconsent_deadline_batch,
    reconsent_email_batch,
    reconsent_open_batch,
)
from consentflow.sweeps.reminders import remind_batch

__all__ = [
    "Batch",
    "Claim",
    "Counts",
    "MailUnavailable",
    "Sweep",
    "SweepContext",
    "drain",
    "expire_batch",
    "followup_batch",
    "parse_stages",
    "preview_expiry",
    "reconsent_deadline_batch",
    "reconsent_email_batch",
    "reconsent_open_batch",
    "record_results",
    "release_stale_claims",
    "remind_batch",
    "retry_transient",
    "transient",
]
