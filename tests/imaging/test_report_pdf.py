"""The report's PDF and page images, read back with poppler's tools as a recipient would.

The key pictures are noise and gradients, so a resampled or JPEG-encoded copy could not pass
for the original; the names carry letters outside Latin-1 so a font without them shows.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pypdfium2
import pytest
from PIL import Image

from imaging.report_document import FindingLine, KeyPicture, Letterhead, ReportDocument
from imaging.report_pdf import report_pages, report_pdf

PATIENT = "Őz Ödön Űrhajós"
EXPORTER = "Łukasz Wiśniewski"
AUTHOR = "dr. Żaneta Kőváry"
LOGO_SIZE = (40, 16)
ESCAPED_TEXT = "Contrast <b>& not bold</b>\nsecond line with < and >"
BLANK_HEADING = "Addendum"


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _rgb_noise(width: int, height: int, seed: int) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _grey_gradient(size: int, seed: int) -> bytes:
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (200 / (2 * size))
    noise = np.random.default_rng(seed).integers(0, 50, (size, size))
    return _png((ramp + noise).astype(np.uint8))


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} (poppler-utils) is needed to read the PDF back and is not installed")
    return path


def _run(*args: str) -> str:
    return subprocess.run([_tool(args[0]), *args[1:]], check=True, capture_output=True, text=True).stdout


def _text(pdf: Path, *pages: str) -> str:
    return _run("pdftotext", "-layout", *pages, str(pdf), "-")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _page_count(pdf: bytes) -> int:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return len(document)
    finally:
        document.close()


def _images_per_page(pdf: Path, size: tuple[int, int]) -> dict[int, int]:
    """How many images of that (width, height) each page draws, from ``pdfimages -list``."""
    counts: dict[int, int] = {}
    for line in _run("pdfimages", "-list", str(pdf)).splitlines()[2:]:
        page, _num, _kind, width, height, *_ = line.split()
        if (int(width), int(height)) == size:
            counts[int(page)] = counts.get(int(page), 0) + 1
    return counts


def _write(tmp_path: Path, pdf: bytes) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return path


@pytest.fixture
def document() -> ReportDocument:
    return ReportDocument(
        title="CT thorax with contrast",
        header_fields=(("Patient", PATIENT), ("Study date", "2026-12-01"), ("Author", AUTHOR),
                       ("Status", "signed"), ("Version", "3")),
        sections=(("Clinical question", "Staging of a known lesion."),
                  ("Findings", ESCAPED_TEXT),
                  (BLANK_HEADING, "  \n "),
                  ("Impression", "Partial response.")),
        pictures=(KeyPicture(_rgb_noise(256, 200, seed=1), "Axial 42 lesion"),
                  KeyPicture(_grey_gradient(300, seed=2), "Coronal MIP")),
        grid=(2, 2),
        findings=(FindingLine("Lesion A", "CT 3 axial", "18 x 12 mm", "mean 45 HU"),
                  FindingLine("Node B", "PET 5", "9 mm", "SUVmax 7.2")),
        letterhead=Letterhead(hospital="Szent Kórház", department="Radiológia",
                              logo_png=_rgb_noise(*LOGO_SIZE, seed=3), footer="Confidential medical record"),
        status_line="Signed by dr.kovary on 2026-12-07 10:15 UTC",
        exported_by=EXPORTER,
        exported_at=datetime(2026, 12, 8, 9, 30, tzinfo=UTC),
    )


def test_text_shows_content_escaped_and_non_latin(document: ReportDocument, tmp_path: Path) -> None:
    text = _flat(_text(_write(tmp_path, report_pdf(document))))
    expected = [document.title, document.status_line, f"Exported by {EXPORTER} on 2026-12-08 09:30 UTC",
                *(f"{name}: {value}" for name, value in document.header_fields),
                *(line for _heading, section in document.sections for line in section.splitlines()),
                *(cell for line in document.findings for cell in (line.label, line.values)),
                document.letterhead.hospital, document.letterhead.footer, "<b>&"]
    missing = [item for item in expected if item.strip() and _flat(item) not in text]
    assert not missing
    assert PATIENT in text and EXPORTER in text
    assert BLANK_HEADING not in text


def test_key_images_are_embedded_pixel_for_pixel(document: ReportDocument, tmp_path: Path) -> None:
    pdf = _write(tmp_path, report_pdf(document))
    _run("pdfimages", "-png", str(pdf), str(tmp_path / "extracted"))
    extracted = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(tmp_path.glob("extracted-*"))]
    originals = [_rgb(picture.png) for picture in document.pictures]
    logo = _rgb(document.letterhead.logo_png)
    for original in originals:
        assert any(image.shape == original.shape and np.array_equal(image, original) for image in extracted)
    strangers = [image for image in extracted
                 if not any(np.array_equal(image, known) for known in [*originals, logo])]
    assert not strangers
    assert len(extracted) == len(originals) + _page_count(pdf.read_bytes())


def test_pictures_beyond_the_grid_continue_on_the_next_page(document: ReportDocument, tmp_path: Path) -> None:
    size = (64, 48)
    pictures = tuple(KeyPicture(_rgb_noise(*size, seed=10 + index), f"Picture {index}") for index in range(5))
    pdf_bytes = report_pdf(replace(document, pictures=pictures, grid=(2, 2)))
    pdf = _write(tmp_path, pdf_bytes)
    pages = _page_count(pdf_bytes)
    assert _images_per_page(pdf, size) == {pages - 1: 4, pages: 1}
    assert pages >= 3
    assert f"Page 1 of {pages}" in _text(pdf, "-f", "1", "-l", "1")
    assert "Picture 4" in _text(pdf, "-f", str(pages), "-l", str(pages))


def test_findings_header_repeats_on_every_page_of_the_table(document: ReportDocument, tmp_path: Path) -> None:
    findings = tuple(FindingLine(f"Lesion {index}", "CT 3", "10 mm", f"mean {index} HU")
                     for index in range(80))
    pdf_bytes = report_pdf(replace(document, findings=findings, pictures=()))
    pdf = _write(tmp_path, pdf_bytes)
    pages = _page_count(pdf_bytes)
    assert pages >= 2
    for page in range(1, pages + 1):
        assert "Finding Series Size Values" in _flat(_text(pdf, "-f", str(page), "-l", str(page)))
    assert "Lesion 79" in _text(pdf)


def test_copy_of_record_has_no_export_stamp(document: ReportDocument, tmp_path: Path) -> None:
    pdf = _write(tmp_path, report_pdf(replace(document, exported_by="", exported_at=None)))
    text = _text(pdf)
    assert "Exported by" not in text
    assert document.status_line in text


def test_export_time_is_printed_in_utc(document: ReportDocument, tmp_path: Path) -> None:
    budapest_winter = timezone(timedelta(hours=1))
    exported = replace(document, exported_at=datetime(2026, 12, 8, 10, 30, tzinfo=budapest_winter))
    assert "on 2026-12-08 09:30 UTC" in _text(_write(tmp_path, report_pdf(exported)))


def test_exporter_without_time_is_refused(document: ReportDocument) -> None:
    with pytest.raises(ValueError, match="exported_at"):
        report_pdf(replace(document, exported_at=None))


def test_metadata_names_nobody_and_output_is_repeatable(document: ReportDocument) -> None:
    pdf = report_pdf(document)
    reader = pypdfium2.PdfDocument(pdf)
    try:
        metadata = " ".join(reader.get_metadata_dict().values())
    finally:
        reader.close()
    assert not [name for name in (PATIENT, EXPORTER, AUTHOR, document.title) if name in metadata]
    assert report_pdf(document) == pdf


def test_reports_built_on_threads_match_those_built_one_by_one(document: ReportDocument) -> None:
    documents = [replace(document, title=f"Report {index}",
                         header_fields=(("Patient", f"{PATIENT} {index}"),)) for index in range(8)]
    one_by_one = [report_pdf(each) for each in documents]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=len(documents)) as pool:
            assert list(pool.map(report_pdf, documents)) == one_by_one


@pytest.mark.parametrize(("image_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_pages_are_rasterised_one_image_per_page(document: ReportDocument, image_format: str,
                                                 pil_format: str) -> None:
    pdf = report_pdf(document)
    dpi = 50
    pages = report_pages(pdf, image_format=image_format, dpi=dpi)
    assert len(pages) == _page_count(pdf)
    for page in pages:
        image = Image.open(io.BytesIO(page))
        image.load()
        assert image.format == pil_format
        assert abs(image.width - 8.27 * dpi) <= 2
        assert abs(image.height - 11.69 * dpi) <= 2


def test_pages_refuse_an_unknown_format(document: ReportDocument) -> None:
    with pytest.raises(ValueError, match="image_format"):
        report_pages(report_pdf(document), image_format="gif")
