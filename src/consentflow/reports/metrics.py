"""Prometheus metrics, read from the database on every scrape (``GET /metrics``).

Every number comes from the tables, never from a counter kept in memory, so it is the same
whichever process answers the scrape (web app workers, Prefect workers, the CLI all write the
same rows) and it survives restarts. ``Collector`` is a ``prometheus_client`` custom collector
bound to one read-only unit of work; ``exposition(session)`` renders the text format.

The families (endpoints are named by system name; nothing here identifies a person):

- ``consentflow_deliveries_total{endpoint,outcome}`` (counter): webhook attempts by outcome,
  from ``delivery_attempt``: ``delivered`` (a 2xx answer), ``failed`` (any other HTTP answer,
  410 included), ``error`` (no answer: refused, timed out, misconfigured). Attempt rows are
  append-only, so it only grows.
- ``consentflow_dead_letters_total{endpoint}`` (counter): deliveries given up, one per
  ``delivery.dead_lettered`` audit entry (a replay does not take one back).
- ``consentflow_outbox_queue_depth{endpoint,state}`` (gauge): deliveries not yet made,
  ``pending`` (not tried yet on its current schedule: new, or replayed), ``retrying`` (tried,
  next attempt scheduled) or ``held`` (the endpoint is paused or disabled, or has no webhook
  any more); the three add up to the endpoint's undelivered queue.
- ``consentflow_outbox_dead_letters{endpoint}`` (gauge): dead letters waiting for a replay now.
- ``consentflow_outbox_oldest_undelivered_seconds{endpoint}`` (gauge): age of the oldest delivery
  pending, held or dead (0 when there is none), the ``deliveries health`` definition.
- ``consentflow_emails_total{kind,outcome}`` (counter): consent emails by their recorded outcome
  (``sent``, ``deferred``, ``bounced``, ``failed``). A message row leaves ``claimed`` exactly once
  for an outcome that never changes and a retry is a new row, so it only grows.
  ``consentflow_emails_claimed{kind}`` (gauge): claimed and not yet recorded (a stuck value
  means a run died mid-send; see ``sweeps.claims``).
- ``consentflow_flow_run_duration_seconds{flow,outcome}`` (histogram): every real run's duration
  (``finished_at - started_at`` of its ``flow.run`` audit entry; dry runs are left out), over
  all runs ever recorded: the audit trail is append-only, so buckets, count and sum only grow and
  ``histogram_quantile(0.9, rate(..._bucket[1d]))`` reads the recent ones. An entry without both
  times (a crash recorded afterwards) counts in no bucket. ``propagate`` runs last about their
  ``run_seconds`` loop by design.
- ``consentflow_flow_run_last_finished_timestamp_seconds{flow,outcome}`` (gauge): when the latest
  such run was recorded (alert on ``time() - ...{outcome="completed"}`` for a flow that stopped).
- ``consentflow_audit_head_seq`` (gauge): the audit chain's length.

Cost: the counters (deliveries, dead letters, emails, runs) are running totals folded
incrementally (``reports._totals``): a scrape reads only the audit entries, attempts and email
rows committed since the process's previous scrape, plus the ids still open (not visible yet, or
an email still claimed); the first scrape of a process folds the whole history once. The outbox
gauges read only undelivered rows, from one index
(``ix_delivery_state_system_id_attempts_created_at``).
``bench/metrics.py`` measures both (bench/RESULTS.md, "Metrics scrape").

Failure modes: none of their own; a database that cannot be read fails the scrape (Prometheus
records ``up == 0``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlmodel import Session, col

from consentflow.models import Delivery, DeliveryState, System, SystemStatus, utcnow
from consentflow.reports import _totals
from consentflow.reports._totals import CLAIMED, RUN_BUCKETS, Totals
from consentflow.timeutil import as_utc

PREFIX = "consentflow"

#: Attempt outcomes, in the order they are listed for every endpoint (zeros included).
DELIVERY_OUTCOMES = ("delivered", "failed", "error")
QUEUE_STATES = ("pending", "retrying", "held")
#: Recorded email outcomes (``mail.SendStatus``); ``claimed`` is in flight, not an outcome.
EMAIL_OUTCOMES = ("sent", "deferred", "bounced", "failed")
__all__ = ["CLAIMED", "RUN_BUCKETS", "DatabaseCollector", "exposition"]


def exposition(session: Session, *, now: datetime | None = None) -> bytes:
    """The metrics in Prometheus' text format, read in ``session``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session, now=now))
    return generate_latest(registry)


