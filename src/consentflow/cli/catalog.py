"""``consentflow purpose`` and ``consentflow system``: what personal data may be used for (purposes
and their notice versions) and who receives it (downstream systems and their webhooks)."""

from __future__ import annotations

from typing import Annotated

import typer

from consentflow import (
    lifecycle,
    purposes,
    systems,
    views,
)
from consentflow.cli._common import (
    JsonOpt,
    emit,
    purpose_app,
    session,
    system_app,
)
from consentflow.errors import InvalidInput, NotFound
from consentflow.models import PurposeVersion

# ----------------------------------------------------------------------------------- purpose


def _version(key: str, v: PurposeVersion) -> views.PurposeVersionOut:
    return views.PurposeVersionOut.of(key, v)


def _csv_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@purpose_app.command("add")
def purpose_add(
    key: str,
    title: Annotated[str | None, typer.Option(help="Short title shown to people.")] = None,
    validity_days: Annotated[
        int | None, typer.Option(help="How long a consent lasts before renewal (required).")
    ] = None,
    lawful_basis: Annotated[
        str | None, typer.Option(help="GDPR lawful basis (default: consent).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="The notice text.")] = None,
    data_categories: Annotated[str | None, typer.Option(help="Comma-separated.")] = None,
    locale: Annotated[
        str | None,
        typer.Option(
            help="Add this language's --title/--description (fr) to an existing purpose, as "
            "`purpose revise --locale` does."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a purpose with its first notice version; with --locale, add a language's text."""
    if locale is not None:
        if validity_days is not None or lawful_basis is not None or data_categories is not None:
            raise InvalidInput(
                "with --locale, give only --title and --description: the other fields belong to "
                "the notice itself (`consentflow purpose revise`)"
            )
        _add_text(key, locale, title, description, as_json)
        return
    if title is None or validity_days is None:
        raise InvalidInput("a new purpose needs --title and --validity-days")
    with session() as s:
        v = purposes.add(
            s,
            key,
            title=title,
            validity_days=validity_days,
            description=description or "",
            lawful_basis=lawful_basis or "consent",
            data_categories=_csv_list(data_categories),
            actor=lifecycle.agent_actor(),
        )
    emit(_version(key, v), as_json, lambda: typer.echo(f"purpose {key} v1 added"))


def _add_text(
    key: str, locale: str, title: str | None, description: str | None, as_json: bool
) -> None:
    """``purpose add KEY --locale fr ...``: the language's text, published as an editorial version
    (versions are immutable), exactly as ``purpose revise KEY --locale fr ...``."""
    pairs = (("title", title), ("description", description))
    texts = {locale: {k: v for k, v in pairs if v is not None}}
    with session() as s:
        try:
            v = purposes.revise(s, key, material=False, texts=texts, actor=lifecycle.agent_actor())
        except NotFound:
            raise NotFound(
                f"unknown purpose {key!r}: add it in its default language first "
                "(`consentflow purpose add KEY --title ... --validity-days N`)"
            ) from None
    emit(
        _version(key, v),
        as_json,
        lambda: typer.echo(f"purpose {key} v{v.version} (text in {locale} added)"),
    )


@purpose_app.command("revise")
def purpose_revise(
    key: str,
    material: Annotated[
        bool, typer.Option("--material", help="Consents on older versions must be re-confirmed.")
    ] = False,
    title: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    lawful_basis: Annotated[str | None, typer.Option()] = None,
    data_categories: Annotated[str | None, typer.Option(help="Comma-separated.")] = None,
    validity_days: Annotated[int | None, typer.Option()] = None,
    locale: Annotated[
        str | None, typer.Option(help="--title/--description are this language's text (fr).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a new notice version (earlier versions are kept exactly as they were)."""
    pairs = (("title", title), ("description", description))
    texts = {locale: {k: v for k, v in pairs if v is not None}} if locale else None
    if texts:
        title = description = None
    with session() as s:
        v = purposes.revise(
            s,
            key,
            material=material,
            title=title,
            description=description,
            lawful_basis=lawful_basis,
            data_categories=_csv_list(data_categories),
            validity_days=validity_days,
            texts=texts,
            actor=lifecycle.agent_actor(),
        )
    kind = "material" if material else "editorial"
    emit(
        _version(key, v),
        as_json,
        lambda: typer.echo(f"purpose {key} v{v.version} ({kind})"),
    )


@purpose_app.command("list")
def purpose_list(
    versions: Annotated[
        bool, typer.Option("--versions", help="Every version, not just the current.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Purposes with their current notice version."""
    with session(readonly=True) as s:
        rows = purposes.versions(s) if versions else purposes.list_current(s)
    data = [_version(k, v) for k, v in rows]

    def text() -> None:
        for d in data:
            flag = " material" if d.material else ""
            typer.echo(
                f"{d.key:<24} v{d.version:<3} {d.validity_days:>5}d "
                f"{d.lawful_basis:<20}{flag}  {d.title}"
            )

    emit(data, as_json, text)


# ------------------------------------------------------------------------------------ system


@system_app.command("add")
def system_add(
    name: str,
    purposes_: Annotated[str, typer.Option("--purposes", help="Comma-separated purpose keys.")],
    webhook_url: Annotated[str | None, typer.Option(help="Where withdrawals are sent.")] = None,
    display_name: Annotated[
        str | None, typer.Option(help="Shown to people (default: NAME).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a downstream system; its webhook secret is printed once, now."""
    with session() as s:
        system, secret = systems.add(
            s,
            name,
            _csv_list(purposes_) or [],
            webhook_url=webhook_url,
            display_name=display_name,
            actor=lifecycle.agent_actor(),
        )
    data = views.SystemCreated(
        name=system.name, webhook_url=system.webhook_url, webhook_secret=secret
    )

    def text() -> None:
        typer.echo(f"system {name} added")
        if secret:
            typer.echo(f"webhook secret (shown once, keep it safe): {secret}")

    emit(data, as_json, text)


@system_app.command("list")
def system_list(as_json: JsonOpt = False) -> None:
    """Registered systems with their purposes (secrets are never shown again)."""
    with session(readonly=True) as s:
        found = systems.list_all(s)

    def text() -> None:
        for v in found:
            url = v.webhook_url or "(no webhook)"
            typer.echo(f"{v.name:<24} {v.status:<9} {','.join(v.purposes):<30} {url}")

    emit([views.SystemOut.model_validate(v) for v in found], as_json, text)
