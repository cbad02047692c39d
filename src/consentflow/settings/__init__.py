"""Every environment variable consentflow reads, with its default, in one place.

``Settings`` holds every ``CONSENTFLOW_*`` variable; each field's ``description`` is its
documentation. ``OTHER_VARIABLES`` lists the variables of other tools (Prefect's) that consentflow
reads or relies on, which are read where they are used. ``reference_markdown()`` renders both as
``docs/configuration.md``; ``python -m consentflow.settings`` prints it, and a test keeps the
committed page equal to it, so the reference cannot drift from the code.

Unknown ``CONSENTFLOW_*`` variables are ignored (``extra="ignore"``), not refused.
"""

from __future__ import annotations

from consentflow.settings._model import Settings, get_settings
from consentflow.settings._values import (
    ENV_PREFIX,
    MIN_PRODUCTION_KEY,
    Controller,
    parse_places,
    parse_stages,
    split_keys,
)
from consentflow.settings.reference import (
    GROUPS,
    OTHER_VARIABLES,
    TEST_VARIABLES,
    OtherVariable,
    env_name,
    reference_markdown,
)

__all__ = [
    "ENV_PREFIX",
    "GROUPS",
    "MIN_PRODUCTION_KEY",
    "OTHER_VARIABLES",
    "TEST_VARIABLES",
    "Controller",
    "OtherVariable",
    "Settings",
    "env_name",
    "get_settings",
    "parse_places",
    "parse_stages",
    "reference_markdown",
    "split_keys",
]
