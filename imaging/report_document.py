"""A report as it is laid out: what the PDF (and its PNG/JPG pages) show, already resolved.

:mod:`imaging.reports` builds a :class:`ReportDocument` from a stored report — key images
rendered by the workers, the findings table formatted, the header's fields filled as the
reader may see them — and :mod:`imaging.report_pdf` lays it out. Nothing here reads the
database or the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Letterhead:
    hospital: str = ""
    department: str = ""
    logo_png: bytes = b""
    footer: str = ""


@dataclass(frozen=True)
class KeyPicture:
    """A key image as rendered from its stored view state (lossless PNG, pixels as the frame)."""

    png: bytes
    caption: str


@dataclass(frozen=True)
class FindingLine:
    """One row of the findings table, every cell already formatted."""

    label: str
    series: str
    size: str
    values: str


@dataclass(frozen=True)
class ReportDocument:
    title: str
    header_fields: tuple[tuple[str, str], ...]
    """(name, value) pairs: patient (pseudonym or name), study date, author, status, version."""
    sections: tuple[tuple[str, str], ...]
    """(heading, plain text) in order; empty texts are left out of the page."""
    pictures: tuple[KeyPicture, ...]
    grid: tuple[int, int]
    """Key images per page: (columns, rows)."""
    findings: tuple[FindingLine, ...]
    letterhead: Letterhead
    status_line: str
    """Printed on every page: e.g. "Signed by dr.smith on 2026-12-07 10:15 UTC" or "DRAFT"."""
    exported_by: str = ""
    exported_at: datetime | None = None
    """Who downloaded this copy and when: printed in every page's footer; empty for the copy of record."""
