"""Email addresses: the one rule for every way in (CLI, API, import), and their form on the wire.

The rule (``normalise``, and ``check`` for an optional value): a value is exactly one bare
address, ``local-part@domain``, as the ``email-validator`` package judges it without a DNS lookup
(``check_deliverability=False``). Refused: a display name or angle brackets (``Ann <a@x.com>``),
a list or anything with a comma (``a,b@example.test``), a quoted local part, an IP-literal
domain, a domain without a dot, a special-use domain (RFC 6761: ``.test``, ``.invalid``,
``.localhost``...), and anything longer than the SMTP limits. Surrounding whitespace is dropped.

Internationalised addresses (RFC 6531: a non-ASCII local part or domain) are accepted. They are
stored as email-validator normalises them: the domain lowercased and in Unicode NFC form (IDNA
2008 checked), the local part in NFC with its case kept. ``address_hash`` (suppression) still
lowercases the whole address.

On the wire (``for_sending``): an address whose local part is ASCII is sent in ASCII, its domain
as IDNA A-labels (``ann@xn--bcher-kva.example``), so any server takes it; one with a non-ASCII
local part needs a server that offers SMTPUTF8 (``consentflow.mail`` records ``failed`` for that
message alone when the server does not).

Failure mode: ``InvalidInput("bad email address: <why>")``, one line, naming the problem but
never repeating the address (errors and logs never carry addresses). The CLI exits 2, the API
answers 422, the import names the line; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email

from consentflow.errors import InvalidInput

#: RFC 5321's limit on a forward path, checked before anything else looks at the value.
MAX_LENGTH = 320


@dataclass(frozen=True)
class WireAddress:
    """An address as the SMTP envelope and the ``To`` header carry it."""

    address: str = field(repr=False)
    #: It has a non-ASCII local part: only a server offering SMTPUTF8 can take it.
    smtputf8: bool


def _validated(value: str) -> tuple[str, str | None]:
    """(normalised form, ASCII form or None) of one address; ``InvalidInput`` if it is not one."""
    if len(value) > MAX_LENGTH:
        raise InvalidInput(f"bad email address: longer than {MAX_LENGTH} characters")
    if "\r" in value or "\n" in value:
        raise InvalidInput("bad email address: it must be on one line")
    try:
        found = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        why = " ".join(str(exc).split()) or "not an email address"
        raise InvalidInput(f"bad email address: {why} (give one address, name@domain)") from None
    return found.normalized, found.ascii_email


def normalise(value: str) -> str:
    """The stored form of one address (see the module docstring); ``InvalidInput`` otherwise."""
    return _validated(value.strip())[0]


def check(value: str | None) -> str | None:
    """``normalise`` for an optional address: None or an empty (or blank) value is None."""
    if value is None or not value.strip():
        return None
    return normalise(value)


def for_sending(stored: str) -> WireAddress:
    """A stored address as the wire needs it (ASCII where it can be). A value stored before
    this rule existed that breaks it raises ``InvalidInput``: the message is not sent."""
    normalised, ascii_form = _validated(stored.strip())
    if ascii_form is not None:
        return WireAddress(ascii_form, smtputf8=False)
    return WireAddress(normalised, smtputf8=True)
