"""Prefect flows: thin, typed procedures over consentflow's batch functions.

Every flow lives in ``flows/NAME.py`` (dashes in the public name become underscores) with a
``Params`` model and a flow function of the module's name that returns a ``RunSummary``. The CLI
(``consentflow run``) and the API (``POST /api/v1/runs/NAME``) find flows through ``load``, so a
new flow module is all it takes to make it runnable from both.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from consentflow.errors import NotFound


def names() -> list[str]:
    """The public names of the flows, e.g. ``expiry-sweep``."""
    return sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name != "common"
    )


def load(name: str) -> tuple[Any, type[Any]]:
    """The flow function and its parameter model for a public flow name."""
    if name not in names():
        raise NotFound(f"unknown flow {name!r}: choose one of {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return getattr(module, name.replace("-", "_")), module.Params
