"""The two doors speak one vocabulary: for every object both show, the CLI's ``--json`` and the
API answer with the same field names (``consentflow.views``), on the same database.

Deprecated CLI output aliases (``deprecated_aliases`` of a view, listed in docs/changelog.md) are
the only names allowed on one side; anything else on one side only fails the test.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy.engine import Engine

from consentflow import views
from tests.support.web import Tokens, bearer, client, seed


def shape(value: Any) -> Any:
    """The field names of a JSON value, nested: dicts by key, lists by their first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


def cli_shape(value: dict[str, Any], view: type[views.View]) -> Any:
    """The CLI's shape without the view's documented deprecated aliases."""
    for old, new in view.deprecated_aliases.items():
        assert value[old] == value[new], f"deprecated {old!r} must equal {new!r}"
    return shape({k: v for k, v in value.items() if k not in view.deprecated_aliases})


def js(r: Any) -> Any:
    assert r.code in (0, 1), (r.code, r.err)
    assert "Traceback" not in r.err
    return json.loads(r.out)


@pytest.fixture
def doors(engine: Engine, cli: Any) -> Iterator[tuple[Any, Any, Tokens]]:
    toks = seed(engine)
    with client() as c:
        yield cli, c, toks


def test_both_doors_use_the_same_field_names(doors: tuple[Any, Any, Tokens]) -> None:
    cli, c, t = doors
    admin, compliance = bearer(t.admin), bearer(t.compliance)

    def api(path: str) -> Any:
        r = c.get(f"/api/v1{path}", headers=compliance)
        assert r.status_code == 200, (path, r.text)
        return r.json()

    # A change through each door.
    api_change = c.post("/api/v1/subjects/alice/consents/news/grant", headers=admin)
    assert api_change.status_code == 200, api_change.text
    cli_change = js(cli("consent", "grant", "bob", "news", "--json"))
    assert cli_shape(cli_change, views.ChangeOut) == shape(api_change.json())
    assert c.post("/api/v1/subjects/alice/consents/news/revoke", headers=admin).status_code == 200

    # A subject with its consents (the CLI shows a subject when it adds one).
    cli_subject = js(cli("subject", "add", "carol", "--json"))
    assert shape(cli_subject) == shape(api("/subjects/carol"))
    alice = api("/subjects/alice")
    cli_consents = js(cli("consent", "show", "alice", "--json"))
    assert cli_consents["consents"] and alice["consents"]
    assert shape(cli_consents["consents"]) == shape(alice["consents"])
    assert cli_shape(cli_consents, views.ConsentsOut) == shape(api("/subjects/alice/consents"))
    at = api("/subjects/alice/history")["events"][0]["recorded_at"]
    cli_then = js(cli("consent", "show", "alice", "--at", at, "--json"))
    api_then = api(f"/subjects/alice/consents?at={quote(at)}")
    assert cli_shape(cli_then, views.ConsentsOut) == shape(api_then)
    assert cli_then["at"] == api_then["at"]

    # The history: the CLI prints the events, the API wraps them.
    cli_history = js(cli("consent", "history", "alice", "--json"))
    assert shape(cli_history) == shape(api("/subjects/alice/history")["events"])

    # An access check.
    cli_check = js(cli("check", "alice", "news", "--system", "crm", "--json"))
    assert shape(cli_check) == shape(api("/check?subject=alice&purpose=news&system=crm"))

    # Purposes: the CLI lists notice versions, the API shows them inside a purpose.
    cli_versions = js(cli("purpose", "list", "--versions", "--json"))
    news = api("/purposes/news")
    assert shape(cli_versions) == shape(news["versions"]) == [shape(news["notice"])]

    # Systems.
    assert shape(js(cli("system", "list", "--json"))) == shape(api("/systems"))

    # Deliveries, one in detail, and the health of the endpoints.
    cli_deliveries = js(cli("deliveries", "list", "--json"))
    api_deliveries = api("/deliveries")["items"]
    assert cli_deliveries and api_deliveries
    assert [cli_shape(d, views.DeliveryOut) for d in cli_deliveries] == shape(api_deliveries)
    delivery_id = api_deliveries[0]["id"]
    cli_detail = js(cli("deliveries", "show", str(delivery_id), "--json"))
    api_detail = api(f"/deliveries/{delivery_id}")
    assert cli_shape(cli_detail, views.DeliveryDetail) == shape(api_detail)
    for same in ("event_type", "event_id", "webhook_id", "payload", "next_attempt_at"):
        assert cli_detail[same] == api_detail[same], same
    assert shape(js(cli("deliveries", "health", "--json"))) == shape(api("/deliveries/health"))

    # The withdrawal feed: JSON Lines on the CLI, a page on the API.
    lines = [json.loads(x) for x in cli("deliveries", "feed", "crm").out.splitlines()]
    feed = api("/feed?system=crm")["items"]
    assert lines == feed

    # The audit trail's verification.
    assert shape(js(cli("audit", "verify", "--json"))) == shape(api("/audit/verify"))


def test_receipt_is_the_same_through_both_doors(doors: tuple[Any, Any, Tokens]) -> None:
    cli, c, t = doors
    admin = bearer(t.admin)
    for action in ("grant", "revoke"):
        r = c.post(f"/api/v1/subjects/alice/consents/news/{action}", headers=admin)
        assert r.status_code == 200, r.text
    from_cli = js(cli("consent", "receipt", "alice"))
    from_api = c.get("/api/v1/subjects/alice/receipt", headers=admin).json()
    # A receipt has a fresh id and issue time each time it is built; the rest is the record.
    fresh = {"receipt_id", "receipt_issued_at"}
    assert {k: v for k, v in from_cli.items() if k not in fresh} == {
        k: v for k, v in from_api.items() if k not in fresh
    }
    assert from_cli["consent_record"]["processing"] and from_cli.keys() == from_api.keys()


def test_unknown_subject_is_one_line_on_the_cli(doors: tuple[Any, Any, Tokens]) -> None:
    cli, _c, _t = doors
    r = cli("consent", "receipt", "nobody")
    assert r.code == 2 and r.err.strip() == "consentflow: unknown subject 'nobody'"


def test_cohort_csv_defuses_formulas_in_free_text_only() -> None:
    """An address or a receiver's error that a spreadsheet would run as a formula gets a ``'``
    before it in CSV; ids, times and JSON Lines are written as they are."""
    names = ["subject", "email", "last_error", "at"]
    at = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    rows = [
        ("u1", "=cmd|'/C calc'!A0@example.com", "-1+1", at, "key"),
        ("u2", "plain@example.com", None, at.replace(tzinfo=None), "key"),
    ]
    cells = list(csv.reader(io.StringIO(views.cohort_csv(rows, names, [3]).decode())))
    assert cells == [
        ["u1", "'=cmd|'/C calc'!A0@example.com", "'-1+1", "2026-01-31T12:00:00Z"],
        ["u2", "plain@example.com", "", "2026-01-31T12:00:00Z"],
    ]
    lines = [json.loads(x) for x in views.cohort_jsonl(names, rows).splitlines()]
    assert lines[0]["email"] == "=cmd|'/C calc'!A0@example.com"
    assert lines[1]["at"] == "2026-01-31T12:00:00Z"  # a naive time (SQLite's) is UTC
