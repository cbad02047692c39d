"""The people the PostgreSQL benchmarks read (``subject_search``, ``cohort_lists``,
``transfer_gate``): one set-based fill inside PostgreSQL, so the three can run against one
database (``--reuse``) without refilling.

What a fill of N subjects holds (every choice rolled from a 64-bit hash of the subject and the
purpose, ``hashtextextended``: the same database for the same N, whatever the batch size):

- purposes "news", "offers", "partners" (365 days' validity); "news" revised materially
  (``purposes.revise(..., material=True)``) before the fill, so half of its consents rest on
  version 1 (the ``not-reconfirmed`` cohort) and half on version 2; a system "crm" with a
  webhook, subscribed to all three;
- N subjects ``u1`` .. ``uN`` with an email address (``user<k>@example.com``), a locale from a
  fixed list (en, fr, de, es in turn) and a subject reference computed with pgcrypto's HMAC, so it
  equals ``subjects.reference``;
- 3 consents each with one event each (80% given, 8% withdrawn, 5% refused, 4% requested, 3%
  expired; 2% of the given ones lapsed but not swept: ``valid_until`` 1 hour to 5 days ago);
  the event's channel varies (web, email_link, api, support: an agent) and its id is a
  time-ordered UUID (version 7, as ``new_event_id`` makes them);
- an open request for a tenth of the consents (a re-consent to version 2 for "news", a
  collection for the others), with a deadline 1-60 days ahead;
- a delivery to "crm" for each withdrawal: 70% delivered, 20% pending, 10% dead;
- 4 audit entries per subject (``subject.created`` and one ``consent.*`` per event) with
  synthetic hashes (a chain cannot be built set-based): the overview's verify does its full work
  and answers ``modified``; the chain's head is moved to the last entry.

A batch of subjects is one transaction (``batch``, default 100,000), with foreign-key triggers
off (``session_replication_role = replica``: the rows are consistent by construction); a fill
stopped part way leaves whole batches and goes on with ``--fill-from``. The statements assume
a database that only this module wrote (ids from 1, no other subjects): ``prepare`` makes the
database afresh unless told to reuse it, and refuses to reuse an empty one.

    python bench/_population.py --url postgresql://postgres@127.0.0.1:5432/bench_people \\
        --subjects 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from consentflow import db, keys, purposes, systems
from consentflow.models import utcnow

PURPOSES = ["news", "offers", "partners"]
LOCALES = ["en", "fr", "de", "es"]
CHANNELS = ["web", "email_link", "api", "support"]

# Bits of h (one signed 64-bit hash per consent) that each roll reads, so that no two rolls are
# correlated: state 0-15, news version 16, lapsed 17-26, channel 27-28, age 29-53, request 54-62.
_ROLLED = """
rolled AS (
    SELECT g, p.i, p.pid, p.i = 1 AS news,
           (h & 65535) % 100 AS r,
           1 + CASE WHEN p.i = 1 THEN (h >> 16) & 1 ELSE 0 END AS version,
           ((h >> 17) & 1023) % 100 < 2 AS lapsed,
           (h >> 27) & 3 AS ch,
           ((h >> 29) & 33554431) % 31104000 AS age,
           ((h >> 54) & 511) % 10 = 0 AS ask
    FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g
    CROSS JOIN (VALUES (1, CAST(:p1 AS int)), (2, CAST(:p2 AS int)),
                (3, CAST(:p3 AS int))) AS p(i, pid)
    CROSS JOIN LATERAL (SELECT hashtextextended(g || '.' || p.i, 0) AS h) AS hashed
), stated AS (
    SELECT *, CASE WHEN r < 80 THEN 'given' WHEN r < 88 THEN 'withdrawn'
                   WHEN r < 93 THEN 'refused' WHEN r < 97 THEN 'requested'
                   ELSE 'expired' END AS state
    FROM rolled
), timed AS (
    SELECT *,
           CASE WHEN state = 'given' AND lapsed
                THEN :now - make_interval(secs => 3600 + age % 428400) - interval '365 days'
                ELSE :now - make_interval(secs => age) END AS at
    FROM stated
)"""

_SUBJECTS = """
INSERT INTO subject (id, external_id, subject_ref, generation, email, locale, last_seq,
                     created_at)
