"""Ledger commands: the database, subjects, consents, access checks and the audit trail (purposes
and systems: ``cli/catalog.py``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import DataError

from consentflow import (
    access,
    anchors,
    audit,
    db,
    integrity,
    lifecycle,
    receipt,
    subjects,
    timeutil,
    views,
)
from consentflow.cli._common import (
    JsonOpt,
    app,
    audit_app,
    connect,
    consent_app,
    db_app,
    emit,
    fail,
    first_line,
    fmt_time,
    parse_time,
    session,
    subject_app,
)
from consentflow.errors import InvalidInput
from consentflow.models import ActorType, Channel

# ---------------------------------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Create the schema, or upgrade it to this version of consentflow."""
    connect(schema=False)
    revision = db.upgrade()
    emit(
        views.Revision(revision=revision),
        as_json,
        lambda: typer.echo(f"database at revision {revision}"),
    )


# ----------------------------------------------------------------------------------- subject


@subject_app.command("add")
def subject_add(
    external_id: str,
    email: Annotated[str | None, typer.Option(help="Only needed for reminders.")] = None,
    locale: Annotated[
        str | None,
        typer.Option(
            help="Language tag, e.g. fr (default: none; then the browser's language decides)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a subject under your own identifier for them."""
    with session() as s:
        subj = subjects.add(
            s, external_id, email=email, locale=locale, actor=lifecycle.agent_actor()
        )
    emit(
        views.SubjectOut.of(subj, []),
        as_json,
        lambda: typer.echo(f"subject {subj.external_id} added"),
    )


@subject_app.command("import")
def subject_import(
    file: Annotated[
        Path,
        typer.Argument(help="CSV: external_id,email,locale,purpose,state,given_at,valid_until"),
    ],
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Import the good rows anyway.")
    ] = False,
    propagate: Annotated[
        bool, typer.Option("--propagate", help="Send webhooks for imported withdrawals.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100000)] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Bulk-migrate subjects and consents from another platform (idempotent on re-run)."""
    from consentflow import importer

    try:
        report = importer.import_file(
            connect(), file, skip_bad=skip_bad, propagate=propagate, batch_size=batch_size
        )
    except DataError as exc:  # validation should have caught it: say so, no traceback
        fail(f"{file}: the database refused a value: {first_line(exc)}", 2)
    if report.errors and not skip_bad:
        for err in report.errors[:1000]:
            typer.echo(f"{file}:{err.line}: {err.message}", err=True)
        more = len(report.errors) - 1000
        if more > 0:
            typer.echo(f"... and {more} more", err=True)
        fail(
            f"{len(report.errors)} bad row(s), nothing imported: fix them or pass --skip-bad",
            2,
        )

    def text() -> None:
        for err in report.errors:
            typer.echo(f"{file}:{err.line}: skipped: {err.message}", err=True)
        typer.echo(
            f"{report.rows} rows: {report.subjects_created} subjects created, "
            f"{report.consents_created} consents imported, {report.unchanged} already present, "
            f"{len(report.errors)} bad rows skipped"
        )

    emit(views.ImportReportOut.of(report), as_json, text)


@subject_app.command("erase")
def subject_erase(
    external_id: str,
    reason: Annotated[
        str,
        typer.Option(help="Why (e.g. the request's reference): kept in the audit trail for good."),
    ],
    agent: Annotated[
        str | None, typer.Option(help="Who asked for it (default: your OS user).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase a person (GDPR Art. 17): withdraw their consents, tell every system, forget their
    id and contact data; the pseudonymous history stays (docs/erasure.md)."""
    from consentflow import erasure

    with session() as s:
        done = erasure.erase(s, external_id, lifecycle.agent_actor(agent), reason=reason)

    def text() -> None:
        typer.echo(
            f"subject erased: now {done.subject_ref}; {len(done.withdrawn)} consent(s) "
            f"withdrawn, {len(done.expired)} expired, {len(done.notified)} system(s) to be told "
            f"({done.deliveries} webhook(s) enqueued)"
        )

    emit(done, as_json, text)


# ----------------------------------------------------------------------------------- consent


def _actor(actor: str, channel: str, agent: str | None, reason: str | None) -> lifecycle.Actor:
    try:
        actor_type, chan = ActorType(actor), Channel(channel)
    except ValueError:
        raise InvalidInput(
            f"bad --actor {actor!r} or --channel {channel!r}: actors are "
            f"{', '.join(ActorType)}; channels are {', '.join(Channel)}"
        ) from None
    if actor_type is ActorType.AGENT:
        base = lifecycle.agent_actor(agent, reason)
        return lifecycle.Actor(actor_type, chan, base.name, reason)
    return lifecycle.Actor(actor_type, chan, agent, reason)


ActorOpt = Annotated[
    str, typer.Option(help="Who expressed it: subject, agent (on their behalf), import, system.")
]
ChannelOpt = Annotated[
    str, typer.Option(help="How it reached you: web, email_link, support, api, import, system.")
]
AgentOpt = Annotated[
    str | None, typer.Option(help="The agent's name (default: your OS user) when --actor agent.")
]
ReasonOpt = Annotated[str | None, typer.Option(help="Why, recorded with the event.")]


def _change_command(action: Callable[..., lifecycle.Change], verb: str) -> Callable[..., None]:
    def command(
        external_id: str,
        purpose: str,
        actor: ActorOpt = "agent",
        channel: ChannelOpt = "support",
        agent: AgentOpt = None,
        reason: ReasonOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        who = _actor(actor, channel, agent, reason)
        with session() as s:
            change = action(s, external_id, purpose, who)
        valid = f", valid until {fmt_time(change.valid_until)}" if change.valid_until else ""
        emit(
            views.ChangeOut.of(change),
            as_json,
            lambda: typer.echo(
                f"{external_id} / {purpose}: {change.previous_state or 'absent'} -> "
                f"{change.state} (seq {change.seq}{valid})"
            ),
        )

    command.__doc__ = verb
    return command


consent_app.command("grant")(
    _change_command(lifecycle.grant, "Record that the subject gives consent (validity starts now).")
)
consent_app.command("refuse")(
    _change_command(lifecycle.refuse, "Record that the subject refuses to consent.")
)
consent_app.command("revoke")(
    _change_command(lifecycle.revoke, "Withdraw a given consent; subscribed systems are told.")
)
consent_app.command("renew")(
    _change_command(lifecycle.renew, "Confirm a given consent again; its validity restarts.")
)
consent_app.command("request")(
    _change_command(lifecycle.request, "Record that the subject has been asked for consent.")
)


@consent_app.command("show")
def consent_show(
    external_id: str,
    at: Annotated[str | None, typer.Option(help="Show the state as of this past instant.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A subject's consents, now or as of a past instant."""
    when = parse_time(at, "--at")
    with session(readonly=True) as s:
        found = lifecycle.as_of(s, external_id, when) if when else lifecycle.current(s, external_id)
    data = views.ConsentsOut(
        subject=external_id,
        at=when,
        consents=[views.ConsentOut.model_validate(v) for v in found],
    )

    def text() -> None:
        if not found:
            typer.echo(f"{external_id}: no consents" + (f" as of {fmt_time(when)}" if when else ""))
        for v in found:
            typer.echo(
                f"{v.purpose:<24} {v.state:<12} v{v.purpose_version:<3} "
                f"given {fmt_time(v.given_at)}  valid until {fmt_time(v.valid_until)}"
            )

    emit(data, as_json, text)


@consent_app.command("history")
def consent_history(external_id: str, as_json: JsonOpt = False) -> None:
    """Every consent event of a subject, in order."""
    with session(readonly=True) as s:
        events = lifecycle.history(s, external_id)
    data = [views.EventOut.of(key, e) for key, e in events]

    def text() -> None:
        for d in data:
            typer.echo(
                f"{d.seq:>4} {timeutil.iso_seconds(d.occurred_at)[:19]} {d.purpose:<20} "
                f"{d.action:<10} -> {d.state:<12} by {d.actor_type} via {d.channel}"
            )

    emit(data, as_json, text)


@consent_app.command("receipt")
def consent_receipt(
    external_id: str,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="iso: ISO/IEC TS 27560 (JSON-LD, DPV); kantara: Kantara Consent Receipt v1.1.",
        ),
    ] = "iso",
    as_json: Annotated[
        bool, typer.Option("--json", help="Accepted for symmetry: the receipt is JSON.")
    ] = False,
) -> None:
    """The subject's consent receipt (JSON), as the API serves it: ISO/IEC TS 27560 by default,
    or the Kantara v1.1 form (see docs/receipts.md)."""
    if fmt not in receipt.FORMATS:
        fail(f"bad --format {fmt[:20]!r}: use {' or '.join(receipt.FORMATS)}", 2)
    with session(readonly=True) as s:
        document = receipt.build(s, external_id, fmt)
    typer.echo(json.dumps(document, indent=2))


# ------------------------------------------------------------------------------------- check


@app.command("check")
def check_command(
    external_id: str,
    purpose: str,
    system: Annotated[str | None, typer.Option(help="The system asking.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """May SYSTEM use this subject's data for PURPOSE? Exit 0 if allowed, 1 if not."""
    with session(readonly=True) as s:
        decision = access.check(s, external_id, purpose, system)
    verdict = "allowed" if decision.allowed else "not allowed"
    valid = f" (valid until {fmt_time(decision.valid_until)})" if decision.valid_until else ""
    emit(
        views.DecisionOut.model_validate(decision),
        as_json,
        lambda: typer.echo(f"{verdict}: {decision.reason}{valid}"),
    )
    raise typer.Exit(0 if decision.allowed else 1)


# ------------------------------------------------------------------------------------- audit


@audit_app.command("verify")
def audit_verify(
    expect: Annotated[
        str | None,
        typer.Option(help="An anchor SEQ:HASH recorded earlier that must still be in the chain."),
    ] = None,
    anchors_file: Annotated[
        Path | None,
        typer.Option(
            "--anchors",
            help="A JSON Lines file of signed anchors (kept from webhooks' "
            "consentflow-audit-anchor header or written by the audit-anchor flow): every one "
            "must be signed by a key of this instance and still match the chain.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the hash chain, and the consent history against it (and every anchor of
    --anchors); exit 1 naming the first fault."""
    anchor = None
    if expect is not None:
        seq, _, digest = expect.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise InvalidInput(f"bad --expect {expect!r}: use SEQ:HASH as printed by verify")
        anchor = (int(seq), digest)
    witnessed = None if anchors_file is None else _read_anchors(anchors_file)
    with session(readonly=True) as s:
        result = integrity.check(s, expect=anchor)
        missed = [] if witnessed is None else anchors.verify_against(s, witnessed)
    record_ok = result["ok"]
    result["ok"] = record_ok and not missed
    result["findings"] = [*result["findings"], *missed]
    data = views.VerifyOut.model_validate(result)
    if data.ok:
        n = len(witnessed or [])
        agree = "1 anchor matches it" if n == 1 else f"{n} anchors match it"
        matched = "" if witnessed is None else f"; {agree}"
        emit(
            data,
            as_json,
            lambda: typer.echo(
                f"audit trail intact: {data.entries} entries, head {data.head}; "
                f"the consent history matches it{matched}"
            ),
        )
        return
    if as_json:
        emit(data, as_json, lambda: None)
    for finding in missed:
        typer.echo(f"consentflow: {finding}", err=True)
    if record_ok:
        fail(
            f"{len(missed)} of {len(witnessed or [])} anchors do not match this chain: it was "
            "rewritten or cut off after they were taken, or they are forged",
            1,
        )
    if data.history_problem is None:
        fail(f"audit trail broken at entry {data.first_bad}: {data.problem}", 1)
    *others, last = data.findings or [data.history_problem]
    for finding in others:  # one line each, every one prefixed like any error
        typer.echo(
            f"consentflow: consent history does not match the audit trail: {finding}", err=True
        )
    fail(f"consent history does not match the audit trail: {last}", 1)


def _read_anchors(path: Path) -> list[anchors.Anchor]:
    """The anchors of a JSON Lines file; a file that cannot be read, or a malformed line, is
    one ``InvalidInput`` line (exit 2) naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"cannot read {path}: not UTF-8 text") from None
    return anchors.load(text.splitlines(), str(path))


@audit_app.command("export")
def audit_export(
    subject: Annotated[str | None, typer.Option(help="Only this subject's entries.")] = None,
    since: Annotated[str | None, typer.Option(help="From this instant (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this instant (ISO 8601).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Accepted for symmetry: the output is JSON Lines.")
    ] = False,
) -> None:
    """Write audit entries as JSON Lines, with their hashes."""
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    with session(readonly=True) as s:
        ref = None
        if subject is not None:
            ref = subjects.require(s, subject).subject_ref
        if output is None:
            n = audit.export(s, sys.stdout, subject_ref=ref, since=start, until=end)
        else:
            try:
                fh = output.open("w", encoding="utf-8")
            except OSError as exc:
                raise InvalidInput(f"cannot write {output}: {exc.strerror}") from None
            with fh:
                n = audit.export(s, fh, subject_ref=ref, since=start, until=end)
            typer.echo(f"{n} entries written to {output}", err=True)
