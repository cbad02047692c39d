"""The dashboard's trends: the date range, per-purpose and per-channel series, imports, and
withdrawal anomalies that need a real baseline, on real ledger data.

History is written through the ledger and then dated back (``recorded_at``), as a ledger that has
been running for weeks would hold it; the reports are read with ``now``.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from consentflow import db, lifecycle, subjects
from consentflow import reports as dashboard
from consentflow.errors import InvalidInput
from consentflow.lifecycle import Actor
from consentflow.models import ConsentEvent, State, Subject, utcnow
from consentflow.web import delivery_ops
from tests.support.seeding import import_subjects
from tests.support.web import bearer, client, seed


def _withdrawals(engine, purpose: str, per_day: dict[int, int], prefix: str) -> None:
    """``per_day[k]`` people grant and withdraw ``purpose``, recorded ``k`` days ago."""
    people = {k: [f"{prefix}{k}-{i}" for i in range(n)] for k, n in per_day.items()}
    with db.session_scope(engine) as s:
        for ids in people.values():
            for ext in ids:
                subjects.add(s, ext)
    with db.session_scope(engine) as s:
        for ids in people.values():
            for ext in ids:
                lifecycle.grant(s, ext, purpose, Actor())
                lifecycle.revoke(s, ext, purpose, Actor())
    now = utcnow()
    with db.session_scope(engine) as s:
        for k, ids in people.items():
            if not k:
                continue
            sids = select(Subject.id).where(col(Subject.external_id).in_(ids))
            s.execute(
                update(ConsentEvent)
                .where(col(ConsentEvent.subject_id).in_(sids))
                .values(recorded_at=now - timedelta(days=k))
            )


def _flagged(engine) -> set[tuple[str, str]]:
    with db.session_scope(engine, readonly=True) as s:
        return {(r[0], r[1]) for r in dashboard.anomalies(s, utcnow()).rows}


def test_a_short_history_is_no_baseline(engine):
    """Ten quiet days, then a burst: too little history to call the burst an anomaly."""
    seed(engine)
    _withdrawals(engine, "news", {**{k: 1 for k in range(1, 11)}, 0: 25}, "w")
    assert _flagged(engine) == set()


def test_a_spike_after_a_long_flat_history_is_flagged(engine):
    seed(engine)
    flat = {k: 2 for k in range(1, 41)}
    _withdrawals(engine, "news", {**flat, 0: 20}, "n")
    _withdrawals(engine, "invoices", {**{k: 1 for k in range(1, 41)}, 0: 15}, "i")
    today = utcnow().date().isoformat()
    assert _flagged(engine) == {(today, "news"), (today, "invoices"), (today, dashboard.ALL)}
    with db.session_scope(engine, readonly=True) as s:
        table = dashboard.anomalies(s, utcnow())
        data = dashboard.build(s, health=delivery_ops.health)
    news = next(r for r in table.rows if r[1] == "news")
    assert news[2:] == [20, 2, "10.0x"]
    # The tile counts days: one day, flagged for two purposes and overall.
    (tile,) = [t for t in data.tiles if t.name == "anomalies"]
    assert tile.value == 1 and "days" in tile.label
    row = table.rows.index(news)
    after = date.fromisoformat(today) + timedelta(days=1)
    assert table.links[(row, 2)] == f"/lists/withdrawals?purpose=news&since={today}&until={after}"


def test_imports_are_shown_and_never_an_anomaly(engine):
    """A bulk import recorded today shows as imported (a series of its own), and is not counted
    as people withdrawing (even after a long history)."""
    seed(engine)
    _withdrawals(engine, "news", {k: 1 for k in range(1, 41)}, "h")
    _withdrawals(engine, "news", {0: 2}, "t")
    import_subjects(engine, 30, prefix="imp", email=False, consent=("news", State.WITHDRAWN))
    now = utcnow()
    with db.session_scope(engine, readonly=True) as s:
        trend, chart = dashboard.trend(s, now)
        by_channel, channel_chart = dashboard.series_by(s, now, "channel")
        by_purpose, _ = dashboard.series_by(s, now, "purpose", measure="grants")
        anomalies = dashboard.anomalies(s, now)
    today = trend.rows[-1]
    col_ = {c: i for i, c in enumerate(trend.columns)}
    assert today[col_["withdrawals"]] == 2 and today[col_["imported"]] == 30
    (imported,) = [s for s in chart.series if s.name == "imported"]
    assert imported.values[-1] == 30 and imported.dash  # drawn, with its own pattern
    assert by_channel.columns == ["day", "api", "total"]  # lifecycle calls: the API channel
    assert by_channel.rows[-1][1:] == [2, 2]
    after = now.date() + timedelta(days=1)
    assert by_channel.links[(89, 1)] == (
        f"/lists/withdrawals?channel=api&since={now.date()}&until={after}"
    )
    # The imported consents link to the day's imports.
    assert trend.links[(89, col_["imported"])] == (
        f"/lists/changes?action=import&since={now.date()}&until={after}"
    )
    assert [s.name for s in channel_chart.series] == ["api"]
    assert by_purpose.columns == ["day", "news", "total"]  # grants per purpose
    # Grants too lead to their list: the day's grants of that purpose.
    assert by_purpose.links[(89, 1)] == (
        f"/lists/changes?action=grant&purpose=news&since={now.date()}&until={after}"
    )
    assert anomalies.rows == []


def test_the_range(engine):
    now = utcnow()
    today = now.date()
    window = dashboard.parse_range(None, None, now)
    assert window == dashboard.default_range(now) and len(window.days) == 90
    assert dashboard.parse_range("2026-01-01", "2026-01-31", now).days[-1] == "2026-01-31"
    for since, until, says in [
        ("yesterday", None, "since: not a date; use YYYY-MM-DD"),
        (None, "2026-13-01", "until: not a date"),
        (str(today), str(today - timedelta(days=1)), "is after until"),
        (None, str(today + timedelta(days=1)), "is after today"),
        (str(today - timedelta(days=400)), None, "over 366 days"),
    ]:
        with pytest.raises(InvalidInput, match=says):
            dashboard.parse_range(since, until, now)


def test_the_page_shows_the_chosen_range_and_refuses_a_bad_one(engine):
    toks = seed(engine)
    _withdrawals(engine, "news", {3: 2, 0: 1}, "r")
    today = utcnow().date()
    since = today - timedelta(days=6)
    with client() as c:
        page = c.get(
            f"/dashboard?since={since}&until={today}&measure=withdrawals",
            headers=bearer(toks.compliance),
        )
        assert page.status_code == 200
        assert f'value="{since}"' in page.text and f'value="{today}"' in page.text
        assert f"Grants, withdrawals and expiries per day, {since} to {today}" in page.text
        assert "<figure" in page.text and "<figcaption" in page.text
        assert f'href="/dashboard/trend.csv?since={since}' in page.text
        exported = c.get(
            f"/dashboard/trend_purpose.csv?since={since}&until={today}",
            headers=bearer(toks.compliance),
        )
        lines = exported.text.splitlines()
        assert lines[0] == "day,news,total" and len(lines) == 1 + 7
        assert lines[-1] == f"{today},1,1" and lines[-4] == f"{today - timedelta(days=3)},2,2"

        bad = c.get("/dashboard?since=31/12/2026", headers=bearer(toks.compliance))
        assert bad.status_code == 422
        assert "since: not a date; use YYYY-MM-DD" in bad.text
        assert 'aria-invalid="true"' in bad.text and "Consent at a glance" in bad.text
        wide = c.get(
            f"/dashboard?since={today - timedelta(days=500)}", headers=bearer(toks.compliance)
        )
        assert wide.status_code == 422 and "over 366 days" in wide.text
        measure = c.get("/dashboard?measure=bogus", headers=bearer(toks.compliance))
        assert measure.status_code == 422 and "measure: use one of" in measure.text
        csv_bad = c.get("/dashboard/trend.csv?until=soon", headers=bearer(toks.compliance))
        assert csv_bad.status_code == 422 and "until: not a date" in csv_bad.text


def test_numbers_that_count_people_link_to_their_lists(engine):
    toks = seed(engine)
    _withdrawals(engine, "news", {0: 2}, "l")
    with db.session_scope(engine) as s:
        lifecycle.grant(s, "alice", "news", Actor())
    with client() as c:
        page = c.get("/dashboard", headers=bearer(toks.compliance)).text
    for href in [
        "/lists/consents?state=given",  # tile
        "/lists/expiring?days=30",
        "/lists/deliveries?status=undelivered",
        "/lists/not-reconfirmed",
        "/lists/requests",
        "/lists/consents?purpose=news&amp;state=given",  # states table
        "/lists/consents?purpose=news&amp;state=withdrawn",
        "/lists/consents?purpose=news",
    ]:
        assert f'href="{href}"' in page, href
    today = utcnow().date()
    since = today - timedelta(days=89)
    after = today + timedelta(days=1)  # a list's until is exclusive
    assert f'href="/lists/withdrawals?since={since}&amp;until={after}"' in page
    assert f'href="/lists/withdrawals?since={today}&amp;until={after}"' in page