SELECT g, 'u' || g,
       substr(encode(hmac(convert_to('subject:u' || g, 'UTF8'), :key, 'sha256'), 'hex'), 1, 32),
       1, 'user' || g || '@example.com', (CAST(:locales AS text[]))[1 + g % 4], 3,
       :now - interval '400 days'
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g
"""

# One statement: the events, their consents, the open requests and the deliveries.
_CONSENTS = f"""
WITH {_ROLLED.strip()}, e AS (
    INSERT INTO consent_event (id, subject_id, purpose_id, seq, action, state, purpose_version,
                               occurred_at, recorded_at, valid_until, actor_type, actor, channel)
    SELECT CAST(lpad(to_hex(CAST(:ms AS bigint) + g::bigint * 3 + i), 12, '0') || '7'
                || substr(md5(g || '.' || i), 1, 3) || '8' || substr(md5(g || '.' || i), 4, 15)
                AS uuid),
           g, pid, i,
           CASE state WHEN 'given' THEN 'grant' WHEN 'withdrawn' THEN 'revoke'
                WHEN 'refused' THEN 'refuse' WHEN 'requested' THEN 'request' ELSE 'expire' END,
           state, version, at, at,
           CASE WHEN state = 'given' THEN at + interval '365 days'
                WHEN state = 'expired' THEN at END,
           CASE WHEN ch = 3 THEN 'agent' ELSE 'subject' END,
           CASE WHEN ch = 3 THEN 'bench-agent' END,
           (CAST(:channels AS text[]))[1 + ch]
    FROM timed
    RETURNING id, subject_id, purpose_id, state, purpose_version, occurred_at, valid_until
), c AS (
    INSERT INTO consent (subject_id, purpose_id, state, purpose_version, given_at, valid_until,
                         updated_at, last_event_id)
    SELECT subject_id, purpose_id, state, purpose_version,
           CASE WHEN state = 'given' THEN occurred_at
                WHEN state = 'expired' THEN occurred_at - interval '365 days' END,
           valid_until, occurred_at, id
    FROM e
), q AS (
    INSERT INTO consent_request (subject_id, purpose_id, purpose_version, kind, status,
                                 requested_at, deadline, followups_sent)
    SELECT g, pid, CASE WHEN news THEN 2 ELSE 1 END,
           CASE WHEN news THEN 'reconsent' ELSE 'collection' END, 'open', at,
           :now + make_interval(days => 1 + (g + i) % 60), 0
    FROM timed WHERE ask
)
INSERT INTO delivery (system_id, event_id, webhook_id, event_type, payload, state, attempts,
                      next_attempt_at, created_at, delivered_at, last_status, last_error)
SELECT CAST(:system AS int), id, 'msg_' || md5(CAST(id AS text)), 'consent.withdrawn', '{{}}',
       outcome, CASE outcome WHEN 'dead' THEN 8 ELSE 1 END,
       occurred_at + CASE outcome WHEN 'pending' THEN interval '1 hour' ELSE interval '0' END,
       occurred_at, CASE WHEN outcome = 'delivered' THEN occurred_at + interval '2 seconds' END,
       CASE WHEN outcome = 'delivered' THEN 200 ELSE 503 END,
       CASE WHEN outcome = 'delivered' THEN NULL ELSE 'HTTP 503' END
FROM (SELECT *, CASE abs(hashtext(CAST(id AS text))) % 10 WHEN 0 THEN 'pending'
                     WHEN 1 THEN 'pending' WHEN 2 THEN 'dead' ELSE 'delivered' END AS outcome
      FROM e WHERE state = 'withdrawn') AS withdrawn
"""

_AUDIT = """
INSERT INTO audit_entry (seq, recorded_at, action, subject_ref, purpose_key, actor_type, actor,
                         channel, run_id, detail, prev_hash, hash)
SELECT CAST(:base AS bigint) + (s.id - 1) * 4 + 1, s.created_at, 'subject.created',
       s.subject_ref, NULL, NULL, NULL, NULL, NULL,
       json_build_object('has_email', true, 'locale', s.locale),
       md5(s.subject_ref) || md5('p' || s.id), md5(s.subject_ref) || md5('h' || s.id)
FROM subject s WHERE s.id BETWEEN :lo AND :hi
UNION ALL
SELECT CAST(:base AS bigint) + (e.subject_id - 1) * 4 + 1 + e.seq, e.recorded_at,
       'consent.' || e.action, s.subject_ref, pk.key, e.actor_type, e.actor, e.channel, NULL,
       json_build_object('event_id', e.id, 'seq', e.seq, 'from', NULL, 'to', e.state,
                         'purpose_version', e.purpose_version, 'occurred_at', e.occurred_at,
                         'valid_until', e.valid_until, 'reason', NULL, 'v', 2, 'evidence', NULL),
       md5(e.id::text) || md5('p' || e.id::text), md5(e.id::text) || md5('h' || e.id::text)
