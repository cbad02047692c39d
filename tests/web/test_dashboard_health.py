"""Delivery health is judged once: the dashboard, ``consentflow deliveries health`` and
``GET /api/v1/deliveries/health`` give every system the same verdict.

Real deliveries to a real loopback receiver (answering 200 or 500) and to a loopback port nothing
listens on; time moves through ``now`` (the dead letters' retry schedule), never the clock.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, update
from sqlmodel import select

from consentflow import db, lifecycle, purposes, subjects, systems
from consentflow.delivery import engine as eng
from consentflow.delivery import health, ops
from consentflow.lifecycle import Actor
from consentflow.models import Delivery, DeliveryState, System, utcnow
from tests.support.net import free_port
from tests.support.web import bearer, client, seed

pytestmark = pytest.mark.usefixtures("allow_loopback")

FAST = eng.Options(timeout=5.0)

#: system -> the verdict every door must give it.
EXPECTED = {
    "crm": "healthy",  # seed's: registered, nothing sent yet
    "fails": "failing",  # succeeded once, then answers 500
    "never": "never succeeded",  # nothing listens at its port
    "paused": "held",
    "dead": "dead letters",  # retries exhausted, then recovered
    "stale": "old undelivered",  # a withdrawal waiting for over an hour
    "fine": "healthy",
}


def _revoke(engine, who: str, purpose: str) -> None:
    with db.session_scope(engine) as s:
        lifecycle.revoke(s, who, purpose, Actor())


def _deliver(engine, name: str, now=None) -> None:
    eng.deliver_due(engine, options=eng.Options(timeout=5.0, systems=[name]), now=now)


def _drain_to_dead(engine, name: str) -> None:
    """Run the worker for one system at each next due time until nothing is pending."""
    now = utcnow()
    for _ in range(40):
        _deliver(engine, name, now)
        with db.session_scope(engine) as s:
            nxt = s.exec(
                select(func.min(Delivery.next_attempt_at))
                .join(System, System.id == Delivery.system_id)
                .where(System.name == name, Delivery.state == DeliveryState.PENDING.value)
            ).one()
        if nxt is None:
            return
        nxt = health._aware(nxt)
        assert nxt is not None
        now = max(now, nxt)
    raise AssertionError("still pending after 40 runs")


@pytest.fixture
def systems_in_each_condition(engine, receiver):
    toks = seed(engine)
    paths = {"fails": "/fails", "paused": "/paused", "dead": "/dead", "stale": "/stale"}
    paths["fine"] = "/fine"
    with db.session_scope(engine) as s:
        for name in [*paths, "never"]:
            purposes.add(s, f"p-{name}", title=name, validity_days=365)
            url = (
                f"http://127.0.0.1:{free_port()}/nobody"
                if name == "never"
                else receiver.url(paths[name])
            )
            systems.add(s, name, [f"p-{name}"], webhook_url=url)
        for who in ("a", "b"):
            subjects.add(s, who)
    with db.session_scope(engine) as s:
        for who in ("a", "b"):
            for name in [*paths, "never"]:
                lifecycle.grant(s, who, f"p-{name}", Actor())
    # fine: delivered. fails: delivered once, then 500.
    for name in ("fine", "fails"):
        _revoke(engine, "a", f"p-{name}")
        _deliver(engine, name)
    receiver.set("/fails", status=500)
    _revoke(engine, "b", "p-fails")
    _deliver(engine, "fails")
    # never: connection refused on every attempt.
    _revoke(engine, "a", "p-never")
    _deliver(engine, "never")
    # paused: its withdrawal waits.
    with db.session_scope(engine) as s:
        ops.set_status(s, "paused", "pause", reason="maintenance", actor="test")
    _revoke(engine, "a", "p-paused")
    # dead: the whole retry schedule fails, then the endpoint recovers.
    receiver.set("/dead", status=500)
    _revoke(engine, "a", "p-dead")
    _drain_to_dead(engine, "dead")
    receiver.set("/dead", status=200)
    _revoke(engine, "b", "p-dead")
    _deliver(engine, "dead", utcnow() + timedelta(days=5))
    # stale: a withdrawal recorded two hours ago, not sent yet.
    _revoke(engine, "a", "p-stale")
    with db.session_scope(engine) as s:
        sid = s.exec(select(System.id).where(System.name == "stale")).one()
        s.execute(
            update(Delivery)
            .where(Delivery.system_id == sid)
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    return toks


def _page_verdicts(html: str) -> dict[str, tuple[str, str]]:
    section = html[html.index('id="table-delivery"') :]
    section = section[: section.index("</table>")]
    found = re.findall(
        r"<tr><td>([\w-]+)</td><td><span class=\"flag flag-(\w+)\">"
        r"<span aria-hidden=\"true\">[^<]*</span>([^<]+)</span>",
        section,
    )
    return {name: (text.strip(), level) for name, level, text in found}


def test_every_door_gives_the_same_verdict(systems_in_each_condition, engine, cli):
    toks = systems_in_each_condition
    with db.session_scope(engine, readonly=True) as s:
        core = {h.system: (h.condition, h.severity) for h in health.endpoint_health(s)}
    assert {name: c for name, (c, _) in core.items()} == EXPECTED

    with client() as c:
        api = c.get("/api/v1/deliveries/health", headers=bearer(toks.compliance))
        page = c.get("/dashboard", headers=bearer(toks.compliance))
        exported = c.get("/dashboard/delivery.csv", headers=bearer(toks.compliance))
    assert api.status_code == 200 and page.status_code == 200
    from_api = {r["system"]: (r["condition"], r["severity"]) for r in api.json()}
    assert from_api == core
    assert all(r["ok"] == (r["condition"] == "healthy") for r in api.json())

    from_cli = json.loads(cli("deliveries", "health", "--json").out)
    assert {r["system"]: (r["condition"], r["severity"]) for r in from_cli} == core
    text = cli("deliveries", "health").out
    for name, condition in EXPECTED.items():
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{name} ")]
        assert condition in line and ("NOT OK" in line) == (condition != "healthy")

    assert _page_verdicts(page.text) == {n: (c, sev) for n, (c, sev) in core.items()}
    rows = {r["system"]: r for r in csv.DictReader(io.StringIO(exported.text))}
    assert {n: r["health"] for n, r in rows.items()} == EXPECTED

    # The motivating bug: a system failing every request is no longer "active" and fine.
    assert core["fails"] == ("failing", "critical") and core["never"][1] == "critical"
    assert core["paused"][1] == "warning" and core["stale"][1] == "warning"
    assert "maintenance" in rows["paused"]["problems"]
    assert rows["dead"]["dead"] == "1"


def test_pending_and_dead_link_to_their_deliveries(systems_in_each_condition):
    toks = systems_in_each_condition
    with client() as c:
        page = c.get("/dashboard", headers=bearer(toks.compliance)).text
    section = page[page.index('id="table-delivery"') :]
    assert 'href="/lists/deliveries?system=dead&amp;status=dead"' in section
    assert 'href="/lists/deliveries?system=paused&amp;status=undelivered"' in section
    assert 'href="/lists/deliveries?status=dead"' in page  # the tile


def test_the_worst_condition_wins_and_every_problem_is_listed():
    t0 = utcnow()
    verdict = health.judge(
        status="paused",
        attempted=3,
        delivered=1,
        last_success_at=t0,
        last_failure_at=t0 + timedelta(minutes=1),
        dead=2,
        held=4,
        oldest_undelivered_age_s=7200,
        status_reason="upgrade",
    )
    assert verdict.condition == health.Condition.FAILING
    assert verdict.severity == health.Severity.CRITICAL
    assert len(verdict.problems) == 4 and "paused: upgrade; 4 deliveries held" in verdict.problems
    recovered = health.judge(
        status="active",
        attempted=3,
        delivered=1,
        last_success_at=t0 + timedelta(minutes=2),
        last_failure_at=t0 + timedelta(minutes=1),
        dead=0,
        held=0,
        oldest_undelivered_age_s=60,
    )
    assert recovered == health.Verdict(health.Condition.HEALTHY, health.Severity.OK, ())
