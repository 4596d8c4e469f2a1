"""A doctor measures a planted PET lesion in Debian's chromium, keeps it and exports it (#14).

The gateway is served by daphne on a loopback port with the seeded phantom
PET/CT (``served_demo``); the page is the bundled viewer, signed in with
password and TOTP. In the PET/CT layout the doctor scrolls the fused view to
the lesion's hottest slice, picks the ellipse tool (key ``e``), draws an
ellipse around the lesion, reads SUVmax and the CT's row in HU from the
measurement table, keeps it under a label, and downloads the findings as XLSX
and CSV through the page's links. The audit log must hold the keep and both
exports.

Truth comes from the phantom's PET files read here with pydicom (SUVbw factor
from the headers: weight, injected dose decayed from the injection to the
series time), not from the gateway's SUV code. Where the page is drawn comes
from what the server itself sent the page: the frames' overlays (the plane),
read off the page's own websocket.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from rendering.protocol import frame_unpack
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = [pytest.mark.server, pytest.mark.browser]

FUSED = 2  # the PET/CT layout: CT, PET, CT + PET, PET MIP
WAIT_S = 120  # a frame or an answer on a busy two-core machine
MARGIN_MM = 6.0  # the ellipse reaches this far beyond the lesion


# --- truth from the PET files, with pydicom alone ------------------------------------------------

def _seconds(tm: str) -> float:
    moment = dt.datetime.strptime(tm.split(".")[0].ljust(6, "0"), "%H%M%S")  # noqa: DTZ007
    return moment.hour * 3600 + moment.minute * 60 + moment.second


@dataclass(frozen=True)
class Lesion:
    center_mm: np.ndarray
    radius_mm: float
    suv_max: float
    """The hottest voxel of the planted sphere, SUVbw from the headers."""
    hottest_mm: np.ndarray
    """That voxel's centre (patient mm): the fused view is scrolled to its slice."""
    pet_slice_mm: float
    """The PET's slice spacing: the fused view samples the PET slice nearest its plane."""


