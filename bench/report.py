"""Benchmark the report PDF and its page images (``imaging.report_pdf``), target <= 3 s for the PDF.

The report is what a reader exports after a staging CT: four sections, ten findings and
twelve 512 x 512 key images (CT-like: a body outline with a smooth gradient, bright
structures and noise, PNG-encoded as the render workers hand them over) at grid (2, 2),
so four A4 pages. Each round lays out the PDF with ``report_pdf`` and rasterises that PDF
with ``report_pages`` as PNG and as JPEG at the default 110 dpi; poppler's ``pdftoppm``
rasterises the same PDF at the same resolution as the peer.

A key image is re-rendered from its view state whenever a reader changes it (window,
slice, fusion opacity): the render engine draws a still, lossless 512 x 512 frame of the
phantom PET/CT (``imaging.phantom``, 300 CT slices) — CT alone and PET fused over CT —
from a changed state each round, as a worker does for the report page (target <= 200 ms).

    .venv/bin/python bench/report.py [--rounds 10]

Prints JSON: median and p95 of each step, the PDF's size and page count, ratios to the peer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
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
TARGET_KEY_IMAGE_S = 0.2
PHANTOM_SLICES = 300
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


def _pdftoppm(pdf: bytes, rounds: int) -> list[float]:
    """The peer: poppler rasterising the same PDF to PNG at the same resolution."""
    tool = shutil.which("pdftoppm")
    if tool is None:
        raise SystemExit("pdftoppm is missing: make sysdeps installs poppler-utils")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "report.pdf"
        source.write_bytes(pdf)
        return _timed(lambda: subprocess.run([tool, "-png", "-r", "110", str(source), f"{folder}/page"],
                                             check=True), rounds)


def _key_image_renders(rounds: int) -> dict[str, Any]:
    """A still PNG of a changed view state each round: CT windowed, PET fused over CT."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
    import django

    django.setup()
    from imaging.phantom import phantom_write
    from rendering.encoding import Encoding
    from rendering.engine.core import RenderEngine
    from rendering.testing import volumes_from_phantom
    from rendering.viewstate import viewstate_from_dict

    with tempfile.TemporaryDirectory() as folder:
        phantom_write(out_dir=Path(folder), slices=PHANTOM_SLICES, patients=1, seed=5)
        ct, pet, _ = volumes_from_phantom(Path(folder))
    volumes = {ct.series_id: ct, pet.series_id: pet}
    engine = RenderEngine()
    centre = [float(v) for v in ct.center()]

    def state(round_: int, fused: bool) -> Any:
        layers = [{"series_id": ct.series_id, "window_center": 40 + round_, "window_width": 400}]
        if fused:
            layers.append({"series_id": pet.series_id, "window_center": 2.5, "window_width": 5,
                           "window_unit": "suv", "palette": "hot_iron",
                           "opacity": 0.3 + 0.05 * (round_ % 10)})
        return viewstate_from_dict({"view": "axial", "layers": layers, "quality": "still", "width": 512,
                                    "height": 512, "focus_mm": [centre[0], centre[1], centre[2] + round_]})

    def changed_renders(fused: bool) -> list[float]:
        engine.render(state(0, fused), volumes, encoding=Encoding.PNG)
        counter = iter(range(1, rounds + 1))
        return _timed(lambda: engine.render(state(next(counter), fused), volumes, encoding=Encoding.PNG),
                      rounds)

    return {name: _summary(changed_renders(fused)) for name, fused in (("ct", False), ("pet_ct_fused", True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    document = _document()
    pdf = report_pdf(document)
    pdf_s = _timed(lambda: report_pdf(document), args.rounds)
    png_s = _timed(lambda: report_pages(pdf, image_format="png"), args.rounds)
    jpeg_s = _timed(lambda: report_pages(pdf, image_format="jpeg"), args.rounds)
    peer_s = _pdftoppm(pdf, args.rounds)
    key_images = _key_image_renders(args.rounds)
    report = {
        "bench": "report", "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1m": round(os.getloadavg()[0], 2)},
        "pdf_pages": _page_count(pdf),
        "pdf_bytes": len(pdf), "key_images": PICTURES, "key_image_px": PICTURE_SIZE,
        "report_pdf": _summary(pdf_s),
        "report_pages_png_110dpi": _summary(png_s),
        "report_pages_jpeg_110dpi": _summary(jpeg_s),
        "peer_pdftoppm_png_110dpi": _summary(peer_s),
        "ratio_pages_png_to_pdftoppm": round(statistics.median(png_s) / statistics.median(peer_s), 2),
        "key_image_still_png_512": key_images,
        "target_pdf_s": TARGET_PDF_S, "met": statistics.median(pdf_s) <= TARGET_PDF_S,
        "target_key_image_s": TARGET_KEY_IMAGE_S,
        "key_image_met": all(item["p50_ms"] <= TARGET_KEY_IMAGE_S * 1000 for item in key_images.values()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
