"""Prefect flows: thin, typed procedures over consentflow's batch functions.

Every flow lives in ``flows/NAME.py`` (dashes in the public name become underscores) with a
flow function of the module's name, whose top-level typed parameters are its form in the Prefect
UI (``consentflow.runs.load_flow`` derives a strict model from them), that returns a
``RunSummary``, and is
declared in ``pyproject.toml`` under the ``consentflow.flows`` entry points. The CLI
(``consentflow run``) and the API (``POST /api/v1/runs/NAME``) find flows through those entry
points (``consentflow.runs.load_flow``); the package itself never imports this one.
"""
