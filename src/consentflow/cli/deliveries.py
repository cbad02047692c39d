"""Webhook commands: ``consentflow deliveries ...`` and the endpoint controls on ``system``.

Sending itself is the ``propagate`` flow (``consentflow run propagate``). Loading this module has
no side effect. A ``--reason`` is held to the rule of every stored reason
(``actors.check_reason``: printable, within its column) before anything is written.

``--json`` prints the views of ``consentflow.views``, with the API's field names.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated

import typer

from consentflow import feed, views
from consentflow.actors import check_reason
from consentflow.cli._common import JsonOpt, app, emit, fmt_time, parse_time, session, system_app
from consentflow.delivery import health, ops
from consentflow.errors import InvalidInput

deliveries_app = typer.Typer(
    no_args_is_help=True, help="Webhook deliveries: list, replay, redeliver, health, feed."
)
app.add_typer(deliveries_app, name="deliveries")


_MAX_GRACE_HOURS = 24 * 366
#: Ids and cursors beyond what the columns hold are refused by the parser (exit 2), not sent
#: to the driver (an OverflowError on SQLite).
_MAX_ID = 2**31 - 1
_MAX_CURSOR = 2**63 - 1
DeliveryId = Annotated[int, typer.Argument(min=1, max=_MAX_ID, metavar="ID")]


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "operator"


@deliveries_app.command("list")
def deliveries_list(
    state: Annotated[
        str | None, typer.Option(help="pending, delivered, dead, or held (paused/disabled).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="Only this system.")] = None,
    subject: Annotated[
        str | None,
        typer.Option(metavar="EXTERNAL_ID", help="Only deliveries about this subject's changes."),
    ] = None,
    event: Annotated[
        str | None, typer.Option(metavar="EVENT_ID", help="Only deliveries of this consent event.")
    ] = None,
    after: Annotated[
        int,
        typer.Option(
            min=0, max=_MAX_ID, metavar="ID", help="Only deliveries after this id (the next page)."
        ),
    ] = 0,
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Deliveries by state, endpoint, subject or event, oldest first (as the API lists them);
    page on with --after, the last id shown.

    Each line: id, system, state, attempts, when it was delivered (first success; "-" if never),
    the next attempt if pending, purpose, event type, webhook-id, last error. "When did each
    system learn of alice's withdrawal?": deliveries list --subject alice.
    """
    with session() as s:
        found, more = ops.deliveries_page(
            s, state=state, system=system, subject=subject, event=event, after=after, limit=limit
        )
    data = [views.DeliveryOut.model_validate(v) for v in found]

    def text() -> None:
        if not found:
            typer.echo("no deliveries")
            return
        typer.echo(
            f"{'id':>7} {'system':<20} {'state':<9} {'tries':>5} {'delivered at':<20} "
            f"{'next attempt':<20} {'purpose':<16} {'type':<22} webhook-id  last error"
        )
        for v in found:
            state_ = "held" if v.held else v.state
            nxt = fmt_time(v.next_attempt_at) if v.state == "pending" else "-"
            last = v.last_error or (str(v.last_status) if v.last_status else "")
            purpose = v.purpose or "-"  # a subject.erased delivery is about a person
            typer.echo(
                f"{v.id:>7} {v.system:<20} {state_:<9} {v.attempts:>5} "
                f"{fmt_time(v.delivered_at):<20} {nxt:<20} {purpose:<16} {v.event_type:<22} "
                f"{v.webhook_id}  {last[:60]}"
            )
        if more:
            typer.echo(f"more: --after {found[-1].id}", err=True)

    emit(data, as_json, text)


@deliveries_app.command("show")
def deliveries_show(delivery_id: DeliveryId, as_json: JsonOpt = False) -> None:
    """One delivery with every attempt (time, status, latency, error class, response excerpt)."""
    with session() as s:
        view = ops.detail(s, delivery_id)
    data = views.DeliveryDetail.model_validate(view)

    def text() -> None:
        typer.echo(
            f"delivery {view.id} to {view.system}: {view.state}{' (held)' if view.held else ''}, "
            f"{view.webhook_id}, {view.event_type} ({view.purpose or 'a person'}), "
            f"delivered at {fmt_time(view.delivered_at)}"
        )
        for a in view.attempts_log:
            outcome = a.status_code if a.status_code is not None else a.error_class
            typer.echo(
                f"  #{a.attempt:<3} {fmt_time(a.started_at)}  {outcome!s:<14} "
                f"{a.latency_ms or 0:>6} ms"
            )

    emit(data, as_json, text)


@deliveries_app.command("replay")
def deliveries_replay(delivery_id: DeliveryId, as_json: JsonOpt = False) -> None:
    """Send one delivery again (same webhook-id and body), with a fresh retry schedule."""
    with session() as s:
        view = ops.replay(s, delivery_id, actor=_operator())
    held = " (held: its system is not active)" if view.held else ""
    emit(
        views.DeliveryOut.model_validate(view),
        as_json,
        lambda: typer.echo(f"delivery {delivery_id} to {view.system} queued again{held}"),
    )


