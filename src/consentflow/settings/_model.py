"""``Settings``: every ``CONSENTFLOW_*`` variable, its default and its description, in one class.

Each field's ``description`` is its documentation (``reference`` renders it). Bad values fail when
the settings are first read (start-up), in one line that never prints a secret
(``hide_input_in_errors``). Unknown ``CONSENTFLOW_*`` variables are ignored, not refused.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consentflow.settings._values import (
    _EMAIL,
    _PHONE,
    ENV_PREFIX,
    MIN_PRODUCTION_KEY,
    Controller,
    parse_places,
    parse_stages,
    split_keys,
)


class Settings(BaseSettings):
    """Configuration read from ``CONSENTFLOW_*`` environment variables.

    Defaults are chosen so that a fresh checkout works with no configuration at all: a SQLite
    file in the working directory and a secret generated on first use into a key file beside it
    (never into the database). ``CONSENTFLOW_ENV=production`` refuses to start without
    ``CONSENTFLOW_SECRET_KEY``.
    """

    # hide_input_in_errors: a start-up traceback must never print a key (the values are secrets).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", hide_input_in_errors=True
    )

    # -- storage and keys
    database_url: str = Field(
        "sqlite:///consentflow.db",
        description="SQLAlchemy URL of the ledger: a SQLite file, or "
        "`postgresql://user@host/db` (served by psycopg 3).",
    )
    secret_key: str | None = Field(
        None,
        description="The instance keys, newest first, separated by commas (so no key may "
        "contain a comma): the newest signs email links and CSRF tokens and encrypts webhook "
        "secrets and data keys at rest; every key listed still verifies and decrypts, so keys "
        "rotate without breaking a live link (`consentflow keys rotate`, see "
        "[keys](keys.md)). A single key is also the reference key (see "
        "`CONSENTFLOW_REFERENCE_KEY`). When unset, the keys are read from the key file "
        "(`CONSENTFLOW_KEY_FILE`), which `consentflow db upgrade` generates; they are never "
        "stored in the database. Required (every key at least 32 characters) when "
        "`CONSENTFLOW_ENV` is `production`.",
    )
    reference_key: SecretStr | None = Field(
        None,
        description="The key of every stored keyed value: pseudonymous subject references, "
        "the suppression list's address hashes, the audit chain's evidence hashes. It never "
        "rotates: set it to your original key (the one `CONSENTFLOW_SECRET_KEY` held before "
        "the first rotation) once `CONSENTFLOW_SECRET_KEY` lists more than one key; it is "
        "required then, so retiring an old key can never change it. Only with "
        "`CONSENTFLOW_SECRET_KEY` (a key file pins its own reference key): see [keys](keys.md).",
    )
    key_file: str | None = Field(
        None,
        description="Where the generated key lives when `CONSENTFLOW_SECRET_KEY` is unset: "
        "a file readable by its owner only (mode 0600), created by `consentflow db upgrade` "
        "(or on first use). Unset: beside a SQLite database (`consentflow.db` -> "
        "`consentflow.db.key`), or for PostgreSQL "
        "`<data dir>/postgresql-<host>-<port>-<database>.key` in `CONSENTFLOW_DATA_DIR`. "
        "Back it up with the database, but not in the same place: "
        "see [security](security.md#the-instance-secret-consentflow_secret_key).",
    )
    data_dir: str | None = Field(
        None,
        description="The directory of the key files of PostgreSQL databases (and of an "
        "in-memory SQLite one). Unset: `$XDG_DATA_HOME/consentflow`, else "
        "`~/.local/share/consentflow`.",
    )
    env: str = Field(
        "development",
        description="`development` or `production`. In production every process refuses to "
        "start unless `CONSENTFLOW_SECRET_KEY` is set (no key file is generated or read), so "
        "that each host, worker and the web app are sure to share one key kept outside the "
        "database.",
    )

    # -- web app
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the web app, used to build the links in emails. When it is "
        "https, the sign-in cookie is Secure and emails offer RFC 8058 one-click unsubscribe "
        "(`List-Unsubscribe-Post`); when it is not, that header is left out and each email run "
        "logs one warning.",
    )
    prefect_ui_url: str | None = Field(
        None,
        description="Base URL of the Prefect UI; the dashboard links runs to "
        "`{url}/runs/flow-run/{id}`.",
    )
    session_max_age: int = Field(
        8 * 3600,
        description="How long a web sign-in lasts, in seconds from signing in: the server "
        "ends the session then (its row in `web_session`), whatever the browser keeps. "
        "Signing out or revoking the token ends it at once.",
    )

    # -- the controller: who people are dealing with
    controller_name: str = Field(
        "consentflow",
        description="The controller's name (the organisation responsible for the data), shown "
        "in the footer of every page and email a person sees and named as the PII controller in "
        "receipts. Set it before the first email goes out.",
    )
    controller_privacy_url: str | None = Field(
        None,
        description="The controller's privacy notice (an http or https URL), linked from every "
        "page and email footer and given in receipts.",
    )
    controller_contact: str | None = Field(
        None,
        description="Where people write about their data (an email address), shown in every "
        "footer and given in receipts.",
    )
    controller_address: str | None = Field(
        None, description="The controller's postal address, given in receipts (optional)."
    )
    controller_dpo: str | None = Field(
        None,
        description="How to reach the data protection officer (an email address or a URL), "
        "shown in every footer and given in receipts (optional).",
    )
    controller_logo_url: str | None = Field(
        None,
        description="The controller's logo (an https URL, or a path on this site), shown with "
        "the controller's name as its alternative text; the pages' Content-Security-Policy "
        "allows images from its origin (optional).",
    )
    controller_phone: str | None = Field(
        None,
        description="The controller's telephone number, given in receipts (optional; the "
        "Kantara form's `phone`, empty when unset).",
    )

    # -- receipts: where the data lives and for how long (ISO/IEC TS 27560, Kantara v1.1)
    receipt_jurisdiction: str = Field(
        "EU",
        description="The jurisdiction whose law governs the consents, given in every receipt: "
        "an ISO 3166 code (`IE`, `DE`, `DE-BY`) or `EU`. The default matches the lawful bases "
        "consentflow records (GDPR Art. 6); set it to your own.",
    )
    receipt_storage_locations: str = Field(
        "",
        description="Where the personal data is stored, given in every receipt: ISO 3166 codes "
        "or `EU`, comma-separated (e.g. `IE,DE`). Empty: the jurisdiction.",
    )
    receipt_retention: str = Field(
        "until the consent ends or the person asks for erasure",
        description="How long the data processed under a consent is kept, given in every "
        "receipt: an ISO 8601 duration (`P2Y`, `P90D`) or, for a period that ends with an "
        "event, a sentence. The default states what consentflow enforces: systems are told "
        "when a consent ends, and a person can ask for erasure. Set it to your policy.",
    )
    receipt_sensitive_categories: str = Field(
        "",
        description="Data categories (as named in the purposes' notices) that are sensitive or "
        "special-category data (GDPR Art. 9), comma-separated; receipts flag them (ISO "
        "`special_pii_category`, Kantara `sensitive` and `spiCat`). Empty: none.",
    )

    # -- webhooks
    webhook_allowed_hosts: str = Field(
        "",
        description="Webhook targets allowed despite the SSRF guard: comma-separated hosts or "
        "networks, e.g. `127.0.0.1` or `10.0.0.0/8,hooks.internal`; these may also use plain "
        "http. For local development and internal receivers only.",
    )
    webhook_timeout: float = Field(
        15.0,
        description="Whole-request webhook timeout in seconds (connect is capped at 5 s within "
        "it).",
    )
    compliance_email: str | None = Field(
        None, description="Where dead-lettered webhook deliveries are reported."
    )
    alert_urls: str = Field(
        "",
        description="Apprise URLs (comma- or space-separated, e.g. `slack://...`, "
        "`json://host/path`) that operator and compliance alerts are also sent to: failed or "
        "crashed runs, dead letters, failing endpoints. Empty: email only.",
    )

    # -- witnessed audit (the audit-anchor flow; see docs/anchors.md)
    anchor_targets: str = Field(
        "",
        description="Where the audit-anchor flow writes the signed audit chain head, "
        "comma-separated: a file path (a line is appended), any fsspec URL (`s3://bucket/"
        "anchors.jsonl` with `s3fs` installed, `file://`, `memory://`; a line is appended), "
        "and/or `email` (sent to `CONSENTFLOW_COMPLIANCE_EMAIL`). Empty: the flow signs the "
        "head, records it and warns that it went nowhere. Give credentials to object stores "
        "through their own environment (e.g. `AWS_ACCESS_KEY_ID`), never in the URL.",
    )

    # -- email
    smtp_host: str = Field(
        "127.0.0.1",
        description="SMTP server for consent emails (reminders, follow-ups, re-consent requests).",
    )
    smtp_port: int = Field(25, description="Port of the SMTP server.")
    smtp_username: str | None = Field(None, description="SMTP login, if the server wants one.")
    smtp_password: SecretStr | None = Field(
        None, description="SMTP password, if the server wants one."
    )
    smtp_starttls: bool | None = Field(
        None,
        description="`true`: require STARTTLS; `false`: never; unset: use it when the "
        "server offers it.",
    )
    smtp_timeout: float = Field(
        30.0,
        description="Seconds per SMTP operation (connect, each command); a timeout leaves the "
        "item due.",
    )
    smtp_pool_size: int = Field(
        2, description="SMTP connections kept open and reused for a whole flow run."
    )
    mail_from: str = Field(
        "consentflow <consentflow@localhost>",
        description="The From address of consent emails; its domain also names the Message-IDs.",
    )
    link_requests_per_address: int = Field(
        3,
        description="A person asking for a new link (`/link/new`): at most this many emails "
        "to one address per hour, counted from the messages recorded in the database (so it "
        "holds across processes); further requests get the same answer and send nothing.",
    )
    link_requests_per_client: int = Field(
        10,
        description="A person asking for a new link: at most this many requests per client "
        "IP address per hour, counted in each web process (not shared between processes).",
    )
    mail_claim_lease_minutes: int = Field(
        60,
        description="Minutes an email claim may stay unconfirmed before a later run treats it "
        "as not sent (the email may then go out a second time: at least once, never lost).",
    )

    # -- lifecycle flows
    reminder_stages: str = Field(
        "30,7,1",
        description="Renewal reminders: days before the validity ends, comma-separated.",
    )
    followup_after_days: int = Field(
        7,
        description="Collection follow-ups: days without an answer before each follow-up (and "
        "before lapsing).",
    )
    followup_max: int = Field(
        2,
        description="Collection follow-ups: how many at most; the request lapses after the "
        "last one.",
    )
    reconsent_deadline_days: int = Field(
        30, description="Re-consent: days a subject has to confirm after a material revision."
    )

    # -- retention (the retention-sweep flow; 0 keeps forever; see docs/retention.md)
    retention_evidence_days: int = Field(
        1095,
        ge=0,
        le=36500,
        description="Days a consent event's evidence (the IP address, user agent or form id "
        "given with it) is kept after it was recorded; then the retention sweep removes it. The "
        "event itself, its chained hash of the evidence and the rest of the history stay, and "
        "the evidence of an event that is still a consent's current grant stays as long as that "
        "consent is given. Default three years: longer than a consent's usual validity plus the "
        "time a claim about it can be brought. `0`: keep forever.",
    )
    retention_attempts_days: int = Field(
        90,
        ge=0,
        le=36500,
        description="Days a webhook delivery's attempt log (`delivery_attempt`: each try's "
        "status, latency and the start of the answer) is kept after the attempt, once the "
        "delivery is settled (delivered or dead-lettered); a pending delivery keeps its whole "
        "log. The delivery row itself (when each system learnt, its last status) stays. `0`: "
        "keep forever.",
    )
    retention_emails_days: int = Field(
        365,
        ge=0,
        le=36500,
        description="Days an email send record (`email_message`: kind, status, Message-ID) is "
        "kept after the email was claimed, once its outcome is known (sent, deferred, bounced, "
        "failed; a claim still waiting for its outcome is never removed). Records an open "
        "request or a consent's current renewal reminders still count on stay until those "
        "close. `0`: keep forever.",
    )
    retention_requests_days: int = Field(
        365,
        ge=0,
        le=36500,
        description="Days a closed consent request (answered or lapsed) is kept after it "
        "closed; open requests are never removed. A request goes only after its email send "
        "records have gone (`CONSENTFLOW_RETENTION_EMAILS_DAYS`), so no record outlives its "
        "request and none is removed earlier than its own setting says. `0`: keep forever.",
    )
    retention_sessions_days: int = Field(
        1,
        ge=0,
        le=36500,
        description="Days at most an ended web sign-in (a `web_session` row, expired or signed "
        "out) stays after it ended. Each new sign-in already removes every ended one; this "
        "bounds how long they stay when nobody signs in. `0`: the sweep leaves them.",
    )

    @field_validator("controller_name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value or len(value) > 200:
            raise ValueError("give the controller's name (1 to 200 characters)")
        return value

    @field_validator("controller_privacy_url", "controller_logo_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        local = value.startswith("/") and not value.startswith("//")
        if not local and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"bad URL {value!r}: use https://host/path")
        return value

    @field_validator("controller_contact")
    @classmethod
    def _contact(cls, value: str | None) -> str | None:
        if not value:
            return None
        if len(value) > 320 or not _EMAIL.match(value):
            raise ValueError(f"bad email address {value!r}: expected name@domain.tld")
        return value

    @field_validator("controller_phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        value = " ".join((value or "").split())
        if value and (len(value) > 40 or not _PHONE.match(value)):
            raise ValueError(f"bad telephone number {value[:40]!r}: e.g. +33 1 23 45 67 89")
        return value or None

    @field_validator("receipt_jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str) -> str:
        if "," in value:
            raise ValueError(f"bad jurisdiction {value[:40]!r}: give one, e.g. EU or IE")
        return parse_places(value, at_least_one=True)[0]

    @field_validator("receipt_storage_locations")
    @classmethod
    def _places(cls, value: str) -> str:
        return ",".join(parse_places(value))

    @field_validator("receipt_retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value or len(value) > 200:
            raise ValueError("give the retention period (an ISO 8601 duration or a sentence)")
        return value

    @property
    def controller(self) -> Controller:
        """The controller's identity, as pages, emails and receipts show it."""
        return Controller(
            name=self.controller_name,
            privacy_url=self.controller_privacy_url,
            contact=self.controller_contact,
            address=self.controller_address or None,
            dpo=self.controller_dpo or None,
            logo_url=self.controller_logo_url,
            phone=self.controller_phone or None,
        )

    @field_validator("env")
    @classmethod
    def _env(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("development", "production"):
            raise ValueError(f"bad environment {value!r}: use development or production")
        return value

    @field_validator("secret_key")
    @classmethod
    def _key_list(cls, value: str | None) -> str | None:
        """A malformed key list fails at start-up, in one line (``split_keys``)."""
        if not value:
            return None
        split_keys(value)
        return value

    @field_validator("reference_key")
    @classmethod
    def _reference(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @property
    def secret_keys(self) -> tuple[str, ...]:
        """``CONSENTFLOW_SECRET_KEY`` as keys, newest first; () when unset."""
        return split_keys(self.secret_key) if self.secret_key else ()

    @model_validator(mode="after")
    def _production_needs_a_key(self) -> Settings:
        """Production mode never falls back to a generated key: one missing variable on one
        worker would otherwise give that worker a key of its own. Several keys need the
        reference key named (``CONSENTFLOW_REFERENCE_KEY``), so retiring one never changes it."""
        listed = self.secret_keys
        if (
            self.env == "production"
            and len(listed) < 2
            and len(self.secret_key or "") < MIN_PRODUCTION_KEY
        ):
            raise ValueError(
                "CONSENTFLOW_ENV=production needs CONSENTFLOW_SECRET_KEY (at least "
                f"{MIN_PRODUCTION_KEY} characters, e.g. from `openssl rand -base64 32`)"
            )
        reference = self.reference_key.get_secret_value() if self.reference_key else None
        if self.env == "production":
            named = [
                (f"key {i} of {len(listed)} in CONSENTFLOW_SECRET_KEY", k)
                for i, k in enumerate(listed, 1)
            ]
            if reference is not None:
                named.append(("CONSENTFLOW_REFERENCE_KEY", reference))
            for what, key in named:
                if len(key) < MIN_PRODUCTION_KEY:
                    raise ValueError(
                        f"CONSENTFLOW_ENV=production needs every key at least "
                        f"{MIN_PRODUCTION_KEY} characters long: {what} has {len(key)} (keys "
                        "are separated by commas, so no key may contain one)"
                    )
        if reference is not None and not listed:
            raise ValueError(
                "CONSENTFLOW_REFERENCE_KEY is set without CONSENTFLOW_SECRET_KEY: a key file "
                "pins its own reference key (its `reference:` line); unset it"
            )
        if len(listed) > 1 and reference is None:
            raise ValueError(
                f"CONSENTFLOW_SECRET_KEY lists {len(listed)} keys but CONSENTFLOW_REFERENCE_KEY "
                "is unset: set it to the key your subject references were made with (the one "
                "key you had before rotating; keys are separated by commas, so no key may "
                "contain one)"
            )
        return self

    @field_validator("reminder_stages")
    @classmethod
    def _stages(cls, value: str) -> str:
        """A bad ``CONSENTFLOW_REMINDER_STAGES`` fails when the settings are read (start-up), not
        inside the first reminder run. The text is kept as given."""
        parse_stages(value)
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached: the environment is read once)."""
    return Settings()
