"""Lay out a :class:`~imaging.report_document.ReportDocument` as a PDF, and rasterise its pages.

The PDF is written with reportlab: it is maintained, pure Python, embeds TrueType fonts
(so names outside Latin-1 print as given) and writes non-JPEG images Flate-encoded, pixel
for pixel, and it needs neither a browser nor the network. The PNG/JPG pages are PDFium's
rendering (the pypdfium2 wheels) of that same PDF, so there is one layout to maintain and
every format shows the same page.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pypdfium2
import reportlab
from django.utils.translation import gettext
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    Image,
    KeepInFrame,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from imaging.report_document import KeyPicture, ReportDocument

PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN = 15 * mm
BODY_WIDTH = PAGE_WIDTH - 2 * MARGIN
BAND_GAP = 4 * mm
LOGO_MAX_HEIGHT = 18 * mm
LOGO_MAX_WIDTH = 50 * mm
PAGE_LABEL_WIDTH = 30 * mm
HEADER_FIELD_COLUMNS = 3
FINDING_COLUMN_SHARES = (0.34, 0.22, 0.14, 0.30)
CELL_PADDING = 2 * mm
JPEG_QUALITY = 90
PAGE_IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG"}

FONT = "ReportSans"
FONT_BOLD = "ReportSans-Bold"
_DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
_VERA = Path(reportlab.__file__).parent / "fonts"

_REPORTLAB_LOCK = threading.Lock()
"""reportlab is not thread-safe (its font registry and module caches are shared), and reports are
laid out on worker threads: one build at a time per process."""
_PDFIUM_LOCK = threading.Lock()
"""PDFium is not thread-safe (pypdfium2's documentation): one rendering at a time per process."""


@functools.cache
def _fonts_registered() -> None:
    """Register one TrueType family once per process; DejaVu covers more scripts than Vera."""
    regular, bold = _DEJAVU / "DejaVuSans.ttf", _DEJAVU / "DejaVuSans-Bold.ttf"
    if not (regular.is_file() and bold.is_file()):
        regular, bold = _VERA / "Vera.ttf", _VERA / "VeraBd.ttf"
    pdfmetrics.registerFont(TTFont(FONT, str(regular)))
    pdfmetrics.registerFont(TTFont(FONT_BOLD, str(bold)))
    pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD, italic=FONT, boldItalic=FONT_BOLD)


def _style(name: str, *, size: float, bold: bool = False, **extra: Any) -> ParagraphStyle:
    return ParagraphStyle(name, fontName=FONT_BOLD if bold else FONT, fontSize=size,
                          leading=size * 1.25, **extra)


class _Styles:
    def __init__(self) -> None:
        self.title = _style("title", size=16, bold=True, spaceAfter=4 * mm)
        self.heading = _style("heading", size=11.5, bold=True, spaceBefore=3 * mm, spaceAfter=1.5 * mm)
        self.body = _style("body", size=10)
        self.cell = _style("cell", size=9)
        self.cell_head = _style("cell_head", size=9, bold=True)
        self.hospital = _style("hospital", size=12, bold=True)
        self.department = _style("department", size=10)
        self.field = _style("field", size=8)
        self.footer = _style("footer", size=7.5, textColor=colors.dimgrey)
        self.caption = _style("caption", size=8.5, alignment=TA_CENTER)


