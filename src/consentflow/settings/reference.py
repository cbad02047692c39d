"""The configuration reference, ``docs/configuration.md``, generated from ``Settings``.

``GROUPS`` orders the variables into sections (every field exactly once, or generating fails);
``OTHER_VARIABLES`` lists the variables of other tools (Prefect's) that consentflow reads or
relies on, read where they are used. ``python -m consentflow.settings`` prints the page, and a
test keeps the committed page equal to it, so the reference cannot drift from the code.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from consentflow.settings._model import Settings
from consentflow.settings._values import ENV_PREFIX

#: The sections of the reference, in order, and the settings each holds (every field exactly once).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Storage and keys",
        ("database_url", "secret_key", "reference_key", "key_file", "data_dir", "env"),
    ),
    ("Web app", ("public_url", "prefect_ui_url", "session_max_age")),
    (
        "The controller",
        (
            "controller_name",
            "controller_privacy_url",
            "controller_contact",
            "controller_address",
            "controller_dpo",
            "controller_logo_url",
            "controller_phone",
        ),
    ),
    (
        "Receipts",
        (
            "receipt_jurisdiction",
            "receipt_storage_locations",
            "receipt_retention",
            "receipt_sensitive_categories",
        ),
    ),
    ("Webhooks", ("webhook_allowed_hosts", "webhook_timeout", "compliance_email", "alert_urls")),
    (
        "Email",
        (
            "smtp_host",
            "smtp_port",
            "smtp_username",
            "smtp_password",
            "smtp_starttls",
            "smtp_timeout",
            "smtp_pool_size",
            "mail_from",
            "link_requests_per_address",
            "link_requests_per_client",
            "mail_claim_lease_minutes",
        ),
    ),
    (
        "Lifecycle flows (defaults of the flow parameters)",
        ("reminder_stages", "followup_after_days", "followup_max", "reconsent_deadline_days"),
    ),
    ("Witnessed audit", ("anchor_targets",)),
    (
        "Retention",
        (
            "retention_evidence_days",
            "retention_attempts_days",
            "retention_emails_days",
            "retention_requests_days",
            "retention_sessions_days",
        ),
    ),
)


@dataclass(frozen=True)
class OtherVariable:
    """A variable of another tool that consentflow reads or relies on (read where it is used)."""

    name: str
    meaning: str


#: Prefect's variables that change what consentflow does (all others: Prefect's documentation).
OTHER_VARIABLES: tuple[OtherVariable, ...] = (
    OtherVariable(
        "PREFECT_API_URL",
        "The Prefect server. When it is set, `consentflow run FLOW` creates a run of the "
        "flow's deployment for a worker (`--local` runs it in this process), `consentflow "
        "deploy` installs the deployments and automations there, and the web app's `POST "
        "/api/v1/runs/{flow}` creates deployment runs (without it: 409). Unset: `consentflow "
        "run` runs flows on an embedded Prefect server of its own, in a temporary "
        "`PREFECT_HOME` removed at exit, started at once from a prepared database (Prefect's "
        "migrations done once per Prefect version, kept in `<data dir>/prefect/`; the first "
        "run prepares it). A consent change never talks to Prefect: `propagate` is woken "
        "through the database.",
    ),
    OtherVariable(
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
        "Seconds between a flow run's heartbeats. Set it to 30 on workers: the zombie "
        "automation `consentflow deploy` installs marks a run Crashed after 90 s without one, "
        "which releases what the run held and restarts `propagate`.",
    ),
    OtherVariable(
        "PREFECT_HOME, PREFECT_PROFILES_PATH, PREFECT_PROFILE",
        "An explicit choice of Prefect home or profile: `consentflow run` and `consentflow demo` "
        "then use it instead of a temporary `PREFECT_HOME` (a default profile in `~/.prefect` "
        "is never consulted otherwise), and leave starting a server to Prefect (no prepared "
        "database).",
    ),
    OtherVariable(
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START, PREFECT_SERVER_REGISTER_BLOCKS_ON_START, "
        "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED, PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED",
        "The embedded server of `consentflow run` (no `PREFECT_API_URL`) sets these to `false` "
        "unless they are set: no automations or stored events in a server that lives for one "
        "run, and, when it starts from the prepared database, no migrations or block "
        "registration (done in it already). `PREFECT_SERVER_EPHEMERAL_ENABLED=false` turns the "
        "embedded server off (a run without `PREFECT_API_URL` then fails, as Prefect says).",
    ),
    OtherVariable(
        "PREFECT_LOGGING_LEVEL",
        "When set, `consentflow run` lets Prefect log as configured; unset, Prefect's log "
        "lines stay off the terminal and consentflow's warnings print as one line each.",
    ),
    OtherVariable(
        "PREFECT_LOGGING_EXTRA_LOGGERS",
        "`consentflow` on a worker puts consentflow's warnings (e.g. the one-click note) in "
        "each run's logs in the Prefect UI.",
    ),
)

#: Read by the test suite only (``tests/support/database.py``), never by consentflow itself.
TEST_VARIABLES: tuple[OtherVariable, ...] = (
    OtherVariable(
        "CONSENTFLOW_TEST_POSTGRES_URL",
        "A PostgreSQL server on which the tests also run (each test session creates and drops "
        "a database of its own there), e.g. `postgresql://postgres@127.0.0.1:5432/test`.",
    ),
)

_TYPE_NAMES: dict[Any, str] = {
    str: "text",
    int: "integer",
    float: "number",
    bool: "`true` / `false`",
    SecretStr: "text (secret)",
}


def env_name(field: str) -> str:
    """The environment variable of a setting: ``smtp_host`` -> ``CONSENTFLOW_SMTP_HOST``."""
    return ENV_PREFIX + field.upper()


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return _TYPE_NAMES[annotation]


def _default(info: FieldInfo) -> str:
    value = info.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """The configuration reference (``docs/configuration.md``), generated from ``Settings``."""
    fields = Settings.model_fields
    grouped = [name for _, names in GROUPS for name in names]
    if sorted(grouped) != sorted(fields):
        raise RuntimeError("settings.GROUPS must name every Settings field exactly once")
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m consentflow.settings > docs/configuration.md`:",
        "     edit the descriptions in src/consentflow/settings/_model.py, not this file. -->",
        "",
        "consentflow reads its configuration from environment variables, each prefixed "
        f"`{ENV_PREFIX}`, once per process. Every variable has a default that works on a "
        "fresh machine (a SQLite file in the working directory, a key generated into a file "
        "beside it). A flow run on a Prefect worker inherits the worker's environment, so set them "
        "there.",
    ]
    for title, names in GROUPS:
        lines += ["", f"## {title}", "", "| variable | type | default | meaning |"]
        lines.append("| --- | --- | --- | --- |")
        for name in names:
            info = fields[name]
            lines.append(
                f"| `{env_name(name)}` | {_type_name(info.annotation)} | {_default(info)} "
                f"| {_cell(info.description or '')} |"
            )
    lines += ["", "## Prefect's variables", "", "| variable | what consentflow does with it |"]
    lines.append("| --- | --- |")
    for var in OTHER_VARIABLES:
        shown = ", ".join(f"`{n.strip()}`" for n in var.name.split(","))
        lines.append(f"| {shown} | {_cell(var.meaning)} |")
    lines += ["", "## The test suite", "", "| variable | meaning |", "| --- | --- |"]
    for var in TEST_VARIABLES:
        lines.append(f"| `{var.name}` | {_cell(var.meaning)} |")
    return "\n".join(lines) + "\n"
