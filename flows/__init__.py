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

from consentflow.errors import InvalidInput, NotFound


def names() -> list[str]:
    """The public names of the flows, e.g. ``expiry-sweep``."""
    return sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(__path__)
        if not m.name.startswith("_") and m.name != "common"
    )


def prepare(name: str, values: dict[str, Any]) -> tuple[Any, Any]:
    """The flow function and its validated parameters, or ``InvalidInput`` naming the problem.

    Checks what the model alone cannot: that the purposes and systems named exist, so a typo is
    refused before a run starts (and before it leaves a failed run in the audit trail).
    """
    from pydantic import ValidationError

    from consentflow import db, purposes, systems

    flow_fn, model = load(name)
    try:
        params = model(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{where}: {message}" if where else message) from None
    keys, names = getattr(params, "purposes", None), getattr(params, "systems", None)
    if keys or names:
        with db.session_scope() as session:
            if keys:
                purposes.info(session, keys)
            for system in names or []:
                systems.get(session, system)
    return flow_fn, params


def load(name: str) -> tuple[Any, type[Any]]:
    """The flow function and its parameter model for a public flow name."""
    if name not in names():
        raise NotFound(f"unknown flow {name!r}: choose one of {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    return getattr(module, name.replace("-", "_")), module.Params
