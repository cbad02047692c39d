"""The one address rule (``consentflow.addresses``) and the doors that use it (``subjects.add``:
the CLI's ``subject add --email`` and ``POST /api/v1/subjects``)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from consentflow import addresses, db, subjects
from consentflow.errors import InvalidInput
from consentflow.models import AuditEntry, Subject
from tests.support.seeding import count

REFUSED = {
    "a,b@example.test": "invalid characters before the @-sign: ','",
    "a,b@example.com": "invalid characters before the @-sign: ','",
    "Ann <ann@example.com>": "display name",
    "ann@example.com, bob@example.com": "invalid characters",
    "ann@example.com;bob@example.com": "invalid characters",
    "ann@example.com\r\nBcc: eve@example.com": "one line",
    "ann": "must have an @-sign",
    "ann@@example.com": "invalid characters",
    "ann@localhost": "",
    "ann@example.test": "special-use or reserved",
    '"ann smith"@example.com': "Quoting",
    "ann@[192.0.2.1]": "bracketed IP address",
    "a" * 250 + "@example.com": "too long",
    "x" * 321: "longer than 320",
}


@pytest.mark.parametrize("value", list(REFUSED))
def test_one_bare_address_or_a_clear_refusal(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        addresses.normalise(value)
    message = str(caught.value)
    assert message.startswith("bad email address: ") and REFUSED[value] in message
    assert "\n" not in message and value not in message  # one line, never the address


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann@EXAMPLE.com ", "Ann@example.com"),  # the domain is lowercased, the local part kept
        ("josé@example.com", "josé@example.com"),
        ("jose\u0301@example.com", "jos\u00e9@example.com"),  # NFC
        ("Ann@Bücher.Example.com", "Ann@bücher.example.com"),
        ("ann@xn--bcher-kva.example.com", "ann@bücher.example.com"),  # one form for one domain
        ("用户@例子.广告", "用户@例子.广告"),
    ],
)
def test_internationalised_addresses_are_accepted_and_normalised(value: str, stored: str) -> None:
    assert addresses.normalise(value) == stored
    assert addresses.check(value) == stored
    assert addresses.normalise(stored) == stored  # idempotent


def test_empty_is_no_address() -> None:
    assert addresses.check(None) is None and addresses.check("") is None
    assert addresses.check("  ") is None


def test_the_wire_form_is_ascii_where_it_can_be() -> None:
    assert addresses.for_sending("Ann@bücher.example.com") == addresses.WireAddress(
        "Ann@xn--bcher-kva.example.com", smtputf8=False
    )
    assert addresses.for_sending("josé@bücher.example.com") == addresses.WireAddress(
        "josé@bücher.example.com", smtputf8=True
    )
    assert "josé" not in repr(addresses.for_sending("josé@example.com"))
    with pytest.raises(InvalidInput):
        addresses.for_sending("a,b@example.com")  # stored before the rule: never sent


def test_subjects_add_refuses_and_writes_nothing(engine: Engine) -> None:
    with db.session_scope(engine) as s, pytest.raises(InvalidInput, match="bad email address"):
        subjects.add(s, "ann", email="a,b@example.test")
    assert count(engine, Subject) == 0 and count(engine, AuditEntry) == 0
    with db.session_scope(engine) as s:
        subjects.add(s, "ann", email=" Ann@Bücher.EXAMPLE.com")
        subjects.add(s, "bob", email="")
    with db.session_scope(engine) as s:
        assert subjects.require(s, "ann").email == "Ann@bücher.example.com"
        assert subjects.require(s, "bob").email is None
