"""Benchmark the report PDF and its page images (``imaging.report_pdf``), target <= 3 s for the PDF.

The report is what a reader exports after a staging CT: four sections, ten findings and
twelve 512 x 512 key images (CT-like: a body outline with a smooth gradient, bright
structures and noise, PNG-encoded as the render workers hand them over) at grid (2, 2),
so four A4 pages. Each round lays out the PDF with ``report_pdf`` and rasterises that PDF
with ``report_pages`` as PNG and as JPEG at the default 110 dpi. The functions are pure:
no Django, no store.

    .venv/bin/python bench/report.py [--rounds 10]

Prints JSON: median and p95 of each step, the PDF's size and page count.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imaging.report_document import FindingLine, KeyPicture, Letterhead, ReportDocument  # noqa: E402
from imaging.report_pdf import report_pages, report_pdf  # noqa: E402

TARGET_PDF_S = 3.0
PICTURES = 12
PICTURE_SIZE = 512
FINDINGS = 10


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000, 1),
            "samples": len(ordered)}


def _timed(call: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _ct_slice(seed: int) -> bytes:
    """A windowed CT-like slice as an RGB PNG: air, a body ellipse, bone and vessels, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:PICTURE_SIZE, 0:PICTURE_SIZE] / PICTURE_SIZE - 0.5
    body = (x / 0.42) ** 2 + (y / 0.32) ** 2 <= 1
    grey = np.where(body, 90 + 40 * y + 20 * np.cos(6 * x), 0.0)
    for cx, cy, radius in rng.uniform((-0.25, -0.2, 0.02), (0.25, 0.2, 0.06), (6, 3)):
        grey[(x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2] = 220
    grey += np.where(body, rng.normal(0, 8, grey.shape), rng.normal(0, 2, grey.shape))
    pixels = np.clip(grey, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.repeat(pixels[..., None], 3, axis=2)).save(out, format="PNG")
    return out.getvalue()


def _document() -> ReportDocument:
    text = ("Multiple pulmonary nodules in both lower lobes, the largest in segment 9 on the right.\n"
            "No pleural effusion. Mediastinal nodes as tabulated below. ") * 3
    return ReportDocument(
        title="CT thorax and abdomen with contrast — staging",
        header_fields=(("Patient", "Őz Ödön Űrhajós"), ("Study date", "2026-12-01"),
                       ("Author", "dr. Łukasz Kowalski"), ("Status", "signed"), ("Version", "2")),
        sections=(("Clinical question", "Staging before chemotherapy."), ("Technique", text),
                  ("Findings", text * 2), ("Impression", "Partial response by RECIST 1.1.")),
        pictures=tuple(KeyPicture(_ct_slice(seed), f"Axial {40 + seed} key image {seed + 1}")
                       for seed in range(PICTURES)),
        grid=(2, 2),
        findings=tuple(FindingLine(f"Lesion {index + 1}", "CT 3 axial 1 mm", f"{8 + index} x {6 + index} mm",
                                   f"mean {30 + index} HU, SD 12 HU") for index in range(FINDINGS)),
        letterhead=Letterhead(hospital="Szent Kórház", department="Radiology",
                              logo_png=_logo(), footer="Confidential medical record"),
        status_line="Signed by dr.kowalski on 2026-12-07 10:15 UTC",
        exported_by="Wiśniewska Anna",
        exported_at=datetime(2026, 12, 8, 9, 30, tzinfo=UTC),
    )


def _logo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 96), (20, 70, 140)).save(out, format="PNG")
    return out.getvalue()


def _page_count(pdf: bytes) -> int:
    document = pypdfium2.PdfDocument(pdf)
    try:
        return len(document)
    finally:
        document.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    document = _document()
    pdf = report_pdf(document)
    pdf_s = _timed(lambda: report_pdf(document), args.rounds)
    png_s = _timed(lambda: report_pages(pdf, image_format="png"), args.rounds)
    jpeg_s = _timed(lambda: report_pages(pdf, image_format="jpeg"), args.rounds)
    report = {
        "bench": "report", "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1m": round(os.getloadavg()[0], 2)},
        "pdf_pages": _page_count(pdf),
        "pdf_bytes": len(pdf), "key_images": PICTURES, "key_image_px": PICTURE_SIZE,
        "report_pdf": _summary(pdf_s),
        "report_pages_png_110dpi": _summary(png_s),
        "report_pages_jpeg_110dpi": _summary(jpeg_s),
        "target_pdf_s": TARGET_PDF_S, "met": statistics.median(pdf_s) <= TARGET_PDF_S,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
