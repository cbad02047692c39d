"""The order in which the suite's modules are handed out: the long ones first.

CI runs ``pytest -n 3 --dist loadfile`` on two cores: each module runs whole in one worker
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

#: Modules that take a minute or more, longest first. The seconds: the whole module, set-up
#: included, alone in one process on a busy two-core machine (CI's are shorter).
LONG = (
    "tests/operations/test_workers.py",  # 230-380: a Prefect server, deploy, workers, a zombie
    "tests/operations/test_two_workers.py",  # 240 (set-up 140), 860-910 at load ~20: 2 workers
    "tests/flows/test_lifecycle_flows.py",  # 175: the Prefect harness, CLI runs in subprocesses
    "tests/web/test_schemathesis.py",  # 195
    "tests/faults/test_scenario.py",  # the fault scenario (~85 on CI) and the Prefect harness
    "tests/flows/test_propagate.py",  # 145 (the harness ~50 of it)
    "tests/cli/test_deploy.py",  # 115: a Prefect server, two `consentflow deploy` runs
    "tests/ledger/test_importer.py",  # 75
    "tests/web/test_serve.py",  # 70
    "tests/delivery/test_workers.py",  # 70
    "tests/sweeps/test_concurrency.py",  # 70
    "tests/web/test_runs.py",  # 65
    "tests/web/test_dashboard_browser.py",  # 225: axe-core in Chromium, 320/390/1440 px
    "tests/web/test_lists_browser.py",  # 60-250: axe-core in Chromium, 130 people, 3 runs
    "tests/web/test_accessibility.py",  # 60: axe-core in Chromium, two widths
    "tests/web/test_subject_pages_browser.py",  # 60: axe-core in Chromium, 320 and 1440 px
    "tests/web/test_subject_search.py",  # 60: both databases, an erasure per test
    "tests/ledger/test_lifecycle_properties.py",  # 60: hypothesis, both databases
    "tests/cli/test_demo.py",  # 55: one `consentflow demo` (an embedded Prefect, a new database)
    "tests/web/test_newlink_browser.py",  # 55
    "tests/web/test_actions.py",  # 60-120 (busy machine): both databases, the Prefect harness
    "tests/web/test_actions_browser.py",  # 60-190 (busy machine): axe-core in Chromium
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
