"""The compliance dashboard: aggregate figures on both databases, the page and its CSV exports."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import event, update
from sqlmodel import select

from consentflow import audit, db, lifecycle, purposes, settings, subjects
from consentflow import reports as dashboard
from consentflow.lifecycle import Actor
from consentflow.models import (
    Consent,
    ConsentRequest,
    Purpose,
    Subject,
    utcnow,
)
from consentflow.runs import RunSummary, record_run
from consentflow.web import delivery_ops
from tests.support.web import bearer, client, seed


def _subjects(engine, n, prefix="s"):
    with db.session_scope(engine) as s:
        for i in range(n):
            subjects.add(s, f"{prefix}{i}")


def _change(engine, fn, ids, purpose):
    with db.session_scope(engine) as s:
        for ext in ids:
            fn(s, ext, purpose, Actor())


def _rows(table):
    return {row[0]: row for row in table.rows}


@pytest.fixture
def data(engine):
    """A small but complete picture: states, lapses, requests, re-consent, withdrawals, a run."""
    toks = seed(engine)
    now = utcnow()
    _subjects(engine, 20)
    ids = [f"s{i}" for i in range(20)]
    _change(engine, lifecycle.grant, ids[:10], "news")  # 10 given
    _change(engine, lifecycle.revoke, ids[:3], "news")  # 3 of them withdrawn
    _change(engine, lifecycle.refuse, ids[10:12], "news")  # 2 refused
    _change(engine, lifecycle.request, ids[12:16], "news")  # 4 requested (open requests)
    _change(engine, lifecycle.grant, ids[:5], "invoices")  # 5 given, valid 30 days
    with db.session_scope(engine) as s:
        # One invoices consent lapsed without the sweep having run: it counts as expired.
        sid = s.exec(select(Subject.id).where(Subject.external_id == "s0")).one()
        s.execute(
            update(Consent)
            .where(Consent.subject_id == sid, Consent.purpose_id == _pid(s, "invoices"))
            .values(valid_until=now - timedelta(days=1))
        )
        # Two of the open requests are old.
        old = s.exec(select(ConsentRequest.id).order_by(ConsentRequest.id).limit(2)).all()
        s.execute(
            update(ConsentRequest)
            .where(ConsentRequest.id.in_(old))
            .values(requested_at=now - timedelta(days=40))
        )
    # A material revision of news: 7 given on v1 must re-confirm; 2 do (renew), 5 asked again.
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="Weekly newsletter")
    _change(engine, lifecycle.renew, ids[3:5], "news")
    with db.session_scope(engine) as s:
        pid = _pid(s, "news")
        for i, ext in enumerate(ids[5:10]):
            sid = s.exec(select(Subject.id).where(Subject.external_id == ext)).one()
            s.add(
                ConsentRequest(
                    subject_id=sid,
                    purpose_id=pid,
                    purpose_version=2,
                    kind="reconsent",
                    deadline=now + timedelta(days=10 if i < 3 else 20),
                )
            )
    # A burst of withdrawals today on top of a quiet baseline: an anomaly.
    _subjects(engine, 12, prefix="burst")
    burst = [f"burst{i}" for i in range(12)]
    _change(engine, lifecycle.grant, burst, "news")
    _change(engine, lifecycle.revoke, burst, "news")
    with db.session_scope(engine) as s:
        audit.record(
            s,
            "flow.run",
            actor_type="system",
            run_id="1b2c3d4e-0000-4000-8000-000000000001",
            detail={
                "flow": "expiry-sweep",
                "run_id": "1b2c3d4e-0000-4000-8000-000000000001",
                "outcome": "completed",
                "totals": {"expired": 3},
            },
        )
        audit.record(s, "flow.dry_run", detail={"flow": "reconsent", "outcome": "completed"})
    return toks


def _pid(session, key):
    return session.exec(select(Purpose.id).where(Purpose.key == key)).one()


def test_states_per_purpose_and_overall(data, engine):
    with db.session_scope(engine) as s:
        table = dashboard.states(s, utcnow())
    rows = _rows(table)
    col = {c: i for i, c in enumerate(table.columns)}
    news, inv, total = rows["news"], rows["invoices"], rows[dashboard.ALL]
    assert news[col["given"]] == 7 + 12 - 12  # 10 granted - 3 withdrawn; the burst came and went
    assert news[col["withdrawn"]] == 3 + 12
    assert news[col["refused"]] == 2 and news[col["requested"]] == 4
    assert inv[col["given"]] == 4 and inv[col["expired"]] == 1  # lapsed, not yet swept
    assert total[col["total"]] == news[col["total"]] + inv[col["total"]]
    assert total[col["given"]] == 11


def test_trend_and_anomalies(data, engine):
    with db.session_scope(engine) as s:
        trend, chart = dashboard.trend(s, utcnow())
        anomalies = dashboard.anomalies(s, utcnow())
    assert len(trend.rows) == 90 and trend.rows[-1][0] == utcnow().date().isoformat()
    today = trend.rows[-1]
    assert today[1:] == [10 + 5 + 12, 3 + 12, 0, 0]  # grants, withdrawals, expiries, imported
    assert [s.name for s in chart.series] == ["grants", "withdrawals", "expiries", "imported"]
    assert all(len(s.points.split()) == 90 for s in chart.series)
    assert len({s.dash for s in chart.series}) == 4  # told apart by pattern, not colour alone
    # Today's burst has no history before it (the ledger began today): no baseline, no anomaly.
    assert anomalies.rows == []
    day, after = utcnow().date(), utcnow().date() + timedelta(days=1)
    # A day's withdrawals: since the day, until (exclusive) the day after.
    assert trend.links[(89, 2)] == f"/lists/withdrawals?since={day}&until={after}"
    assert trend.links[(89, 1)] == f"/lists/changes?action=grant&since={day}&until={after}"


def test_no_anomaly_below_the_floor(engine):
    seed(engine)
    _subjects(engine, 5)
    ids = [f"s{i}" for i in range(5)]
    _change(engine, lifecycle.grant, ids, "news")
    _change(engine, lifecycle.revoke, ids, "news")
    with db.session_scope(engine) as s:
        assert dashboard.anomalies(s, utcnow()).rows == []


def test_pending_requests_by_age(data, engine):
    with db.session_scope(engine) as s:
        table = dashboard.pending_requests(s, utcnow())
    rows = {(r[0], r[1]): r for r in table.rows}
    assert rows[("news", "collection")][2:] == [2, 0, 2, 0, 4]
    assert rows[("news", "reconsent")][2:] == [5, 0, 0, 0, 5]
    assert rows[(dashboard.ALL, "all")][-1] == 9


def test_reconsent_cohort_and_deadlines(data, engine):
    with db.session_scope(engine) as s:
        cohort, deadlines = dashboard.reconsent(s, utcnow())
    (row,) = cohort.rows
    col = {c: i for i, c in enumerate(cohort.columns)}
    assert row[col["purpose"]] == "news" and row[col["material version"]] == 2
    assert row[col["not yet re-confirmed"]] == 5
    assert row[col["on the new notice"]] == 2
    assert row[col["open requests"]] == 5 and row[col["overdue"]] == 0
    assert row[col["first deadline"]] < row[col["last deadline"]]
    assert [r[2] for r in deadlines.rows] == [3, 2]


def test_expiring_in_30_days(data, engine):
    with db.session_scope(engine) as s:
        table = dashboard.expiring(s, utcnow())
    rows = _rows(table)
    assert rows["invoices"][1:] == [0, 0, 4, 4]  # 30-day validity; the lapsed one is past
    assert "news" not in rows and rows[dashboard.ALL][-1] == 4


def test_delivery_health_and_runs(data, engine, monkeypatch):
    monkeypatch.setenv("CONSENTFLOW_PREFECT_UI_URL", "http://prefect.example:4200/")
    settings.get_settings.cache_clear()
    with db.session_scope(engine) as s:
        health = dashboard.delivery(delivery_ops.health(s))
        runs = dashboard.runs(s)
    crm = _rows(health)["crm"]
    col = {c: i for i, c in enumerate(health.columns)}
    assert crm[col["pending"]] == 15 and crm[col["dead"]] == 0 and crm[col["status"]] == "active"
    assert str(crm[col["health"]]) == "healthy"  # never attempted yet, and nothing old
    assert health.links[(0, col["pending"])] == "/lists/deliveries?system=crm&status=undelivered"
    assert crm[col["oldest undelivered"]] != "-"
    col = {c: i for i, c in enumerate(runs.columns)}
    dry, real = runs.rows
    assert dry[col["flow"]] == "reconsent" and dry[col["dry run"]] == "yes"
    assert real[col["flow"]] == "expiry-sweep" and real[col["totals"]] == "expired: 3"
    assert isinstance(real[col["run"]], dashboard.Link)
    assert real[col["run"]].href == (
        "http://prefect.example:4200/runs/flow-run/1b2c3d4e-0000-4000-8000-000000000001"
    )
    settings.get_settings.cache_clear()


def _record_run(engine, flow, counts=(), *, outcome="completed", dry_run=False, by=None):
    summary = RunSummary(flow=flow, parameters={}, dry_run=dry_run, requested_by=by)
    for purpose, what, n in counts:
        summary.add(purpose, what, n)
    with db.session_scope(engine) as s:
        record_run(s, summary, outcome)


def test_runs_show_each_flow_and_skip_idle_propagate_runs(engine):
    """A frequent propagate schedule pushes no other flow off the dashboard."""
    seed(engine)
    _record_run(engine, "expiry-sweep", [("news", "expired", 3)])
    _record_run(engine, "reconsent", dry_run=True, by="api:carol")
    _record_run(engine, "propagate", [("-", "delivered", 2)])
    _record_run(engine, "propagate", outcome="failed")
    for i in range(40):  # nothing to deliver, or only what a paused system holds back
        _record_run(engine, "propagate", [("-", "held", 5)] if i % 2 else [])
    with db.session_scope(engine, readonly=True) as s:
        latest, recent = dashboard.runs(s), dashboard.recent_runs(s)
    col = {c: i for i, c in enumerate(latest.columns)}

    def flows(table):
        return [(r[col["flow"]], r[col["outcome"]], r[col["totals"]]) for r in table.rows]

    # The latest run of each flow, newest first: propagate's shows it is alive.
    assert flows(latest) == [
        ("propagate", "completed", "held: 5"),
        ("reconsent", "completed", "-"),
        ("expiry-sweep", "completed", "expired: 3"),
    ]
    # The latest runs overall, without the 40 idle propagate runs.
    assert flows(recent) == [
        ("propagate", "failed", "-"),
        ("propagate", "completed", "delivered: 2"),
        ("reconsent", "completed", "-"),
        ("expiry-sweep", "completed", "expired: 3"),
    ]
    by = {r[col["flow"]]: r[col["requested by"]] for r in latest.rows}
    assert by == {"propagate": "-", "reconsent": "api:carol", "expiry-sweep": "-"}


def test_a_fixed_number_of_queries_whatever_the_data(engine):
    """Aggregates only: adding consents adds no statements (nothing is counted in Python)."""
    seed(engine)

    def statements() -> int:
        seen: list[str] = []

        def record(conn, cursor, statement, *args):
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", record)
        try:
            with db.session_scope(engine) as s:
                dashboard.build(s, health=delivery_ops.health)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return len(seen)

    empty = statements()
    _subjects(engine, 30)
    _change(engine, lifecycle.grant, [f"s{i}" for i in range(30)], "news")
    _change(engine, lifecycle.revoke, [f"s{i}" for i in range(10)], "news")
    assert statements() == empty


def test_page_and_csv_exports(data, engine):
    with client() as c:
        page = c.get("/dashboard", headers=bearer(data.compliance))
        assert page.status_code == 200
        for section in (
            "Consents by state",
            "Pending requests by age",
            "Re-consent after the latest material revision",
            "Expiring in the next 30 days",
            "Delivery health per downstream system",
            "Withdrawal anomalies",
            "Latest run of each flow",
            "Recent flow runs",
        ):
            assert section in page.text
        assert "<svg" in page.text and "<polyline" in page.text
        for name in dashboard.TABLES:
            assert f'href="/dashboard/{name}.csv"' in page.text
            r = c.get(f"/dashboard/{name}.csv", headers=bearer(data.compliance))
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            assert "attachment" in r.headers["content-disposition"]
            header, *_ = csv.reader(io.StringIO(r.text))
            with db.session_scope(engine) as s:
                assert header == dashboard.table(s, name, health=delivery_ops.health).columns
        states = list(
            csv.DictReader(
                io.StringIO(c.get("/dashboard/states.csv", headers=bearer(data.admin)).text)
            )
        )
        assert {r["purpose"] for r in states} == {"news", "invoices", dashboard.ALL}
        assert c.get("/dashboard/nope.csv", headers=bearer(data.admin)).status_code == 404


def test_csv_cells_cannot_become_formulas():
    rows = [["=HYPERLINK(1)"], ["-2+3"], ["@x"], ["-1"], ["-"], ["ok"]]
    t = dashboard.Table("x", "x", ["a"], rows)
    assert t.csv().splitlines() == ["a", "'=HYPERLINK(1)", "'-2+3", "'@x", "-1", "-", "ok"]
