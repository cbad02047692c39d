"""The session's one Prefect test server (``prefect_harness``), for tests that run a flow.

The hermetic environment (a private ``PREFECT_HOME``, no server URL, no telemetry) is set by
``tests/conftest.py`` when it is imported, before this or any module imports ``prefect``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for the whole session (~7 s to start), heartbeat off so a
    sync flow run does not end on a whole second."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=90),
    ):
        yield
