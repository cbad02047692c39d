"""Every environment variable consentflow reads, with its default, in one place."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration read from ``CONSENTFLOW_*`` environment variables.

    Defaults are chosen so that a fresh checkout works with no configuration at all: a SQLite
    file in the working directory and a secret generated on first use and kept in that database.
    """

    model_config = SettingsConfigDict(env_prefix="CONSENTFLOW_", extra="ignore")

    #: SQLAlchemy URL. ``postgresql://`` URLs are served by psycopg 3.
    database_url: str = "sqlite:///consentflow.db"
    #: Key for pseudonymous subject references and signed links. When unset, a random key is
    #: generated once and stored in the database, so references stay stable across runs.
    secret_key: str | None = None
    #: Base URL of the web app, used to build links in emails.
    public_url: str = "http://127.0.0.1:8000"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached: the environment is read once)."""
    return Settings()