class DatabaseCollector(Collector):
    """A custom collector over one unit of work: each ``collect`` reads the tables afresh (the
    counters from this process's running totals, brought up to date first)."""

    def __init__(self, session: Session, *, now: datetime | None = None) -> None:
        self.session = session
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or utcnow()
        systems = _Systems.read(self.session)
        totals = _totals.current(self.session, now=now)
        yield _deliveries(totals, systems)
        yield _dead_letters(totals, systems)
        yield from _outbox(self.session, systems, now)
        yield from _emails(totals)
        yield from _runs(totals)
        yield GaugeMetricFamily(
            f"{PREFIX}_audit_head_seq",
            "Sequence number of the audit chain's latest entry.",
            value=totals.audit_seq,
        )


@dataclass(frozen=True)
class _Systems:
    """Every system's name by id (one that lost its webhook still has its history), and the
    endpoints (systems with a webhook) with whether their deliveries are held."""

    names: dict[int, str]
    held: dict[int, bool]

    @classmethod
    def read(cls, session: Session) -> _Systems:
        rows = session.execute(
            select(col(System.id), col(System.name), col(System.status), col(System.webhook_url))
        ).all()
        return cls(
            names={sid: name for sid, name, _, _ in rows},
            held={sid: status != SystemStatus.ACTIVE.value for sid, _, status, url in rows if url},
        )

    def name(self, system_id: int) -> str:
        return self.names.get(system_id, str(system_id))

    def endpoints(self) -> list[str]:
        return [self.names[sid] for sid in self.held]


def _deliveries(totals: Totals, systems: _Systems) -> Metric:
    counts = {(e, o): 0 for e in systems.endpoints() for o in DELIVERY_OUTCOMES}
    for (sid, o), n in totals.attempts.counts.items():
        counts[(systems.name(sid), o)] = counts.get((systems.name(sid), o), 0) + n
    family = CounterMetricFamily(
        f"{PREFIX}_deliveries",
        "Webhook delivery attempts by endpoint (system name) and outcome: delivered (2xx), "
        "failed (another HTTP answer), error (no answer).",
        labels=["endpoint", "outcome"],
    )
    for (endpoint, o), n in sorted(counts.items()):
        family.add_metric([endpoint, o], n)
    return family


def _dead_letters(totals: Totals, systems: _Systems) -> Metric:
    counts = dict.fromkeys(systems.endpoints(), 0) | dict(totals.dead_letters)
    family = CounterMetricFamily(
        f"{PREFIX}_dead_letters",
        "Deliveries given up after their retry schedule, by endpoint (audit entries "
        "delivery.dead_lettered; a replay does not take one back).",
        labels=["endpoint"],
    )
    for endpoint, n in sorted(counts.items()):
        family.add_metric([endpoint], n)
    return family


