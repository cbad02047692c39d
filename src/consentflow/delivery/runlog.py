"""Where delivery log lines go: the Prefect run's logs inside a flow or task run.

Prefect's run logs only show its own run loggers (and any ``PREFECT_LOGGING_EXTRA_LOGGERS``), so
inside a run the engine and the alert log through ``prefect.logging.get_run_logger``: each
attempt then shows in the ``propagate`` run's logs in the UI. Outside a run (a plain worker
process, the CLI, tests) they go to the ``consentflow.delivery`` logger. Lines name systems,
webhook ids and delivery ids only: never a secret, an email address or a person.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("consentflow.delivery")

Logger = logging.Logger | logging.LoggerAdapter[Any]


def logger() -> Logger:
    """The current run's logger, or ``consentflow.delivery`` outside a Prefect run."""
    context = sys.modules.get("prefect.context")  # no run can exist if Prefect is not loaded
    if context is None:
        return log
    if context.TaskRunContext.get() is None and context.FlowRunContext.get() is None:
        return log
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # a context without a run (e.g. being torn down): fall back
        return log
