"""audit-anchor: publish the signed audit chain head where the database's owner cannot rewrite it.

Each run signs the chain's head (``consentflow.anchors.sign_head``: ``seq``, ``hash``, the
instant, Ed25519 with the instance's newest key) and writes it, as one compact JSON line, to
every target of ``CONSENTFLOW_ANCHOR_TARGETS`` (comma-separated):

* a file path: the line is appended (the file is created; its directory must exist);
* an fsspec URL (``s3://bucket/anchors.jsonl`` with ``s3fs`` installed, ``file://``,
  ``memory://``, ...): the line is appended (a store without append is read and rewritten);
* ``email``: the line is emailed to ``CONSENTFLOW_COMPLIANCE_EMAIL`` (``mail.send_alert``).

``consentflow audit verify --anchors FILE`` later checks the chain against every line kept.

The run records one audit entry ``audit.anchored`` (the anchor's ``seq``, ``hash`` and ``kid``,
and the outcome per target) and its end entry (counts ``written`` / ``failed``); the artifact
``audit-anchor-targets`` lists the targets and outcomes. Targets are named without credentials
or query strings (``shown``), and no email address is recorded: the email target is ``email``.

Where anchors go is configuration, not a run parameter: whoever may start a run cannot redirect
the witness, nor make the worker append to a file of their choosing. The flow takes no
parameters.

Failure modes: a target that refuses is retried twice (``write_task``), then the others still
get the line; if any target failed the run ends Failed after recording its entries (and the
operator-alerts trigger reports it). No target configured: the run completes with a warning and
outcome ``unconfigured``. A chain whose head row is broken is not anchored (``Conflict``: the
run fails, naming ``consentflow audit verify``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from consentflow import anchors, audit, db, mail, sweeps
from consentflow.models import ActorType, Channel
from consentflow.runs import RunSummary
from consentflow.settings import get_settings
from flows.common import END_HOOKS, checked, recorded_run

FLOW = "audit-anchor"
#: The target that means "email it to CONSENTFLOW_COMPLIANCE_EMAIL".
EMAIL = "email"
#: The counts' purpose column: an anchor covers the whole chain.
ALL = "-"
#: Signing reads two rows; each target is one small write (an object store may be slow).
TIMEOUT_SECONDS = 600


def targets() -> list[str]:
    """The targets of ``CONSENTFLOW_ANCHOR_TARGETS``, in order, blanks dropped."""
    return [t.strip() for t in get_settings().anchor_targets.split(",") if t.strip()]


def shown(target: str) -> str:
    """What may be said about a target: a path as given; a URL without user, password, query
    or fragment (``s3://bucket/anchors.jsonl``); ``email`` for the compliance address."""
    if target == EMAIL or "://" not in target:
        return target
    try:
        parts = urlsplit(target)
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return target.split("://", 1)[0] + "://<unreadable>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _append_file(path: Path, data: bytes) -> None:
    """One ``O_APPEND`` write (whole lines never interleave), synced."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_url(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        with fs.open(path, "ab") as fh:
            fh.write(data)
    except NotImplementedError:  # a store that cannot append: read, add the line, rewrite
        existing = fs.cat_file(path) if fs.exists(path) else b""
        fs.pipe_file(path, existing + data)


@task(
    name="sign-head",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=sweeps.retry_transient,
    cache_policy=NO_CACHE,
)
def sign_head() -> str:
    """The chain's head, signed now: its compact line."""
    with db.session_scope(readonly=True) as session:
        return anchors.sign_head(session).compact()


@task(name="write-anchor", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def write_anchor(target: str, line: str) -> None:
    """Append ``line`` to one target, or email it; raises (so the task retries) on failure,
    with the target shown as ``shown`` names it."""
    anchor = anchors.parse(line)
    to = get_settings().compliance_email
    try:
        if target == EMAIL:
            if not to:
                raise ValueError("CONSENTFLOW_COMPLIANCE_EMAIL is not set")
            mail.send_alert(to, f"consentflow: audit anchor at entry {anchor.seq}", _email(line))
        elif "://" in target:
            _append_url(target, (line + "\n").encode())
        else:
            _append_file(Path(target).expanduser(), (line + "\n").encode())
    except Exception as exc:
        text = str(exc).replace(target, shown(target))
        if to:  # an SMTP refusal may quote the address
            text = text.replace(to, "<compliance email>")
        first = (text.splitlines() or [""])[0][:300]
        raise RuntimeError(f"{type(exc).__name__}: {first}") from None


def _email(line: str) -> str:
    return (
        "The signed head of consentflow's audit chain, as of now. Keep this line: append it "
        "to an anchors file (one line each, JSON Lines) kept outside consentflow's database, "
        "and check the chain against all of them with\n\n"
        "    consentflow audit verify --anchors FILE\n\n"
        f"{line}\n"
    )


#: The tasks a run uses, which tests may swap (e.g. for copies without retry delays).
sign_task = sign_head
write_task = write_anchor


def record(line: str, outcomes: dict[str, str]) -> None:
    """The run's audit entry ``audit.anchored``: what was anchored and where it went."""
    anchor = anchors.parse(line)
    this_run = flow_run.id
    with db.session_scope() as session:
        audit.record(
            session,
            "audit.anchored",
            actor_type=ActorType.SYSTEM.value,
            actor=FLOW,
            channel=Channel.SYSTEM.value,
            run_id=str(this_run) if this_run else None,
            detail={
                "seq": anchor.seq,
                "hash": anchor.hash,
                "kid": anchor.kid,
                "at": anchor.at,
                "targets": outcomes,
            },
        )


@flow(name=FLOW, timeout_seconds=TIMEOUT_SECONDS, **END_HOOKS)
def audit_anchor() -> RunSummary:
    """Sign the audit chain's head and write it to every configured anchor target."""
    parameters: dict[str, Any] = checked(FLOW, {})
    log = get_run_logger()
    with recorded_run(FLOW, parameters, False) as summary:
        line = sign_task()
        outcomes: dict[str, str] = {}
        for target in targets():
            name = shown(target)
            try:
                write_task(target, line)
                outcomes[name] = "written"
            except Exception as exc:
                log.error("anchor not written to %s: %s", name, exc)
                outcomes[name] = "failed"
            summary.add(ALL, outcomes[name])
        record(line, outcomes)
        create_table_artifact(
            key=f"{FLOW}-targets",
            table=[{"target": t, "outcome": o} for t, o in outcomes.items()]
            or [{"target": "-", "outcome": "unconfigured"}],
            description=f"{FLOW}: entry {anchors.parse(line).seq}",
        )
        if not outcomes:
            summary.add(ALL, "unconfigured")
            log.warning("no anchor target configured: set CONSENTFLOW_ANCHOR_TARGETS on the worker")
        failed = [t for t, o in outcomes.items() if o == "failed"]
        if failed:
            raise RuntimeError(f"anchor not written to {', '.join(failed)}")
    return summary