def _outbox(session: Session, systems: _Systems, now: datetime) -> Iterator[Metric]:
    """Queue depth by state, dead letters and the oldest undelivered age, per endpoint, from
    one grouped pass over the undelivered rows only."""
    pending, dead = DeliveryState.PENDING.value, DeliveryState.DEAD.value
    tried = (col(Delivery.attempts) > 0).label("tried")
    stmt = (
        select(col(Delivery.system_id), col(Delivery.state), tried, func.count())
        .add_columns(func.min(col(Delivery.created_at)))
        .where(col(Delivery.state).in_([pending, dead]))
        .group_by(col(Delivery.system_id), col(Delivery.state), tried)
    )
    endpoints = systems.endpoints()
    depth = {(e, s): 0 for e in endpoints for s in QUEUE_STATES}
    dead_now = dict.fromkeys(endpoints, 0)
    oldest: dict[str, datetime | None] = dict.fromkeys(endpoints)
    for sid, state, was_tried, n, first in session.execute(stmt):
        # A system without a webhook cannot be sent to: its leftovers count as held.
        name, held = systems.name(sid), systems.held.get(sid, True)
        if state == dead:
            dead_now[name] = dead_now.get(name, 0) + n
        else:
            which = "held" if held else ("retrying" if was_tried else "pending")
            depth[(name, which)] = depth.get((name, which), 0) + n
        at, seen = as_utc(first), oldest.get(name)
        oldest[name] = at if seen is None or (at is not None and at < seen) else seen
    queue = GaugeMetricFamily(
        f"{PREFIX}_outbox_queue_depth",
        "Deliveries not yet made, by endpoint and state: pending (not tried yet), retrying, "
        "held (endpoint paused or disabled).",
        labels=["endpoint", "state"],
    )
    for (endpoint, state), n in sorted(depth.items()):
        queue.add_metric([endpoint, state], n)
    yield queue
    yield _per_endpoint(
        "outbox_dead_letters", "Dead letters waiting for a replay, by endpoint.", dead_now
    )
    ages = {k: max(0.0, (now - v).total_seconds()) if v else 0.0 for k, v in oldest.items()}
    yield _per_endpoint(
        "outbox_oldest_undelivered_seconds",
        "Age of the oldest delivery pending, held or dead, by endpoint (0: none).",
        ages,
    )


def _per_endpoint(name: str, documentation: str, values: dict[str, Any]) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["endpoint"])
    for endpoint, value in sorted(values.items()):
        family.add_metric([endpoint], value)
    return family


def _emails(totals: Totals) -> Iterator[Metric]:
    kinds = {kind for kind, _ in totals.emails.counts} | set(totals.emails.claimed.values())
    outcomes = {(kind, o): 0 for kind in kinds for o in EMAIL_OUTCOMES}
    outcomes.update(totals.emails.counts)
    claimed = dict.fromkeys(kinds, 0)
    for kind in totals.emails.claimed.values():
        claimed[kind] += 1
    total = CounterMetricFamily(
        f"{PREFIX}_emails",
        "Consent emails by kind and recorded outcome (sent, deferred, bounced, failed).",
        labels=["kind", "outcome"],
    )
    for (kind, o), n in sorted(outcomes.items()):
        total.add_metric([kind, o], n)
    yield total
    gauge = GaugeMetricFamily(
        f"{PREFIX}_emails_claimed",
        "Consent emails claimed for sending whose outcome is not recorded yet, by kind.",
        labels=["kind"],
    )
    for kind, n in sorted(claimed.items()):
        gauge.add_metric([kind], n)
    yield gauge


def _runs(totals: Totals) -> Iterator[Metric]:
    histogram = HistogramMetricFamily(
        f"{PREFIX}_flow_run_duration_seconds",
        "Duration of every recorded real flow run (audit entries flow.run), by flow and outcome.",
        labels=["flow", "outcome"],
    )
    last = GaugeMetricFamily(
        f"{PREFIX}_flow_run_last_finished_timestamp_seconds",
        "When the latest real run of each flow with each outcome was recorded (Unix time).",
        labels=["flow", "outcome"],
    )
    edges = [str(b) for b in RUN_BUCKETS] + ["+Inf"]
    for (flow, outcome), stats in sorted(totals.runs.items()):
        buckets = list(zip(edges, stats.cumulative(), strict=True))
        histogram.add_metric([flow, outcome], buckets, stats.total)
        last.add_metric([flow, outcome], stats.last.timestamp() if stats.last else 0.0)
    yield histogram
    yield last
