"""What a report is made of: a ``Table`` (title, columns, rows, note) that the page and the CSV
export render alike, a ``Link`` cell, and the ``Chart`` of the trend.

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


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

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


@dataclass
class Chart:
    days: list[str]
    series: list[Series]
    width: int = 720
    height: int = 180
    pad: int = 30
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
