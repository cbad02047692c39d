"""What a report is made of: a ``Table`` (title, columns, rows, note, and where its numbers
link) that the page and the CSV export render alike, a ``Link`` cell, a ``Flag`` cell, and the
``Chart`` of a trend.

CSV cells that a spreadsheet would run as a formula are neutralised (numbers stay numbers).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_PLAIN = re.compile(r"-|-?\d+(\.\d+)?")


@dataclass(frozen=True)
class Link:
    """A cell that links somewhere; the CSV gets the address."""

    text: str
    href: str

    def __str__(self) -> str:
        return self.href


@dataclass(frozen=True)
class Flag:
    """A judged cell (the delivery health verdict): its text, and a level (ok, warning,
    critical) the page shows with a symbol and a colour; the CSV gets the text."""

    text: str
    level: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""
    #: Where a number leads: (row index, column index) -> the list of the people (or deliveries)
    #: it counts. The page links the number; the CSV keeps the number.
    links: dict[tuple[int, int], str] = field(default_factory=dict)

    def link(self, row: int, column: str, href: str) -> None:
        self.links[(row, self.columns.index(column))] = href

    def numeric(self, index: int) -> bool:
        """Whether a column holds numbers (right-aligned on the page)."""
        values = [row[index] for row in self.rows if row[index] is not None]
        return bool(values) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    text = str(value)
    # Spreadsheets run cells that start like a formula; neutralise them (numbers stay numbers).
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PLAIN.fullmatch(text):
        return "'" + text
    return text


@dataclass
class Series:
    name: str
    color: str
    values: list[int]
    points: str = ""
    #: The SVG dash pattern of its line ("" for solid): series differ by more than colour.
    dash: str = ""

    @property
    def total(self) -> int:
        return sum(self.values)


@dataclass
class Chart:
    """Lines over days in an SVG of ``width`` x ``height`` user units (it scales to its box)."""

    days: list[str]
    series: list[Series]
    title: str = ""
    width: int = 720
    height: int = 200
    pad: int = 6
    top: int = 1

    def layout(self) -> Chart:
        self.top = max([1, *(max(s.values, default=0) for s in self.series)])
        n = max(len(self.days) - 1, 1)
        inner_w, inner_h = self.width - 2 * self.pad, self.height - 2 * self.pad
        for s in self.series:
            s.points = " ".join(
                f"{self.pad + i * inner_w / n:.1f},"
                f"{self.pad + inner_h - v * inner_h / self.top:.1f}"
                for i, v in enumerate(s.values)
            )
        return self
