"""The fast path of ``mail.compose`` (an all-ASCII message written directly, issue 11) writes the
very bytes the ``EmailMessage`` path writes, apart from the random MIME boundary: for every
template in every language, and for the edge cases of headers and quoted-printable bodies."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta

import pytest

from consentflow import i18n, mail
from consentflow.mail import message as m
from consentflow.mail.rendering import Rendered

NOW = datetime(2026, 11, 30, 20, 19, 15, tzinfo=UTC)
BOUNDARY = re.compile(rb"={15}\d{19}==")

CONTEXT = {
    "purpose_title": "Monthly news",
    "valid_until": NOW + timedelta(days=3),
    "days_left": 3,
    "renew_url": "https://consent.example.com/l/eyJhIjoicmVuZXcifQ.c2ln",
    "revoke_url": "https://consent.example.com/l/eyJhIjoicmV2b2tlIn0.c2ln",
    "preferences_url": "https://consent.example.com/l/eyJhIjoicHJlZnMifQ.c2ln",
    "withdraw_all_url": "https://consent.example.com/l/eyJhIjoiYWxsIn0.c2ln",
}


def plain(parsed: email.message.Message) -> str:
    part = parsed.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return str(part.get_content()).replace("\r\n", "\n")


def both(rendered: Rendered, **kw: object) -> tuple[bytes, bytes]:
    args = dict(
        name="consentflow",
        from_address="consent@example.org",
        to="ann@example.com",
        message_id="<1.2.3@example.org>",
        unsubscribe="<https://consent.example.com/l/x.y>",
        now=NOW,
    )
    args.update(kw)
    slow = m._with_email_message(rendered, **args)  # type: ignore[arg-type]
    fast = m._as_written(rendered, **args)  # type: ignore[arg-type]
    return BOUNDARY.sub(b"B", slow), BOUNDARY.sub(b"B", fast)


@pytest.mark.parametrize("locale", i18n.SUPPORTED)
@pytest.mark.parametrize("title", ["Monthly news", "Actualités « mensuelles » \u2013 über año 🎉"])
def test_every_language_gives_the_same_bytes(locale: str, title: str) -> None:
    rendered = mail.render(mail.Kind.RENEWAL_REMINDER, locale, {**CONTEXT, "purpose_title": title})
    slow, fast = both(rendered)
    assert fast == slow
    parsed = email.message_from_bytes(fast, policy=email.policy.default)
    assert plain(parsed) == rendered.text
    assert parsed["Subject"] == rendered.subject


EDGES = {
    "long ascii subject": ("Subject " + "word " * 40, "text\n", "<p>html</p>\n"),
    "non-ascii subject": ("Ihre Einwilligung für „News“ endet bald, año über " * 3, "t\n", "h\n"),
    "trailing spaces and tabs": ("s", "line with space \nline with tab\t\n\n\n", "x \n"),
    "long words and =": ("s", "https://e.example/" + "a=b" * 60 + "\n" + "x" * 200, "=" * 90),
    "exactly 76 and 77": ("s", "a" * 76 + "\n" + "b" * 77 + "\n" + "c" * 75 + "é\n", "d"),
    "dots and From": ("s", ".\n..leading dots\nFrom me\n", ".\n"),
    "line ends": ("s", "cr\rcrlf\r\nlf\nend", "no newline at the end"),
    "empty": ("s", "", ""),
}


@pytest.mark.parametrize("case", list(EDGES))
def test_edge_cases_give_the_same_bytes(case: str) -> None:
    subject, text, html = EDGES[case]
    rendered = Rendered(subject=subject, text=text, html=html, locale="de")
    slow, fast = both(rendered)
    assert fast == slow


@pytest.mark.parametrize(
    "header",
    [
        dict(name="Zoë Consents, Inc.", from_address="consent@example.org"),
        dict(to="a-very-long-local-part." + "x" * 60 + "@sub.domain.example.com"),
        dict(to="first.o'hara+news=x/y{z}~@mail.example.co.uk"),
        dict(to="x" * 60 + "@example.com"),  # "To: " + 72 characters: one over the line
        dict(to="x" * 59 + "@example.com"),  # exactly the line
        dict(message_id="<179606995581.20467.1407225529623079238@localhost>"),
        dict(message_id="<a.b@" + "d" * 60 + ".example>"),
        dict(message_id="<" + "9" * 70 + "@a-long-domain-for-message-ids.example.org>"),
        dict(unsubscribe="<http://consent.example.com/l/x.y>"),
        dict(unsubscribe="<https://consent.example.com/l/" + "t" * 300 + ">"),
        dict(unsubscribe=None),
    ],
)
def test_header_variants_give_the_same_bytes(header: dict[str, object]) -> None:
    rendered = Rendered(subject="Hello", text="t\n", html="h\n", locale="en")
    slow, fast = both(rendered, **header)
    assert fast == slow


def test_compose_takes_the_fast_path_for_ascii_and_the_full_one_for_utf8() -> None:
    rendered = mail.render(mail.Kind.RENEWAL_REMINDER, "fr", CONTEXT)
    ascii_ = mail.compose(rendered, to="ann@example.com", message_id="<1@example.org>")
    utf8 = mail.compose(rendered, to="zoë@example.com", message_id="<2@example.org>")
    assert not ascii_.smtputf8 and utf8.smtputf8
    for out in (ascii_, utf8):
        parsed = email.message_from_bytes(out.data, policy=email.policy.default)
        assert plain(parsed) == rendered.text
        assert parsed["Message-ID"] == out.message_id
    assert BOUNDARY.search(ascii_.data)  # a boundary of the standard library's shape
