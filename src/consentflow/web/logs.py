"""What the access log may say: no link tokens, no subject ids, no query strings, no addresses.

A link token (``/l/TOKEN``) lets anyone who holds it act on a person's consent, a subject's
external id (``/api/v1/subjects/ID/...``) names a person, and query strings carry both
(``check?subject=...``). ``consentflow serve`` attaches ``AccessLogRedactor`` to uvicorn's access
logger (by name, in its logging configuration), so each line keeps the client, method, route,
protocol and status, and loses the rest:
``GET /l/{token}``, ``POST /api/v1/subjects/{subject}/consents/news/grant``,
``GET /api/v1/check``, ``GET /subjects/{subject}`` (the workspace's pages).

The rules hold wherever the app is mounted (a ``--root-path`` or proxy prefix comes before
them) and whatever the client sends: an id holding an encoded ``/`` (``%2F``, which uvicorn logs
decoded) is redacted up to the route's known tail, so none of it is kept; and any other path
segment that holds an ``@`` (``%40``) is logged as ``{redacted}``, so an email address never
reaches the log, even on a path no route serves. (New ids cannot hold ``/`` or ``@`` at all:
``subjects.check_external_id``.)
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"

#: What may follow a subject's id: the routes of ``web/api/subjects.py`` and ``consents.py``.
_SUBJECT_TAIL = r"(?:/consents(?:/[^/]+/[^/]+)?|/history|/receipt|/links|/erase|/overview)?/?$"
#: What may follow a subject's id on the workspace's pages (``/subjects/{subject}``).
_PAGE_TAIL = r"(?:/record)?/?$"
_REDACTIONS = [
    (re.compile(r"/l/[^/]*"), "/l/{token}"),
    (re.compile(rf"/api/v1/subjects/.+?(?={_SUBJECT_TAIL})"), "/api/v1/subjects/{subject}"),
    (re.compile(rf"(?<!/api/v1)/subjects/.+?(?={_PAGE_TAIL})"), "/subjects/{subject}"),
]
_ADDRESS_SEGMENT = re.compile(r"(?<=/)[^/]*(?:@|%40)[^/]*", re.IGNORECASE)


def redact_path(path: str) -> str:
    """The path without its query string, link token, subject id or anything like an address."""
    path = path.partition("?")[0]
    for pattern, replacement in _REDACTIONS:
        path = pattern.sub(replacement, path, count=1)
    return _ADDRESS_SEGMENT.sub("{redacted}", path)


class AccessLogRedactor(logging.Filter):
    """Rewrites the path of uvicorn's access records (``'%s - "%s %s HTTP/%s" %d'``: client,
    method, path with query string, protocol, status); other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_path(args[2]), args[3], args[4])
        return True
