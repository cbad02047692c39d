"""What the access log may say: no link tokens, no subject ids, no query strings.

A link token (``/l/TOKEN``) lets anyone who holds it act on a person's consent, a subject's
external id (``/api/v1/subjects/ID/...``) may be an email address, and query strings carry both
(``check?subject=...``). ``consentflow serve`` attaches ``AccessLogRedactor`` to uvicorn's access
logger (by name, in its logging configuration), so each line keeps the client, method, route,
protocol and status, and loses the rest:
``GET /l/{token}``, ``POST /api/v1/subjects/{subject}/consents/news/grant``,
``GET /api/v1/check``.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"

_REDACTIONS = [
    (re.compile(r"^/l/[^/]*"), "/l/{token}"),
    (re.compile(r"^/api/v1/subjects/[^/]+"), "/api/v1/subjects/{subject}"),
]


def redact_path(path: str) -> str:
    """The path without its query string, link token or subject id."""
    path = path.partition("?")[0]
    for pattern, replacement in _REDACTIONS:
        path = pattern.sub(replacement, path, count=1)
    return path


class AccessLogRedactor(logging.Filter):
    """Rewrites the path of uvicorn's access records (``'%s - "%s %s HTTP/%s" %d'``: client,
    method, path with query string, protocol, status); other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_path(args[2]), args[3], args[4])
        return True
