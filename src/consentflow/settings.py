"""Every environment variable consentflow reads, with its default, in one place."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration read from ``CONSENTFLOW_*`` environment variables.

    Defaults are chosen so that a fresh checkout works with no configuration at all: a SQLite
    file in the working directory and a secret generated on first use and kept in that database.
    """

    model_config = SettingsConfigDict(env_prefix="CONSENTFLOW_", extra="ignore")

    #: SQLAlchemy URL. ``postgresql://`` URLs are served by psycopg 3.
    database_url: str = "sqlite:///consentflow.db"
    #: Key for pseudonymous subject references, signed links and the encryption of webhook
    #: secrets at rest. When unset, a random key is generated once and stored in the database, so
    #: references stay stable across runs (but a database dump then holds the key too).
    secret_key: str | None = None
    #: Base URL of the web app, used to build links in emails.
    public_url: str = "http://127.0.0.1:8000"
    #: Base URL of the Prefect UI; the dashboard links runs to ``{url}/runs/flow-run/{id}``.
    prefect_ui_url: str | None = None
    #: How long a web sign-in (session cookie) lasts, in seconds.
    session_max_age: int = 8 * 3600

    #: Webhook targets allowed despite the SSRF guard: comma-separated hosts or networks, e.g.
    #: ``127.0.0.1`` or ``10.0.0.0/8,hooks.internal``; these may also use plain http.
    webhook_allowed_hosts: str = ""
    #: Whole-request webhook timeout in seconds (connect is capped at 5 s within it).
    webhook_timeout: float = 15.0
    #: Where dead-lettered webhook deliveries are reported.
    compliance_email: str | None = None

    #: SMTP server for consent emails (reminders, follow-ups, re-consent requests).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    #: true: require STARTTLS; false: never; unset: use it when the server offers it.
    smtp_starttls: bool | None = None
    #: Seconds per SMTP operation (connect, each command); a timeout leaves the item due.
    smtp_timeout: float = 30.0
    #: Connections kept open and reused for a whole flow run.
    smtp_pool_size: int = 2
    #: The From address of consent emails; its domain also names the Message-IDs.
    mail_from: str = "consentflow <consentflow@localhost>"
    #: Renewal reminders: days before the validity ends, comma-separated.
    reminder_stages: str = "30,7,1"
    #: Collection follow-ups: days without an answer before each follow-up (and before lapsing).
    followup_after_days: int = 7
    #: Collection follow-ups: how many at most; the request lapses after the last one.
    followup_max: int = 2
    #: Re-consent: days a subject has to confirm after a material revision.
    reconsent_deadline_days: int = 30
    #: Minutes an email claim may stay unconfirmed before a later run treats it as not sent.
    mail_claim_lease_minutes: int = 60


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached: the environment is read once)."""
    return Settings()