FROM consent_event e JOIN subject s ON s.id = e.subject_id JOIN purpose pk ON pk.id = e.purpose_id
WHERE e.subject_id BETWEEN :lo AND :hi
"""


def make_database(url: str) -> str:
    """Drop the database ``url`` names (if it exists) and create it empty."""
    parsed = make_url(db.normalise_url(url))
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    return url


def _setup(engine: Engine) -> None:
    """The purposes (news revised materially) and the system, through the product's calls."""
    with db.session_scope(engine) as s:
        for key in PURPOSES:
            purposes.add(s, key, title=key.title(), validity_days=365)
        systems.add(s, "crm", PURPOSES, webhook_url="https://crm.example.com/hooks")
    with db.session_scope(engine) as s:
        purposes.revise(s, "news", material=True, title="News, revised")


def fill(engine: Engine, n: int, batch: int = 100_000, start: int = 1) -> float:
    """Subjects ``start`` .. ``n`` and all they own (module docstring), a batch per
    transaction; ``start`` 1 sets the purposes and the system up first. Returns the seconds
    taken (the final ``VACUUM ANALYZE`` included)."""
    now = utcnow()
    if start == 1:
        _setup(engine)
    with db.session_scope(engine) as s:
        pids = {k: i.id for k, i in purposes.info(s).items()}
        secret = keys.reference_key(s)
        base = s.execute(text("SELECT seq FROM audit_head WHERE id = 1")).one()[0]
        if start > 1:  # the entries of the subjects filled before follow the head's seq
            top = s.execute(text("SELECT max(seq) FROM audit_entry")).one()[0]
            base = top - 4 * (start - 1)
        system_id = s.execute(text("SELECT id FROM system WHERE name = 'crm'")).one()[0]
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pgcrypto"))
    params: dict[str, object] = {
        "now": now,
        "ms": int(now.timestamp() * 1000) - 3 * n - 10,
        "key": secret,
        "base": base,
        "system": system_id,
        "locales": LOCALES,
        "channels": CHANNELS,
        "p1": pids["news"],
        "p2": pids["offers"],
        "p3": pids["partners"],
    }
    for lo in range(start, n + 1, batch):
        hi = min(lo + batch - 1, n)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            for sql in (_SUBJECTS, _CONSENTS, _AUDIT):
                conn.execute(text(sql), {**params, "lo": lo, "hi": hi})
        print(f"  {hi:,} subjects ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    with engine.begin() as conn:
        top = base + 4 * n
        last = conn.execute(text("SELECT hash FROM audit_entry WHERE seq = :s"), {"s": top}).one()
        conn.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": top, "h": last[0]}
        )
        conn.execute(text("SELECT setval('subject_id_seq', (SELECT max(id) FROM subject))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    took = time.perf_counter() - started
    print(summary(engine, took))
    return took


def summary(engine: Engine, took: float | None = None) -> str:
    """One line: how many rows of each kind the database holds."""
    tables = ["subject", "consent", "consent_event", "consent_request", "delivery", "audit_entry"]
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).one()[0] for t in tables}
    line = ", ".join(f"{v:,} {k}" for k, v in counts.items())
    return f"population: {line}" + (f" (filled in {took:.0f}s)" if took is not None else "")


def prepare(url: str, subjects: int, reuse: bool) -> tuple[Engine, int]:
    """The engine of a filled database and its number of subjects: with ``reuse``, the
    database as an earlier fill left it (its own count; refused if it holds nobody), migrated to
    the code's schema (migrations added since the fill), else made afresh, migrated and filled
    with ``subjects``."""
    if not reuse:
        make_database(url)
    engine = db.make_engine(url)
    db.upgrade(engine)
    if not reuse:
        fill(engine, subjects)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT coalesce(max(id), 0) FROM subject")).one()[0]
    if n == 0:
        raise SystemExit(f"--reuse: {make_url(url).database} holds no subjects; fill it first")
    print(summary(engine), f"as of {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    return engine, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="PostgreSQL URL of a database to make")
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--fill-from", type=int, help="go on filling a database from subject K")
    args = parser.parse_args()
    if args.fill_from:
        fill(db.make_engine(args.url), args.subjects, args.batch, start=args.fill_from)
        return
    make_database(args.url)
    engine = db.make_engine(args.url)
    db.upgrade(engine)
    fill(engine, args.subjects, args.batch)


if __name__ == "__main__":
    main()
