"""The order in which the suite's modules are handed out: the long ones first.

CI runs ``pytest -n 4 --dist loadfile`` on two cores: each module runs whole in one worker
process, and a worker asks for the next module when it is nearly out of tests. xdist's own order
(most tests first) puts the modules with a few long tests (a Prefect server and worker, the demo,
the fault scenario) last, where one of them alone makes the tail of the run while the other
workers have nothing left to do. This plugin (``-p tests.support.ordering`` in pyproject's
``addopts``, with ``--no-loadscope-reorder`` so xdist keeps the order) puts the modules in
``LONG`` first, longest first, then the rest with the most tests first, as xdist would; tests
keep their order inside a module. It changes no test, only when each module starts.

``LONG`` is kept by hand from ``--durations`` (whole modules, set-up included); a path in it
that does not exist is an error, so a renamed module cannot silently drop out of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules that take half a minute or more, longest first. The seconds: the whole module,
#: set-up included, in one of three workers on a two-core machine (``--junitxml`` of a full run,
#: 2026-12-01; CI's vary with its machine).
LONG = (
    "tests/operations/test_workers.py",  # 220: a Prefect server, deploy, workers, a zombie
    "tests/operations/test_two_workers.py",  # 85: a Prefect server, two workers
    "tests/flows/test_lifecycle_flows.py",  # 85: the Prefect harness, CLI runs in subprocesses
    "tests/cli/test_deploy.py",  # 83: a Prefect server, two `consentflow deploy` runs
    "tests/cli/test_run.py",  # 74: Prefect servers, runs on a worker
    "tests/web/test_schemathesis.py",  # 69
    "tests/web/test_actions.py",  # 65: both databases, the Prefect harness
    "tests/web/test_accessibility.py",  # 61: axe-core in Chromium, two widths
    "tests/flows/test_propagate.py",  # 60 (the harness ~20 of it)
    "tests/cli/test_cli.py",  # 55: the CLI in subprocesses
    "tests/faults/test_scenario.py",  # 52: the fault scenario and the Prefect harness
    "tests/web/test_links.py",  # 51
    "tests/cli/test_demo.py",  # 51: one `consentflow demo` (an embedded Prefect, a new database)
    "tests/web/test_api.py",  # 48
    "tests/web/test_auth.py",  # 48
    "tests/web/test_runs.py",  # 40
    "tests/web/test_people.py",  # 35: Chromium, JavaScript off and on
    "tests/ledger/test_lifecycle_properties.py",  # 36: hypothesis, both databases
    "tests/web/test_serve.py",  # 34
    "tests/ledger/test_lifecycle.py",  # 28
    "tests/flows/test_compliance_digest.py",  # 24: the Prefect harness, SMTP, Apprise
    "tests/delivery/test_workers.py",  # 24
    "tests/web/test_dashboard_browser.py",  # 20: axe-core in Chromium
    "tests/web/test_actions_browser.py",  # 20: axe-core in Chromium
    "tests/sweeps/test_concurrency.py",  # 20
)


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def pytest_configure(config: pytest.Config) -> None:
    missing = [path for path in LONG if not (ROOT / path).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/support/ordering.py: LONG names missing files {missing}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    counts: dict[str, int] = {}
    for item in items:
        counts[_module(item)] = counts.get(_module(item), 0) + 1
    rank = {path: i for i, path in enumerate(LONG)}

    def key(item: pytest.Item) -> tuple[int, int]:
        module = _module(item)
        return (rank.get(module, len(LONG)), -counts[module])

    items.sort(key=key)  # stable: each module's tests keep their order
