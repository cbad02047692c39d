"""The response excerpt kept with each delivery attempt: any bytes in, short plain text out.

A receiver may answer anything: invalid UTF-8, NUL and control bytes (PostgreSQL refuses NUL
in text), terminal escapes, bidirectional overrides, a gzip body or a gzip bomb. The excerpt is
what an operator reads in the attempt log, so it is made safe here, once, for every database:

- at most ``EXCERPT_BYTES`` raw bytes are read from the wire (``read``);
- a ``gzip`` or ``deflate`` body is inflated to at most ``EXCERPT_BYTES`` bytes (a bomb is never
  inflated whole); one that does not inflate reads ``(gzip-encoded body, unreadable)``; any other
  content-encoding is not decoded and says so;
- bytes are decoded as UTF-8 with replacement, every control, format, surrogate, private-use or
  unassigned character becomes a space, runs of white space become one space;
- the result is cut to ``EXCERPT_CHARS`` characters; nothing left is ``None``.

``of`` never raises for any input.
"""

from __future__ import annotations

import unicodedata
import zlib

import httpx

EXCERPT_BYTES = 1024
EXCERPT_CHARS = 200

_INFLATABLE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": None}


async def read(response: httpx.Response) -> str | None:
    """The excerpt of ``response``'s body, reading at most ``EXCERPT_BYTES`` from the wire."""
    buf = bytearray()
    async for chunk in response.aiter_raw():
        buf += chunk
        if len(buf) >= EXCERPT_BYTES:
            break
    return of(bytes(buf[:EXCERPT_BYTES]), response.headers.get("content-encoding"))


def of(raw: bytes, content_encoding: str | None = None) -> str | None:
    """Plain text of at most ``EXCERPT_CHARS`` characters from a body's first bytes."""
    encoding = (content_encoding or "").strip().lower()
    if encoding not in ("", "identity"):
        if encoding not in _INFLATABLE:
            named = encoding if encoding.isascii() and encoding.isalnum() else ""
            return f"({named}-encoded body, not decoded)" if named else _NOT_DECODED
        inflated = _inflate(raw, encoding)
        if inflated is None:
            return f"({encoding}-encoded body, unreadable)"
        raw = inflated
    return clean(raw.decode("utf-8", errors="replace"))


_NOT_DECODED = "(encoded body, not decoded)"


def clean(text: str, limit: int = EXCERPT_CHARS) -> str | None:
    """``text`` without control or invisible characters, white space collapsed, capped."""
    kept = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    out = " ".join(kept.split())[:limit].rstrip()
    return out or None


def _inflate(raw: bytes, encoding: str) -> bytes | None:
    """At most ``EXCERPT_BYTES`` inflated bytes of a (possibly truncated) compressed prefix."""
    wbits = _INFLATABLE[encoding]
    # deflate is meant as zlib-wrapped, but some servers send it raw
    for bits in (wbits,) if wbits is not None else (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        try:
            return zlib.decompressobj(bits).decompress(raw, EXCERPT_BYTES)
        except zlib.error:
            continue
    return None
