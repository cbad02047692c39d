"""The root of the test suite: a hermetic Prefect environment first, then the fixture plugins.

Order matters: the Prefect variables below are set when this file is imported, before anything
imports ``prefect`` (the plugins in ``tests/support/`` import ``consentflow``, and the flows import
``prefect``), so every flow run in the suite uses a private home, no server and no telemetry.
Nothing else belongs here: fixtures live in ``tests/support/`` as plugin modules, listed in
``pytest_plugins`` below (``database``: ``engine`` on SQLite and PostgreSQL and its relatives;
``prefect``: ``prefect_harness``; ``cli``: ``cli``; ``smtp``: ``smtp_sink``, ``smtp_down``;
``webhooks``: ``receiver``, ``allow_loopback``).

Layout: the tests mirror the code (``tests/ledger``, ``tests/sweeps``, ``tests/delivery``,
``tests/flows``, ``tests/web``, ``tests/cli``, ``tests/mail``; cross-cutting checks at the top).
Every directory is a package (an ``__init__.py``), so pytest's default import mode puts the
repository root on ``sys.path`` and imports ``tests.ledger.test_links`` and
``tests.web.test_links`` under names of their own: basenames may repeat across directories, and
the worker processes that some tests spawn import the test module by that same name. Helpers are
imported the same way: ``from tests.support.web import seed``. Why not ``tests/`` itself on
``sys.path`` (``from support.web import ...``): then the directory ``tests/flows`` would hide the
real ``flows`` package (a namespace package found on ``sys.path`` wins over the editable
install's finder, which Python asks last), and ``import flows.expiry_sweep`` would fail.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Hermetic Prefect for any test that runs a flow: a private home, no server, no telemetry.
_PREFECT_HOME = tempfile.mkdtemp(prefix="consentflow-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
# Key files of PostgreSQL test databases go here, not into ~/.local/share/consentflow.
os.environ["CONSENTFLOW_DATA_DIR"] = os.path.join(_PREFECT_HOME, "consentflow-data")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# Imported by pytest after this module has run, so after the variables above are set.
pytest_plugins = [
    "tests.support.database",
    "tests.support.prefect",
    "tests.support.cli",
    "tests.support.smtp",
    "tests.support.webhooks",
    "tests.support.prefect_server",
]