def _pet(phantom: Path, folder: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(SUV [z, y, x], voxel centres [z, y, x, 3] in patient mm, slice spacing, pixel diagonal)."""
    slices = sorted((pydicom.dcmread(path) for path in (phantom / folder / "PT").glob("*.dcm")),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = slices[0]
    drug = first.RadiopharmaceuticalInformationSequence[0]
    assert first.Units == "BQML" and first.DecayCorrection == "START"
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    elapsed = _seconds(first.SeriesTime) - _seconds(drug.RadiopharmaceuticalStartTime)
    dose = float(drug.RadionuclideTotalDose) * 2 ** (-elapsed / float(drug.RadionuclideHalfLife))
    factor = float(first.PatientWeight) * 1000 / dose
    suv = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                    for ds in slices]) * factor
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    xs = float(first.ImagePositionPatient[0]) + column_mm * np.arange(int(first.Columns))
    ys = float(first.ImagePositionPatient[1]) + row_mm * np.arange(int(first.Rows))
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
    spacing = float(np.median(np.diff(zs)))
    return suv, np.stack([x, y, z], axis=-1), spacing, float(np.hypot(row_mm, column_mm))


@pytest.fixture(scope="module")
def lesion(served_demo) -> Lesion:
    """A planted lesion whose disc (radius + margin) on its hottest slice holds nothing hotter."""
    phantom = served_demo.var_dir / "demo" / "phantom"
    patient = json.loads((phantom / "truth.json").read_text())["patients"][0]
    suv, centres, pet_slice_mm, diagonal_mm = _pet(phantom, patient["folder"])
    for planted in patient["lesions"]:
        center, radius = np.asarray(planted["center_mm"], dtype=np.float64), float(planted["radius_mm"])
        inside = np.linalg.norm(centres - center, axis=-1) <= radius
        hottest = np.unravel_index(int(np.argmax(np.where(inside, suv, -np.inf))), suv.shape)
        on_slice = centres[hottest[0]]
        # The plane samples the nearest voxel: one whose centre lies half a voxel outside may show.
        disc = np.linalg.norm(on_slice[..., :2] - center[:2], axis=-1) <= radius + MARGIN_MM + diagonal_mm
        if suv[hottest] >= suv[hottest[0]][disc].max():
            assert suv[hottest] == pytest.approx(planted["suv_max"], rel=0.01), "the planted SUVmax"
            return Lesion(center, radius, float(suv[hottest]), centres[hottest], pet_slice_mm)
    raise AssertionError("no planted lesion stands alone on its slice")


# --- what the server sent the page ----------------------------------------------------------------

@dataclass
class PageSocket:
    """The page's own viewer websocket, read as it goes (frames decoded, JSON parsed)."""

    frames: dict[int, Any] = field(default_factory=dict)  # view -> the latest still frame
    texts: list[dict[str, Any]] = field(default_factory=list)
    shown: dict[int, Any] = field(default_factory=dict)
    """View -> the latest still frame since the last ``ready`` (a tab or layout restarts the views)."""

    def attach(self, page) -> None:
        page.on("websocket", lambda ws: ws.on("framereceived", self._received)
                if "/ws/viewer/" in ws.url else None)

    def _received(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            frame = frame_unpack(payload)
            if frame.quality == 1 and (frame.view not in self.frames
                                       or frame.sequence > self.frames[frame.view].sequence):
                self.frames[frame.view] = frame
            if frame.quality == 1 and (frame.view not in self.shown
                                       or frame.sequence > self.shown[frame.view].sequence):
                self.shown[frame.view] = frame
        else:
            self.texts.append(json.loads(payload))
            if self.texts[-1].get("type") == "ready":
                self.shown.clear()

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((m for m in reversed(self.texts) if m.get("type") == kind), None)


def _until(page, condition, what: str, seconds: float = WAIT_S) -> Any:
    """Poll from Python: the page's CSP forbids the eval that wait_for_function would need."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: not within {seconds} s; status: {page.text_content('#status')}")


def view_canvas(page, view: int = FUSED):
    return page.locator(f"canvas[data-view='{view}']")


def view_size(page, view: int = FUSED) -> dict[str, float]:
    return view_canvas(page, view).evaluate("""canvas => { const r = canvas.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                pixels: canvas.width, rows: canvas.height}; }""")


def settled_still(page, socket: PageSocket, view: int = FUSED, *, after: int = 0, since_ready: bool = False,
                  plane: bool = True, quiet_ms: int = 500):
    """View ``view``'s latest still frame (``since_ready``: since the last ``ready``), once it is on the
    canvas at the canvas's size (with its ``plane`` in the overlay, where asked) and stays so."""
    def painted():
        frame = (socket.shown if since_ready else socket.frames).get(view)
        shown = view_canvas(page, view).get_attribute("data-sequence")
        size = view_size(page, view)
        return (frame if frame is not None and frame.sequence > after and shown == str(frame.sequence)
                and (not plane or "plane" in frame.overlay)
                and (frame.width, frame.height) == (size["pixels"], size["rows"]) else None)

    _until(page, painted, f"a still of view {view} at its size")
    page.wait_for_timeout(quiet_ms)  # a later still (a resize, a second still of the same state), if any
    return _until(page, painted, f"view {view} quiet")


def _canvas(page):
    return view_canvas(page)


def _size(page) -> dict[str, float]:
    return view_size(page)


def _settled_still(page, socket: PageSocket, *, after: int = 0):
    return settled_still(page, socket, after=after)


def _depth(frame, point: np.ndarray) -> float:
    plane = frame.overlay["plane"]
    return float((point - np.asarray(plane["center_mm"])) @ np.asarray(plane["normal"]))


def _to_canvas(frame, point: np.ndarray) -> tuple[float, float]:
    """Canvas pixels of a patient point on the frame's plane (as the client's ``toScreen``)."""
    plane, mm_per_pixel = frame.overlay["plane"], frame.overlay["mm_per_pixel"]
    offset = point - np.asarray(plane["center_mm"])
    return (float(offset @ np.asarray(plane["right"])) / mm_per_pixel + frame.width / 2,
            float(offset @ np.asarray(plane["down"])) / mm_per_pixel + frame.height / 2)


def _on_page(size: dict[str, float], x: float, y: float) -> tuple[float, float]:
    return (size["left"] + x * size["width"] / size["pixels"],
            size["top"] + y * size["height"] / size["rows"])


def _row(page, unit: str):
    return page.locator(f"#measurement tr.measure-layer[data-unit='{unit}']")


def _stat(page, unit: str, key: str) -> str:
    return (_row(page, unit).locator(f"td[data-stat='{key}'] .stat-value").text_content() or "").strip()


def _download(page, link: str, directory: Path) -> Path:
    with page.expect_download(timeout=WAIT_S * 1000) as started:
        page.locator(link).click()
    download = started.value
    assert download.failure() is None, download.failure()
    target = directory / download.suggested_filename
    download.save_as(target)
    return target


def _audit(served_demo, actor: str) -> list[dict[str, Any]]:
    code = ("import json\nfrom gateway.audit.services import audit_outbox_drain\n"
            "from gateway.audit.models import AuditEvent\naudit_outbox_drain()\n"
            f"print(json.dumps([dict(action=e.action, outcome=e.outcome, study=e.study,"
            f" details=json.loads(e.details or '{{}}')) for e in AuditEvent.objects"
            f".filter(actor={actor!r}).order_by('sequence')]))")
    return json.loads(served_demo.shell(code).splitlines()[-1])


# --- the test -------------------------------------------------------------------------------------

@pytest.fixture
def viewer(served_demo):
    """A fresh doctor (password + TOTP over HTTP) with their cookies in chromium: (open a page, username).

    Each page opens the study at the given window size and reads its own websocket.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium "
                    "(make test installs it)")
    from playwright.sync_api import sync_playwright

    person = served_demo.person("doctor")
    signed_in = served_demo.sign_in(person)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(accept_downloads=True)
            context.add_cookies([{"name": c.name, "value": c.value, "url": served_demo.base}
                                 for c in signed_in.jar])

            def open_page(width: int = 1280, height: int = 800) -> tuple[Any, PageSocket]:
                page = context.new_page()
                page.set_viewport_size({"width": width, "height": height})
                socket = PageSocket()
                socket.attach(page)
                page.goto(f"{served_demo.base}/viewer/{served_demo.study_uid}/")
                return page, socket

            yield open_page, person.username
        finally:
            browser.close()


def test_an_ellipse_on_the_fused_view_gives_suvmax_and_hu_is_kept_and_exported(served_demo, lesion, viewer,
                                                                                tmp_path):
    open_page, username = viewer
    page, socket = open_page()
    ready = _until(page, lambda: socket.last("ready"), "ready")
    assert ready["layout"] == "petct" and "ellipse" in ready["vocabulary"]["measure_tools"]
    series = {s["modality"]: s["uid"] for s in ready["series"]}
    assert ready["views"][FUSED]["layers"] == [series["CT"], series["PT"]], "view 2 is not the fused view"

    # Scroll the fused view (arrow keys) until its plane samples the PET slice of the hottest voxel.
    frame = _settled_still(page, socket)
    _canvas(page).focus()
    key = "ArrowUp"
    for _ in range(40):
        depth = _depth(frame, lesion.hottest_mm)
        if abs(depth) < lesion.pet_slice_mm / 2 - 0.25:
            break
        page.keyboard.press(key)
        frame = _settled_still(page, socket, after=frame.sequence)
        if abs(_depth(frame, lesion.hottest_mm)) > abs(depth):
            key = "ArrowDown" if key == "ArrowUp" else "ArrowUp"
    else:
        raise AssertionError(f"the fused view never reached the lesion's slice: {frame.overlay}")

    # The ellipse tool by its key. The pointer rests on the lesion first, as a reader's does, and
    # the canvas's place is read after the readout answers (it must not move the views: the test
    # below), then the ellipse is dragged from corner to corner.
    page.keyboard.press("e")
    assert page.locator("#measure-tool").input_value() == "ellipse"
    x, y = _to_canvas(frame, lesion.center_mm)
    page.mouse.move(*_on_page(_size(page), x, y))
    _until(page, lambda: "SUV at" in (page.text_content("#probe") or ""), "the probe readout")
    page.wait_for_timeout(300)
    size = _size(page)
    reach = (lesion.radius_mm + MARGIN_MM) / frame.overlay["mm_per_pixel"]
    assert reach < x < size["pixels"] - reach and reach < y < size["rows"] - reach, "the lesion is off view"
    page.mouse.move(*_on_page(size, x - reach, y - reach))
    page.mouse.down()
    page.mouse.move(*_on_page(size, x + reach, y + reach), steps=8)
    page.mouse.up()

    label = f"liver lesion {secrets.token_hex(2)}"
    page.locator("#keep-label").fill(label)
    _until(page, lambda: page.locator("#keep").is_enabled(), "Keep offered for the released ellipse")
    answer = socket.last("measurement")
    assert answer is not None and answer["tool"] == "ellipse" and answer["view"] == FUSED
    (x0, y0), (x1, y1) = answer["points"]
    assert abs((x0 + x1) / 2 - x) < 1.5 and abs((y0 + y1) / 2 - y) < 1.5, answer["points"]

    # The table shows both layers: the CT in HU and the PET in SUV, SUVmax within 1 % of the truth.
    rows = page.locator("#measurement tr.measure-layer")
    assert [rows.nth(i).get_attribute("data-unit") for i in range(rows.count())] == ["HU", "SUV"]
    assert _row(page, "HU").locator("th").text_content() == "CT (HU)"
    assert _row(page, "HU").get_attribute("data-series") == series["CT"]
    assert _row(page, "SUV").locator("th").text_content() == "PT (SUV)"
    assert _row(page, "SUV").get_attribute("data-series") == series["PT"]
    shown_text = _stat(page, "SUV", "maximum")
    shown_max = float(shown_text)
    assert shown_max == pytest.approx(lesion.suv_max, rel=0.01), (shown_max, lesion.suv_max)
    hu = {key: float(_stat(page, "HU", key)) for key in ("mean", "minimum", "maximum")}
    assert hu["minimum"] <= hu["mean"] <= hu["maximum"] and -200 < hu["mean"] < 200, hu
    served = {layer["unit"]: layer for layer in answer["result"]}
    assert served["SUV"]["maximum"] == pytest.approx(lesion.suv_max, rel=0.01)
    assert served["SUV"]["area_mm2"] == pytest.approx(np.pi * (lesion.radius_mm + MARGIN_MM) ** 2, rel=0.05)

    # Keep it under the label: the findings list shows it.
    page.locator("#keep").click()
    item = page.locator("#findings .finding", has_text=label)
    _until(page, lambda: item.count() == 1, "the kept finding listed")
    finding_id = int(item.get_attribute("data-finding") or "0")
    assert (item.locator(".finding-tool").text_content() or "").strip().lower() == "ellipse"
    assert f"SUVmax {shown_text}" in (item.locator(".finding-numbers").text_content() or "")

    # XLSX through the page's link, read with openpyxl: one row per layer, the server's numbers.
    from openpyxl import load_workbook

    sheet = load_workbook(_download(page, "#findings-xlsx", tmp_path)).active
    header = [cell.value for cell in sheet[1]]
    table = [dict(zip(header, (cell.value for cell in row), strict=True))
             for row in sheet.iter_rows(min_row=2)]
    kept = {row["unit"]: row for row in table if row["label"] == label}
    assert set(kept) == {"HU", "SUV"}, kept
    assert all(row["tool"] == "ellipse" and row["finding"] == finding_id for row in kept.values())
    assert kept["SUV"]["max"] == pytest.approx(lesion.suv_max, rel=0.01)
    assert kept["SUV"]["max"] == pytest.approx(served["SUV"]["maximum"], rel=1e-9)
    assert kept["HU"]["mean"] == pytest.approx(served["HU"]["mean"], rel=1e-9)
    assert kept["SUV"]["size unit"] == "mm2" and kept["SUV"]["by"] == username

    # CSV through the other link: the same rows.
    text = _download(page, "#findings-csv", tmp_path).read_text(encoding="utf-8")
    listed = {row["unit"]: row for row in csv.DictReader(io.StringIO(text)) if row["label"] == label}
    assert set(listed) == {"HU", "SUV"} and listed["SUV"]["tool"] == "ellipse"
    assert float(listed["SUV"]["max"]) == pytest.approx(lesion.suv_max, rel=0.01)

    # The audit log: the keep (with its finding and label) and both exports, by this doctor.
    events = _audit(served_demo, username)
    keeps = [e for e in events if e["action"] == "finding.keep"]
    assert [(e["outcome"], e["study"], e["details"]) for e in keeps] == [
        ("success", served_demo.study_uid, {"finding": finding_id, "tool": "ellipse", "label": label})]
    exports = [e for e in events if e["action"] == "export" and e["outcome"] == "success"]
    assert sorted(e["details"].get("format") for e in exports) == ["csv", "xlsx"], exports
    assert all(e["study"] == served_demo.study_uid and e["details"]["what"] == "findings" for e in exports)


def test_the_probe_readout_leaves_the_views_where_they_are(served_demo, viewer):
    """Wherever the toolbar wraps (three window widths), the value under the pointer moves no view."""
    open_page, _ = viewer
    moved = {}
    for width in (1024, 1280, 1600):
        page, socket = open_page(width, 800)
        _settled_still(page, socket)
        before = _size(page)
        page.mouse.move(*_on_page(before, before["pixels"] / 2, before["rows"] / 2))
        _until(page, lambda page=page: (page.text_content("#probe") or "").strip(), "the probe readout")
        page.wait_for_timeout(300)
        after = _size(page)
        if abs(after["top"] - before["top"]) > 0.5 or abs(after["height"] - before["height"]) > 0.5:
            moved[width] = (before, after)
        page.close()
    assert moved == {}, moved