@deliveries_app.command("redeliver")
def deliveries_redeliver(
    since: Annotated[str, typer.Option(help="Failed at or after this instant (ISO 8601).")],
    system: Annotated[str | None, typer.Option(help="Only this system.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue again every undelivered (dead or retrying) delivery that failed since a time."""
    when = parse_time(since, "--since")
    assert when is not None
    with session() as s:
        n = ops.redeliver_since(s, when, system=system, actor=_operator())
    emit(
        views.Redelivered(queued=n, since=when, system=system),
        as_json,
        lambda: typer.echo(f"{n} deliveries queued again"),
    )


@deliveries_app.command("health")
def deliveries_health(as_json: JsonOpt = False) -> None:
    """Per endpoint: the verdict (ok or NOT OK, and the worst condition: never succeeded,
    failing, dead letters, held, old undelivered, healthy), status, pending and held, dead
    letters, oldest undelivered, last success, and every problem found. The dashboard and the
    API judge with the same function (``delivery.health.judge``)."""
    with session() as s:
        rows = health.endpoint_health(s)

    def text() -> None:
        if not rows:
            typer.echo("no systems with webhooks")
        for h in rows:
            age = (
                f"{h.oldest_undelivered_age_s}s" if h.oldest_undelivered_age_s is not None else "-"
            )
            problems = f" ({'; '.join(h.problems)})" if h.problems else ""
            typer.echo(
                f"{h.system:<20} {'ok' if h.ok else 'NOT OK':<6} {h.condition:<15} "
                f"{h.status:<9} pending {h.pending:>6} held {h.held:>6} "
                f"dead {h.dead:>5} oldest {age:>9} last ok {fmt_time(h.last_success_at)} "
                f"failures/24h {h.failures_24h}{problems}"
            )

    emit([views.HealthRow.model_validate(h) for h in rows], as_json, text)


@deliveries_app.command("feed")
def deliveries_feed(
    system: str,
    cursor: Annotated[
        int,
        typer.Option(min=0, max=_MAX_CURSOR, help="Resume after this cursor (0: from the start)."),
    ] = 0,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 1000,
) -> None:
    """Withdrawals for a system's purposes since a cursor, as JSON Lines (for reconciliation)."""
    with session() as s:
        items = feed.withdrawals_since(s, system, cursor=cursor, limit=limit)
    for item in items:
        line = views.FeedItemOut.of(item).model_dump(mode="json")
        typer.echo(json.dumps(line, separators=(",", ":"), sort_keys=True))


# ------------------------------------------------------------------- endpoint controls


def _status_command(verb: str, doc: str) -> Callable[..., None]:
    def command(
        name: str,
        reason: Annotated[str | None, typer.Option(help="Why, recorded with the change.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        if reason is not None:
            check_reason(reason)
        with session() as s:
            system, pending = ops.set_status(s, name, verb, reason=reason, actor=_operator())
        data = views.SystemStatusOut(
            name=name, status=system.status, reason=system.status_reason, pending=pending
        )
        held = " held" if system.status != "active" else ""
        emit(
            data,
            as_json,
            lambda: typer.echo(
                f"system {name} {system.status}; {pending} deliveries pending{held}"
            ),
        )

    command.__doc__ = doc
    return command


system_app.command("pause")(
    _status_command("pause", "Hold an endpoint's deliveries (nothing is discarded).")
)
system_app.command("resume")(
    _status_command("resume", "Resume a paused endpoint; its held deliveries go out at once.")
)
system_app.command("disable")(
    _status_command("disable", "Disable an endpoint; its deliveries are held until enabled.")
)
system_app.command("enable")(
    _status_command("enable", "Re-enable an endpoint (e.g. after a 410); held deliveries go out.")
)


@system_app.command("rotate-secret")
def system_rotate_secret(
    name: str,
    grace_hours: Annotated[
        float,
        typer.Option(
            help="How long the old secret keeps signing alongside the new one (at most a year)."
        ),
    ] = 24,
    as_json: JsonOpt = False,
) -> None:
    """A new webhook secret, printed once; the old one also signs during the grace period."""
    if not 0 <= grace_hours <= _MAX_GRACE_HOURS:  # also refuses nan
        raise InvalidInput(f"--grace-hours must be 0 to {_MAX_GRACE_HOURS}")
    with session() as s:
        secret = ops.rotate_secret(s, name, grace=timedelta(hours=grace_hours), actor=_operator())
    data = views.SecretRotated(name=name, webhook_secret=secret, grace_hours=grace_hours)

    def text() -> None:
        typer.echo(f"new webhook secret for {name} (shown once, keep it safe): {secret}")
        if grace_hours:
            typer.echo(f"the old secret also signs for the next {grace_hours:g} hours")

    emit(data, as_json, text)
