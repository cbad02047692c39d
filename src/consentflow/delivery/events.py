"""Prefect events about delivery that automations hang notifications and restarts on.

Emitted only by the ``propagate`` flow, at the end of its run, from what the run's report
counted; a consent change (CLI, API, web page) never talks to Prefect: the delivery loop is woken
by the database itself (``delivery.wakeup``).

- ``consentflow.delivery.dead_lettered``: per endpoint that had deliveries dead-lettered in the
  run; payload ``{"dead_lettered": n}``.
- ``consentflow.endpoint.failing``: per endpoint whose every attempt in the run failed (some
  attempt, none delivered); payload the endpoint's counts per outcome.
- ``consentflow.propagate.loop-ended``: a run that held a loop slot ended its loop (normally or
  by failure); the ``propagate/continuous`` deployment's trigger starts the next loop on it.

Resources are ``consentflow.endpoint.<system name>`` (``consentflow.propagate.loop`` for the
last); Prefect adds the flow run as a related resource. Payloads hold counts only: never a
person, an address, a URL or a secret. ``emit`` never raises: the run's audit entry and state
are the record, an event is a notification. Events are queued and sent in the background;
Prefect sends what is still queued when the process exits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("consentflow.delivery")

DEAD_LETTERED = "consentflow.delivery.dead_lettered"
ENDPOINT_FAILING = "consentflow.endpoint.failing"
LOOP_ENDED = "consentflow.propagate.loop-ended"
LOOP_RESOURCE = "consentflow.propagate.loop"

#: Outcomes of an attempt that reached (or tried to reach) the endpoint and did not succeed.
FAILED_OUTCOMES = ("retried", "dead_lettered", "disabled_410")
DELIVERED = "delivered"


def endpoint_resource(system: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"consentflow.endpoint.{system}",
        "prefect.resource.name": system,
    }


def emit(event: str, resource: dict[str, str], payload: Mapping[str, Any]) -> bool:
    """Emit one Prefect event now; False (and a warning) if it could not be handed over."""
    try:
        from prefect.events import emit_event

        return emit_event(event=event, resource=resource, payload=dict(payload)) is not None
    except Exception as exc:  # the run's record stands; a lost event only loses a notification
        log.warning("could not emit %s: %s", event, type(exc).__name__)
        return False


def failing(by_system: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Endpoints whose attempts in this run all failed (at least one attempt, none delivered)."""
    return sorted(
        system
        for system, counts in by_system.items()
        if not counts.get(DELIVERED) and any(counts.get(o) for o in FAILED_OUTCOMES)
    )


def failures(by_system: Mapping[str, Mapping[str, int]]) -> list[tuple[str, str, dict[str, int]]]:
    """The events a run's counts per endpoint call for: (event, system, payload)."""
    out: list[tuple[str, str, dict[str, int]]] = []
    for system, counts in sorted(by_system.items()):
        if counts.get("dead_lettered"):
            out.append((DEAD_LETTERED, system, {"dead_lettered": counts["dead_lettered"]}))
    for system in failing(by_system):
        out.append((ENDPOINT_FAILING, system, {k: v for k, v in by_system[system].items() if v}))
    return out


def emit_failures(
    by_system: Mapping[str, Mapping[str, int]], sent: set[tuple[str, str]] | None = None
) -> int:
    """Emit ``failures(by_system)``; how many were handed over. With ``sent`` (the (event,
    system) pairs this run already emitted, updated here), each pair goes out once per run: a
    loop emits after every pass, so operators hear of a failing endpoint within seconds, not at
    the end of the run."""
    handed = 0
    for event, system, payload in failures(by_system):
        if sent is not None:
            if (event, system) in sent:
                continue
            sent.add((event, system))
        handed += emit(event, endpoint_resource(system), payload)
    return handed


def loop_ended(payload: Mapping[str, Any]) -> bool:
    """Emit ``consentflow.propagate.loop-ended`` (counts and the slot number only)."""
    resource = {"prefect.resource.id": LOOP_RESOURCE, "prefect.resource.name": "propagate loop"}
    return emit(LOOP_ENDED, resource, payload)