def _markup(text: str) -> str:
    """User text as Paragraph markup that prints literally, its line breaks kept."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "<br/>".join(escape(line) for line in lines)


def _fitted_image(png: bytes, width: float, height: float) -> Image:
    """The image drawn inside width x height, aspect kept; the PDF holds its pixels unchanged."""
    return Image(io.BytesIO(png), width=width, height=height, kind="proportional")


def _logo(png: bytes) -> Image | None:
    return _fitted_image(png, LOGO_MAX_WIDTH, LOGO_MAX_HEIGHT) if png else None


def _header_fields_table(document: ReportDocument, styles: _Styles) -> Table | None:
    cells = [Paragraph(f"<b>{_markup(name)}:</b> {_markup(value)}", styles.field)
             for name, value in document.header_fields]
    if not cells:
        return None
    rows = [cells[start:start + HEADER_FIELD_COLUMNS] for start in range(0, len(cells), HEADER_FIELD_COLUMNS)]
    rows[-1] += [""] * (HEADER_FIELD_COLUMNS - len(rows[-1]))
    table = Table(rows, colWidths=[BODY_WIDTH / HEADER_FIELD_COLUMNS] * HEADER_FIELD_COLUMNS)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("TOPPADDING", (0, 0), (-1, -1), 0.5),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5)]))
    return table


def _header_band(document: ReportDocument, styles: _Styles) -> Table:
    letterhead = document.letterhead
    logo = _logo(letterhead.logo_png)
    names = [Paragraph(_markup(letterhead.hospital), styles.hospital),
             Paragraph(_markup(letterhead.department), styles.department)]
    logo_width = logo.drawWidth + CELL_PADDING if logo else 0
    top = Table([[logo or "", names]], colWidths=[logo_width, BODY_WIDTH - logo_width])
    top.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                             ("LEFTPADDING", (0, 0), (-1, -1), 0),
                             ("RIGHTPADDING", (0, 0), (-1, -1), 0)]))
    fields = _header_fields_table(document, styles)
    band = Table([[top], [fields or ""]], colWidths=[BODY_WIDTH])
    band.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 0),
                              ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                              ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.grey)]))
    return band


def _export_stamp(document: ReportDocument) -> str:
    if not document.exported_by:
        return ""
    if document.exported_at is None:
        raise ValueError("exported_by is set without exported_at")
    at = document.exported_at
    at_utc = at.astimezone(UTC) if at.tzinfo else at
    return gettext("Exported by %(user)s on %(when)s UTC") % {"user": document.exported_by,
                                                             "when": f"{at_utc:%Y-%m-%d %H:%M}"}


def _footer_band(document: ReportDocument, styles: _Styles) -> Table:
    """The footer but its page label, which is drawn once the page count is known."""
    lines = [document.letterhead.footer, document.status_line, _export_stamp(document)]
    paragraphs = [Paragraph(_markup(line), styles.footer) for line in lines if line.strip()]
    band = Table([[paragraphs or ""]], colWidths=[BODY_WIDTH - PAGE_LABEL_WIDTH], hAlign="LEFT")
    band.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 0),
                              ("TOPPADDING", (0, 0), (-1, -1), 1.5 * mm),
                              ("BOTTOMPADDING", (0, 0), (-1, -1), 0)]))
    return band


def _height(flowable: Flowable) -> float:
    return float(flowable.wrap(BODY_WIDTH, PAGE_HEIGHT)[1])


def _section_flowables(document: ReportDocument, styles: _Styles) -> list[Flowable]:
    flowables: list[Flowable] = []
    for heading, text in document.sections:
        if text.strip():
            flowables += [Paragraph(_markup(heading), styles.heading), Paragraph(_markup(text), styles.body)]
    return flowables


def _findings_table(document: ReportDocument, styles: _Styles) -> Table:
    head = [Paragraph(_markup(name), styles.cell_head)
            for name in (gettext("Finding"), gettext("Series"), gettext("Size"), gettext("Values"))]
    rows = [[Paragraph(_markup(cell), styles.cell)
             for cell in (line.label, line.series, line.size, line.values)]
            for line in document.findings]
    table = Table([head, *rows], colWidths=[BODY_WIDTH * share for share in FINDING_COLUMN_SHARES],
                  repeatRows=1)
    table.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                               ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def _picture_cell(picture: KeyPicture, width: float, height: float, styles: _Styles) -> KeepInFrame:
    caption = Paragraph(_markup(picture.caption), styles.caption)
    caption_height = caption.wrap(width, height)[1]
    image = _fitted_image(picture.png, width, max(height - caption_height - CELL_PADDING, CELL_PADDING))
    return KeepInFrame(width, height, [image, Spacer(0, CELL_PADDING / 2), caption], mode="shrink")


def _picture_pages(pictures: Sequence[KeyPicture], grid: tuple[int, int], body_height: float,
                   styles: _Styles) -> list[Flowable]:
    if not pictures:
        return []
    columns, rows = grid
    if columns < 1 or rows < 1:
        raise ValueError(f"grid needs at least one column and one row, got {grid}")
    cell_width, cell_height = BODY_WIDTH / columns, body_height / rows
    inner_width, inner_height = cell_width - 2 * CELL_PADDING, cell_height - 2 * CELL_PADDING
    per_page = columns * rows
    flowables: list[Flowable] = []
    for start in range(0, len(pictures), per_page):
        cells = [_picture_cell(picture, inner_width, inner_height, styles)
                 for picture in pictures[start:start + per_page]]
        table_rows = [cells[row:row + columns] for row in range(0, len(cells), columns)]
        table_rows[-1] += [""] * (columns - len(table_rows[-1]))
        table = Table(table_rows, colWidths=[cell_width] * columns,
                      rowHeights=[cell_height] * len(table_rows))
        table.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"),
                                   ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                                   *[(f"{side}PADDING", (0, 0), (-1, -1), CELL_PADDING)
                                     for side in ("LEFT", "RIGHT", "TOP", "BOTTOM")]]))
        flowables += [PageBreak(), table]
    return flowables


def _numbered_canvas(font: str, size: float) -> type[Canvas]:
    """A canvas that keeps its pages until the end, then labels each "Page n of m"."""

    class NumberedCanvas(Canvas):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._page_states: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._page_states.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            pages = len(self._page_states)
            for number, state in enumerate(self._page_states, start=1):
                self.__dict__.update(state)
                self.setFont(font, size)
                label = gettext("Page %(number)s of %(count)s") % {"number": number, "count": pages}
                self.drawRightString(PAGE_WIDTH - MARGIN, MARGIN, label)
                super().showPage()
            super().save()

    return NumberedCanvas


def _band_painter(document: ReportDocument, styles: _Styles) -> Callable[[Canvas, Any], None]:
    def paint(canvas: Canvas, _doc: Any) -> None:
        canvas.saveState()
        header = _header_band(document, styles)
        header_height = header.wrapOn(canvas, BODY_WIDTH, PAGE_HEIGHT)[1]
        header.drawOn(canvas, MARGIN, PAGE_HEIGHT - MARGIN - header_height)
        footer = _footer_band(document, styles)
        footer_height = footer.wrapOn(canvas, BODY_WIDTH, PAGE_HEIGHT)[1]
        footer.drawOn(canvas, MARGIN, MARGIN)
        canvas.setStrokeColor(colors.grey)
        canvas.setLineWidth(0.5)
        canvas.line(MARGIN, MARGIN + footer_height, PAGE_WIDTH - MARGIN, MARGIN + footer_height)
        canvas.restoreState()

    return paint


def report_pdf(document: ReportDocument) -> bytes:
    """Lay out the report as an A4 PDF, its own words (table heads, export stamp, page labels) in the
    active language.

    Every page carries the letterhead and header fields above and the footer, status line,
    export stamp and "Page n of m" below. The body holds the title, the non-blank sections,
    the findings table, then the key images from a new page, ``grid`` (columns, rows) per
    page, each embedded losslessly with its own pixels. The PDF's metadata names nobody:
    what it says about the patient or the reader is only what the page shows.

    Parameters
    ----------
    document : ReportDocument
        The report as resolved for this reader.

    Returns
    -------
    bytes
        The PDF; the same document always gives the same bytes.

    Raises
    ------
    ValueError
        If the grid is empty, or ``exported_by`` is set without ``exported_at``.
    """
    with _REPORTLAB_LOCK, _binary_streams():
        _fonts_registered()
        return _laid_out(document)


@contextlib.contextmanager
def _binary_streams() -> Iterator[None]:
    """Write streams Flate-encoded only, not also ASCII85.

    ASCII85 keeps a PDF 7-bit clean, which no transport here needs, at a quarter more bytes and,
    without reportlab's optional C accelerator, about half of the build time.
    """
    before = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = before


def _story(document: ReportDocument, styles: _Styles, body_height: float) -> list[Flowable]:
    story: list[Flowable] = [Paragraph(_markup(document.title), styles.title),
                             *_section_flowables(document, styles)]
    if document.findings:
        story += [Spacer(0, 3 * mm), _findings_table(document, styles)]
    return story + _picture_pages(document.pictures, document.grid, body_height, styles)


def _laid_out(document: ReportDocument) -> bytes:
    styles = _Styles()
    top = MARGIN + _height(_header_band(document, styles)) + BAND_GAP
    bottom = MARGIN + _height(_footer_band(document, styles)) + BAND_GAP
    body_height = PAGE_HEIGHT - top - bottom
    story = _story(document, styles, body_height)
    out = io.BytesIO()
    template = BaseDocTemplate(out, pagesize=A4, title="", author="", subject="", creator="Fusion Gateway",
                               invariant=1)
    body = Frame(MARGIN, bottom, BODY_WIDTH, body_height, leftPadding=0, rightPadding=0, topPadding=0,
                 bottomPadding=0)
    template.addPageTemplates([PageTemplate(frames=[body], onPage=_band_painter(document, styles))])
    template.build(story, canvasmaker=_numbered_canvas(FONT, styles.footer.fontSize))
    return out.getvalue()


def _page_image(page: Any, *, scale: float, pil_format: str) -> bytes:
    bitmap = page.render(scale=scale)
    try:
        image = bitmap.to_pil()
        out = io.BytesIO()
        if pil_format == "JPEG":
            image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
        else:
            image.save(out, format="PNG")
        return out.getvalue()
    finally:
        bitmap.close()


def report_pages(pdf: bytes, *, image_format: str = "png", dpi: int = 110) -> list[bytes]:
    """Rasterise every page of a report PDF with PDFium.

    Parameters
    ----------
    pdf : bytes
        A PDF, as :func:`report_pdf` writes it.
    image_format : {"png", "jpeg"}
        How each page is encoded (JPEG at quality 90).
    dpi : int
        Pixels per inch of the page.

    Returns
    -------
    list of bytes
        One encoded image per page, in page order.
    """
    pil_format = PAGE_IMAGE_FORMATS.get(image_format)
    if pil_format is None:
        raise ValueError(f"image_format must be one of {sorted(PAGE_IMAGE_FORMATS)}, got {image_format!r}")
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    with _PDFIUM_LOCK:
        document = pypdfium2.PdfDocument(pdf)
        try:
            return [_rendered_page(document, index, scale=dpi / 72, pil_format=pil_format)
                    for index in range(len(document))]
        finally:
            document.close()


def _rendered_page(document: Any, index: int, *, scale: float, pil_format: str) -> bytes:
    page = document[index]
    try:
        return _page_image(page, scale=scale, pil_format=pil_format)
    finally:
        page.close()

