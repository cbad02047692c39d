"""The access log's redaction (``web.logs.redact_path``) where the simple rules did not reach:
a proxy prefix before the routes, an id holding an encoded ``/``, an address on any path (issue
14, defect 7). ``tests/web/test_serve.py`` checks the log of a real ``consentflow serve``."""

from __future__ import annotations

import pytest

from consentflow.web.logs import redact_path


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        # mounted under a prefix (uvicorn logs the full path, root path included)
        ("/consent/api/v1/subjects/bob/history", "/consent/api/v1/subjects/{subject}/history"),
        ("/consent/l/eyJhIjoxfQ.c2ln/receipt", "/consent/l/{token}/receipt"),
        # an id sent with %2F arrives decoded: none of it is kept, the route's tail is
        ("/api/v1/subjects/a/ann%40example.com/history", "/api/v1/subjects/{subject}/history"),
        (
            "/api/v1/subjects/x/y/consents/news/grant",
            "/api/v1/subjects/{subject}/consents/news/grant",
        ),
        ("/api/v1/subjects/a/b/c", "/api/v1/subjects/{subject}"),
        # an address anywhere else (no route serves it, the line is written all the same)
        ("/api/v1/nosuch/ann%40example.com/x", "/api/v1/nosuch/{redacted}/x"),
        ("/ann@example.com", "/{redacted}"),
        ("/api/v1/subjects", "/api/v1/subjects"),
    ],
)
def test_no_subject_id_token_or_address_survives_redaction(path: str, logged: str) -> None:
    assert redact_path(path) == logged
