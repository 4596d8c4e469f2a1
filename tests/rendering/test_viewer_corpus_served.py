"""Every series of the public test corpora opens through a served gateway, in real clients (#13).

pydicom's and pydicom-data's test files are imported through the import door of
a gateway that daphne serves on a loopback port (``served_corpus``). A doctor
then opens every study over the real viewer websocket and shows every series in
view 0: the still frame the server sends is not blank, the picture in it has the
proportions its header gives (Columns x column spacing : Rows x row spacing),
and ``ready`` names the plane the header gives. The worklist page lists every
series that cannot be shown, with why. Debian's chromium then opens a
radiograph, an ultrasound cine, a whole-body NM and a sagittal MR in the bundled
viewer page, and switches series through the series strip.

Truth comes from the stored (de-identified) DICOM, read here with pydicom alone
(``tests.dicom_truth.header_spacing``; ``_header_plane`` as in tests/imaging/test_series_corpus.py,
the plane also from an enhanced object's functional groups); none of the gateway's code computes what is
expected.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut
from websockets.exceptions import ConnectionClosed

from tests.dicom_truth import header_spacing
from tests.served import (
    UNSHOWABLE_REASON,
    StoredSeries,
    is_frame,
    viewer_ready,
    viewer_socket,
    viewer_until,
    worklist_studies,
)
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.server

VIEW_WIDTH, VIEW_HEIGHT = 512, 384  # not square: a picture stretched to fill the view shows
WAIT_S = 180  # a frame on a busy two-core machine
COLOUR_FLOOR = 24  # 8-bit level below which a colour pixel counts as black background
GREY_FLOOR = 16  # the content of a grey picture, in a window that maps every value to >= 64
SPREAD = 0.02  # an image varies enough to show two greys when its values span 2 % of the series'

# --- truth from the stored DICOM, without the gateway's code ----------------------------------

def _functional(ds: pydicom.Dataset, sequence: str, keyword: str) -> Any:
    """An attribute of the first frame's functional groups (shared, else per-frame), or None."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in (ds.get(groups) or [])[:1]:
            inner = item.get(sequence) or []
            if inner and keyword in inner[0]:
                return inner[0][keyword].value
    return None


def _header_plane(ds: pydicom.Dataset) -> str:
    orientation = [float(v) for v in (
        ds.get("ImageOrientationPatient")
        or _functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient") or [])]
    placed = "ImagePositionPatient" in ds or _functional(ds, "PlanePositionSequence", "ImagePositionPatient")
    if len(orientation) != 6 or not placed:
        return "image"
    normal = np.abs(np.cross(orientation[:3], orientation[3:]))
    return "oblique" if normal.max() < 0.8 else ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def _header_volume(datasets: list[pydicom.Dataset]) -> bool:
    """One multi-frame object whose header places each frame in a plane of its own: a volume.

    RT Dose by its GridFrameOffsetVector (PS3.3 C.8.8.3.2), an enhanced object by its
    per-frame plane positions (C.7.6.16.2.3). Stacks of objects are left to the gateway's
    own rules (sizes, gaps, repeated positions).
    """
    if len(datasets) != 1 or _header_plane(datasets[0]) == "image":
        return False
    ds = datasets[0]
    frames = int(ds.get("NumberOfFrames") or 1)
    offsets = {round(float(v), 3) for v in ds.get("GridFrameOffsetVector") or []}
    positions = {tuple(round(float(v), 2) for v in item.PlanePositionSequence[0].ImagePositionPatient)
                 for item in ds.get("PerFrameFunctionalGroupsSequence") or []
                 if item.get("PlanePositionSequence")}
    return frames > 1 and frames in (len(offsets), len(positions))


def _frames(ds: pydicom.Dataset) -> list[np.ndarray]:
    pixels = ds.pixel_array
    single = pixels.ndim == (3 if int(ds.get("SamplesPerPixel", 1)) > 1 else 2)
    return [pixels] if single else list(pixels)


def _palette(ds: pydicom.Dataset, indices: np.ndarray) -> np.ndarray:
    """The palette colours of ``indices`` (PS3.3 C.7.6.3.1.5-6), in the file's byte order.

    pydicom's ``apply_color_lut`` reads non-segmented LUT data in the machine's byte order,
    which swaps the entries of a big-endian file (OBXXXX1A_expb*.dcm).
    """
    if "RedPaletteColorLookupTableData" not in ds:
        return apply_color_lut(indices, ds)  # segmented: pydicom honours the byte order there
    descriptor = ds.RedPaletteColorLookupTableDescriptor
    entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    order = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
    tables = []
    for colour in ("Red", "Green", "Blue"):
        data = ds[f"{colour}PaletteColorLookupTableData"].value
        tables.append(np.frombuffer(data, dtype=f"{order}u{len(data) // entries}"))
    index = np.clip(indices.astype(np.int64) - first, 0, entries - 1)
    return np.stack([table[index] for table in tables], axis=-1)


def _supplemental_palette(ds: pydicom.Dataset) -> bool:
    """Greyscale values shown through a Supplemental Palette Color LUT (PS3.3 C.8.16.2.1.1.1)."""
    return (str(ds.get("PixelPresentation", "")) in ("COLOR", "MIXED")
            and "RedPaletteColorLookupTableDescriptor" in ds)


def _colour_8bit(ds: pydicom.Dataset, frame: np.ndarray) -> np.ndarray:
    """An RGB frame on 0..255: pydicom's colour conversion, and the palette lookup."""
    if str(ds.PhotometricInterpretation) == "PALETTE COLOR":
        frame = _palette(ds, frame)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        bits = int(ds.BitsStored)
    return frame.astype(np.float64) * 255.0 / (2 ** bits - 1)


@dataclass(frozen=True)
class Box:
    """Expected content of one image: its size in mm, and the slack of one source pixel (colour)."""

    width_mm: float
    height_mm: float
    slack_width_mm: float = 0.0
    slack_height_mm: float = 0.0


@dataclass
class Truth:
    plane: str  # of the first stored object; "image" where the header gives none
    volume: bool  # a multi-frame object its header makes a volume (``_header_volume``)
    colour: bool
    images: int  # frames of all objects together
    single_size: bool
    objects: int
    boxes: list[Box | None]  # one per image, in instance then frame order (None: a black colour image)
    low: float = 0.0  # value range (modality LUT applied), grey only
    high: float = 0.0
    varied: bool = True  # every image spans enough of the range to show two levels


def _content(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, width, height) of the True pixels, or None."""
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        return None
    return (int(columns.min()), int(rows.min()), int(columns.max() - columns.min() + 1),
            int(rows.max() - rows.min() + 1))


@functools.cache
def _truth(files: tuple[Path, ...]) -> Truth:
    datasets = [pydicom.dcmread(path) for path in files]
    first = datasets[0]
    colour = (int(first.get("SamplesPerPixel", 1)) > 1
              or str(first.PhotometricInterpretation) == "PALETTE COLOR")
    # A supplemental palette is a colour picture too, windowed or not: its content is every
    # pixel above the image's lowest value (a perfusion map's background).
    supplemental = _supplemental_palette(first)
    boxes: list[Box | None] = []
    spans: list[float] = []
    low, high = np.inf, -np.inf
    for ds in datasets:
        row_mm, column_mm = header_spacing(ds)
        for frame in _frames(ds):
            if supplemental:
                found = _content(frame > frame.min())
                boxes.append(None if found is None else
                             Box(found[2] * column_mm, found[3] * row_mm, column_mm, row_mm))
                spans.append(float(np.ptp(frame)))
            elif colour:
                found = _content(_colour_8bit(ds, frame).max(axis=-1) >= COLOUR_FLOOR)
                boxes.append(None if found is None else
                             Box(found[2] * column_mm, found[3] * row_mm, column_mm, row_mm))
                spans.append(float(np.ptp(frame)))
            else:
                # PS3.3 C.8.8.3.4.6: an RT Dose's stored values times DoseGridScaling are the dose
                dose_scaling = float(ds.get("DoseGridScaling", 1))
                values = apply_modality_lut(frame, ds).astype(np.float64) * dose_scaling
                low, high = min(low, float(values.min())), max(high, float(values.max()))
                spans.append(float(np.ptp(values)))
                boxes.append(Box(int(ds.Columns) * column_mm, int(ds.Rows) * row_mm))
    truth = Truth(plane=_header_plane(first), volume=_header_volume(datasets),
                  colour=colour or supplemental, images=len(spans),
                  objects=len(datasets), boxes=boxes,
                  single_size=len({(int(ds.Rows), int(ds.Columns)) for ds in datasets}) == 1)
    if colour or supplemental:
        truth.varied = min(spans) > 0
    else:
        truth.low, truth.high = low, high
        truth.varied = high > low and min(spans) >= SPREAD * (high - low)
    return truth


def _proportion_problem(width: int, height: int, boxes: list[Box]) -> str | None:
    """None when the content box has the proportions of one of ``boxes``.

    Within 3 %, or 2 px, or (colour content found by its level) one source pixel.
    """
    for box in boxes:
        ratio = box.width_mm / box.height_mm
        least = (box.width_mm - box.slack_width_mm) / (box.height_mm + box.slack_height_mm) * 0.97
        most = (box.width_mm + box.slack_width_mm) / max(box.height_mm - box.slack_height_mm, 1e-9) * 1.03
        if least <= width / height <= most:
            return None
        if abs(height - width / ratio) <= 2 or abs(width - height * ratio) <= 2:
            return None
    expected = sorted({f"{b.width_mm:.1f}x{b.height_mm:.1f} mm ({b.width_mm / b.height_mm:.3f})"
                       for b in boxes})
    return (f"the picture is {width}x{height} px ({width / height:.3f}) where the header gives "
            f"{', '.join(expected[:3])}")


# --- the viewer socket --------------------------------------------------------------------------

@dataclass
class View0:
    """What a client knows of view 0: the newest sequence it has seen."""

    ws: Any
    sequence: int = 0


def _decoded(frame: Any) -> np.ndarray:
    with Image.open(io.BytesIO(frame.image)) as picture:
        return np.asarray(picture.convert("RGB") if picture.mode not in ("L", "RGB") else picture)


def _still(view: View0) -> Any:
    """The next still frame of view 0 newer than any seen, or the error the server sent instead."""
    def wanted(message: Any) -> bool:
        if isinstance(message, dict):
            return (message.get("type") == "error" and message.get("view", 0) == 0
                    and message.get("code") not in ("rate_limited", "probe_failed"))
        return message.view == 0 and message.quality == 1 and message.sequence > view.sequence

    message, _ = viewer_until(view.ws, wanted, seconds=WAIT_S)
    if is_frame(message):
        view.sequence = message.sequence
    return message


def _send(view: View0, message: dict[str, Any]) -> Any:
    view.ws.send(json.dumps(message))
    return _still(view)


def _error(message: Any) -> str | None:
    if is_frame(message):
        return None
    return f"the server answered {message.get('code')}: {message.get('message')}"


def _window(view: View0, frame: Any, low: float, high: float, good) -> Any:
    """Drag the window of view 0 (``window`` input) towards [low, high] until ``good(its low, its high)``."""
    last = None
    for _ in range(16):
        layer = frame.overlay["windows"][0]
        center, width = float(layer["center"]), float(layer["width"])
        if good(center - width / 2, center + width / 2):
            return frame
        if (center, width) == last:
            break  # the window no longer moves
        last = center, width
        scale = max(width, 1e-3) / 512  # docs/protocol.md: scaled to the current width
        frame = _send(view, {"type": "input", "view": 0, "op": "window",
                             "dc": float(np.clip(((low + high) / 2 - center) / scale, -10000, 10000)),
                             "dw": float(np.clip(((high - low) - width) / scale, -10000, 10000))})
        if _error(frame):
            return frame
    return {"code": "window", "message": f"no window reached [{low:.6g}, {high:.6g}]; the last was "
                                         f"{frame.overlay['windows'][0]}"}


def _show(view: View0, series: dict[str, Any]) -> Any:
    """Show ``series`` in view 0; its first still frame (or the error)."""
    frame = _send(view, {"type": "set", "view": 0, "name": "series", "value": series["uid"]})
    if is_frame(frame) and frame.overlay["windows"][0]["modality"] != series["modality"]:
        came = frame.overlay["windows"][0]["modality"]
        return {"code": "wrong series", "message": f"a frame of {came} came for {series['modality']}"}
    return frame


def _measure(view: View0, frame: Any, truth: Truth,
             kind: str) -> tuple[list[str], tuple[int, int, int, int] | None]:
    """Problems of the series shown in view 0, and its picture's content box in the frame."""
    problems: list[str] = []
    if truth.colour:
        picture = _decoded(frame)
        box = _content(picture.reshape(*picture.shape[:2], -1).max(axis=-1) >= COLOUR_FLOOR)
        if box is None:
            return ["blank: every pixel is black"], None
        # A cine shows one of its frames (overlay "slice", 1-based, in the object's order); a volume
        # or a stack of objects, one of its images.
        slice_ = frame.overlay.get("slice")
        boxes = [b for b in truth.boxes if b is not None]
        if kind == "cine" and truth.objects == 1 and slice_ and slice_[1] == truth.images:
            boxes = [b for b in truth.boxes[slice_[0] - 1:slice_[0]] if b is not None]
        varied = picture[box[1]:box[1] + box[3], box[0]:box[0] + box[2]]
    else:
        # Every value at least mid-grey, on the grey palette: the picture stands out from the black around it.
        frame = _send(view, {"type": "set", "view": 0, "name": "palette", "value": "grey"})
        if not _error(frame):
            span = truth.high - truth.low
            frame = _window(view, frame, truth.low - span - 1, truth.high + 1,
                            lambda lo, hi: truth.low - lo >= 0.2 * (hi - lo) and hi >= truth.high)
        if _error(frame):
            return [_error(frame)], None
        picture = _decoded(frame)
        box = _content(picture.reshape(*picture.shape[:2], -1).max(axis=-1) >= GREY_FLOOR)
        if box is None:
            return ["blank: nothing shows in a window below every value"], None
        boxes = [b for b in truth.boxes if b is not None]
        # Then the window of the series' own range (nine tenths of it at least: the input clamps
        # the centre): its image must show more than one grey.
        span = truth.high - truth.low
        frame = _window(view, frame, truth.low, truth.high,
                        lambda lo, hi: min(hi, truth.high) - max(lo, truth.low) >= 0.9 * span
                        and hi - lo <= 1.1 * span + 1e-6)
        if _error(frame):
            return [_error(frame)], box
        picture = _decoded(frame)
        varied = picture[box[1]:box[1] + box[3], box[0]:box[0] + box[2]]
    if truth.varied and np.unique(varied.reshape(-1, varied.shape[-1] if varied.ndim == 3 else 1),
                                  axis=0).shape[0] < 2:
        problems.append(f"blank: the picture is one value ({varied.reshape(-1)[:3].tolist()})")
    if truth.single_size:
        problem = _proportion_problem(box[2], box[3], boxes)
        if problem:
            problems.append(problem)
    return problems, box


def _check(view: View0, series: dict[str, Any], stored: StoredSeries) -> list[str]:
    truth = _truth(stored.files)
    problems = []
    # A volume is in the plane its header gives; pictures (images, cine) in their own ("image").
    if truth.volume and series["kind"] not in ("volume", "label"):
        problems.append(f"ready says {series['kind']} (plane {series['plane']}) where the header places "
                        f"every frame: a volume, {truth.plane}")
    if series["kind"] in ("volume", "label"):
        plane_right = truth.plane == "image" or series["plane"] == truth.plane
    else:
        plane_right = series["plane"] == "image"
    if not plane_right:
        problems.append(f"ready says plane {series['plane']} ({series['kind']}) where the header says "
                        f"{truth.plane}")
    if series.get("images") != truth.images:
        problems.append(f"ready says {series.get('images')} images where the objects hold {truth.images}")
    frame = _show(view, series)
    if _error(frame):
        return [*problems, _error(frame)]
    if series["kind"] == "label":  # a segmentation: its segments in colour, nothing else drawn
        picture = _decoded(frame)
        picture = picture.reshape(picture.shape[0], picture.shape[1], -1)
        coloured = (picture.max(axis=-1).astype(int) - picture.min(axis=-1)) > 40
        return problems + ([] if coloured.any() else ["a segmentation shows no segment in colour"])
    measured, _ = _measure(view, frame, truth, series["kind"])
    return problems + measured


@dataclass
class StudyPass:
    """One study opened by a doctor: ``ready`` (or the close code) and the problems of each series."""

    ready: dict[str, Any] | None = None
    closed: int | None = None
    problems: dict[str, list[str]] = field(default_factory=dict)  # by series UID ("" for the study)


def _open_study(gateway, doctor, study: str, stored: list[StoredSeries]) -> StudyPass:
    result = StudyPass()
    by_uid = {s.uid: s for s in stored}
    with viewer_socket(gateway, doctor, study=study) as ws:
        try:
            result.ready = viewer_ready(ws)
        except ConnectionClosed as closed:
            result.closed = closed.rcvd.code if closed.rcvd else None
            return result
        listed = {s["uid"]: s for s in result.ready["series"]}
        if set(listed) != set(by_uid):
            result.problems[""] = [f"ready lists {sorted(listed)} where the study holds {sorted(by_uid)}"]
        view = View0(ws)
        first = _send(view, {"type": "resize", "view": 0, "width": VIEW_WIDTH, "height": VIEW_HEIGHT})
        if _error(first):
            result.problems[""] = [*result.problems.get("", []), _error(first)]
            return result
        for uid, series in listed.items():
            if uid not in by_uid:
                continue
            if not series["available"]:
                result.problems[uid] = [] if str(series.get("reason") or "").strip() else [
                    "unavailable without a reason"]
                continue
            result.problems[uid] = _check(view, series, by_uid[uid])
    return result


@pytest.fixture(scope="module")
def doctor(served_corpus):
    return served_corpus.gateway.doctor()


@pytest.fixture(scope="module")
def corpus_pass(served_corpus, doctor) -> dict[str, StudyPass]:
    """Every study of the corpus opened, every series shown and measured (once for the module)."""
    started = time.monotonic()
    passes = {study: _open_study(served_corpus.gateway, doctor, study, stored)
              for study, stored in served_corpus.studies().items()}
    print(f"corpus pass: {len(passes)} studies, {len(served_corpus.series)} series in "
          f"{time.monotonic() - started:.0f} s")
    problems = _series_problems(served_corpus, passes)
    for series in served_corpus.series:  # shown with a failure: what each series was, and what it showed
        listed = {s["uid"]: s for s in (passes[series.study].ready or {}).get("series", [])}
        shown = listed.get(series.uid, {})
        print(f"  {series}: {shown.get('kind') or shown.get('reason')} {shown.get('plane', '')}: "
              f"{problems[series] or 'ok'}")
    return passes


NOT_IMAGE_WORDS = ("Segmentation", "Structure Set", "Presentation State", "Spatial Registration", " SR ",
                   "Key Object Selection")


def _objects_only(series: StoredSeries) -> bool:
    """Every file of the series is, by pydicom's UID dictionary, a non-image object."""
    names = [pydicom.uid.UID(str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)).name
             for path in series.files]
    return bool(names) and all(any(word in name for word in NOT_IMAGE_WORDS) for name in names)


def _series_problems(served_corpus, corpus_pass) -> dict[StoredSeries, list[str]]:
    found = {}
    for study, stored in served_corpus.studies().items():
        result = corpus_pass[study]
        for series in stored:
            problems = list(result.problems.get(series.uid, ["not checked"]))
            if result.ready is None:
                # A study of only non-image objects (a SEG, an RT structure set) has nothing to open:
                # the viewer refuses it and the worklist says why (test_the_worklist_lists_...).
                expected_refusal = _objects_only(series) and result.closed == 4404
                problems = [] if expected_refusal else [f"the viewer closed with {result.closed}"]
            found[series] = [*result.problems.get("", []), *problems]
    return found


# --- the corpus through the socket ------------------------------------------------------------

def test_the_corpus_is_imported_and_covers_every_kind_of_picture(served_corpus):
    heads = {s: pydicom.dcmread(s.files[0], stop_before_pixels=True) for s in served_corpus.series}
    kinds = {
        "CR or DX radiograph": [s for s, ds in heads.items() if ds.get("Modality") in ("CR", "DX")],
        "US multi-frame cine": [s for s, ds in heads.items()
                                if ds.get("Modality") == "US" and int(ds.get("NumberOfFrames") or 1) > 1],
        "palette colour": [s for s, ds in heads.items()
                           if ds.get("PhotometricInterpretation") == "PALETTE COLOR"],
        "YBR or RGB colour": [s for s, ds in heads.items()
                              if str(ds.get("PhotometricInterpretation", "")).startswith(("YBR", "RGB"))],
        "MONOCHROME1": [s for s, ds in heads.items() if ds.get("PhotometricInterpretation") == "MONOCHROME1"],
        "NM whole body": [s for s, ds in heads.items()
                          if ds.get("Modality") == "NM" and "WHOLE BODY" in list(ds.get("ImageType") or [])],
        "sagittal MR": [s for s, ds in heads.items()
                        if ds.get("Modality") == "MR" and _header_plane(ds) == "sagittal"],
        "CT volume": [s for s, ds in heads.items() if ds.get("Modality") == "CT" and len(s.files) >= 3
                      and _header_plane(ds) == "axial"],
    }
    assert {kind: len(found) for kind, found in kinds.items() if not found} == {}
    assert len(served_corpus.series) > 40, served_corpus.report[-3000:]
    assert all(s.sources for s in served_corpus.series), "a stored series whose files are not known"


def test_every_series_of_every_study_opens_with_its_header_s_proportions_and_plane(served_corpus,
                                                                                    corpus_pass):
    found = _series_problems(served_corpus, corpus_pass)
    failures = {str(s): problems for s, problems in found.items() if problems}
    checked = [s for s, problems in found.items() if not problems]
    assert failures == {}
    assert len(checked) > 40


def test_dragging_the_window_up_moves_its_centre_up_for_every_series(served_corpus, doctor):
    series = served_corpus.series_of("rtdose.dcm")
    with viewer_socket(served_corpus.gateway, doctor, study=series.study) as ws:
        view = View0(ws)
        shown = next(s for s in viewer_ready(ws)["series"] if s["uid"] == series.uid)
        before = _show(view, shown)
        assert not _error(before), _error(before)
        after = _send(view, {"type": "input", "view": 0, "op": "window", "dc": 1, "dw": 0})
        assert not _error(after), _error(after)
    assert after.overlay["windows"][0]["center"] > before.overlay["windows"][0]["center"], (
        before.overlay["windows"][0], after.overlay["windows"][0])


def test_a_series_that_cannot_be_shown_is_listed_with_why_and_the_others_open(served_corpus, corpus_pass):
    mixed = served_corpus.series_of("unshowable-1.dcm")
    shown = served_corpus.series_of("unshowable-0.dcm")
    assert mixed.study == shown.study and mixed.uid != shown.uid
    result = corpus_pass[mixed.study]
    assert result.ready is not None, f"the viewer closed with {result.closed}"
    listed = {s["uid"]: s for s in result.ready["series"]}
    assert listed[mixed.uid]["available"] is False
    assert UNSHOWABLE_REASON in listed[mixed.uid]["reason"]
    assert listed[shown.uid]["available"] is True
    assert result.problems[shown.uid] == []


def test_the_worklist_lists_every_series_that_cannot_be_shown_with_why(served_corpus, corpus_pass, doctor):
    failures = {}
    for study, stored in served_corpus.studies().items():
        result = corpus_pass[study]
        page = worklist_studies(doctor, stored[0].patient_id)
        if result.ready is None:  # nothing to show: no viewer link, and every series' reason
            unviewable = [b for key, b in page.items() if key.startswith("unviewable")]
            reasons = [s.reason for s in stored]
            if len(unviewable) != 1 or "cannot be shown" not in unviewable[0]["text"] or not all(
                    any(reason and reason in line for line in unviewable[0]["unavailable"])
                    for reason in reasons):
                failures[str(stored[0])] = f"the viewer closed with {result.closed}; the worklist says {page}"
            continue
        expected = sorted(f"{s['modality']} {s['description']}".strip() + f": {s['reason']}"
                          for s in result.ready["series"] if not s["available"])
        block = page.get(study)
        if block is None:
            failures[str(stored[0])] = f"no viewer link to {study} in {list(page)}"
        elif sorted(block["unavailable"]) != expected:
            failures[str(stored[0])] = (f"the worklist says {block['unavailable']} "
                                        f"where the viewer says {expected}")
    assert failures == {}
    mixed = served_corpus.series_of("unshowable-1.dcm")
    assert any(UNSHOWABLE_REASON in line
               for line in worklist_studies(doctor, mixed.patient_id)[mixed.study]["unavailable"])


# --- the viewer page in chromium ----------------------------------------------------------------

CANVAS = "canvas[data-view='0']"


@pytest.fixture(scope="module")
def chromium(served_corpus):
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium "
                    "(make test installs it)")
    from playwright.sync_api import sync_playwright

    signed_in = served_corpus.gateway.doctor()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        context.add_cookies([{"name": c.name, "value": c.value, "url": served_corpus.gateway.base}
                             for c in signed_in.jar])
        yield context, signed_in
        browser.close()


def _sagittal_mr_study(served_corpus) -> str:
    """The study with the most MR series acquired sagittal."""
    counts: dict[str, int] = {}
    for series in served_corpus.series:
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        if ds.get("Modality") == "MR" and _header_plane(ds) == "sagittal":
            counts[series.study] = counts.get(series.study, 0) + 1
    assert counts, "no sagittal MR in the corpus"
    return max(counts, key=lambda study: (counts[study], study))


def _whole_body_nm(served_corpus) -> StoredSeries:
    for series in served_corpus.series:
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        if ds.get("Modality") == "NM" and "WHOLE BODY" in list(ds.get("ImageType") or []):
            return series
    raise AssertionError("no whole-body NM in the corpus")


def _until(page, condition, what: str, seconds: float = WAIT_S) -> None:
    """Poll from Python: the page's CSP forbids the eval that wait_for_function would need."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: not within {seconds} s; status: {page.text_content('#status')}")


def _still_painted(page, above: int) -> int:
    canvas = page.locator(CANVAS)

    def painted() -> bool:
        sequence = canvas.get_attribute("data-sequence")
        return (sequence is not None and int(sequence) > above
                and canvas.get_attribute("data-quality") == "still")

    _until(page, painted, f"a still frame after {above}")
    page.wait_for_timeout(300)  # a later still of the same state, if any, is painted too
    return int(canvas.get_attribute("data-sequence"))


def _canvas(page) -> tuple[np.ndarray, dict[str, float]]:
    shown = page.evaluate("""() => {
        const canvas = document.querySelector("canvas[data-view='0']");
        const box = canvas.getBoundingClientRect();
        return {url: canvas.toDataURL('image/png'), width: canvas.width, height: canvas.height,
                cssWidth: box.width, cssHeight: box.height};
    }""")
    png = base64.b64decode(shown.pop("url").split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.int16), shown


def _selected(page) -> str | None:
    return page.locator("#series .series-item[aria-pressed='true']").first.get_attribute("data-series")


def _reference(served_corpus, signed_in, study: str, series: dict[str, Any], width: int, height: int):
    """What the gateway renders for ``series`` at the canvas' size (a socket of our own), and its problems."""
    stored = next(s for s in served_corpus.series if s.uid == series["uid"])
    with viewer_socket(served_corpus.gateway, signed_in, study=study) as ws:
        viewer_ready(ws)
        view = View0(ws)
        assert not _error(_send(view, {"type": "resize", "view": 0, "width": width, "height": height}))
        frame = _show(view, series)
        assert not _error(frame), _error(frame)
        picture = np.asarray(Image.open(io.BytesIO(frame.image)).convert("RGB")).astype(np.int16)
        problems, _ = _measure(view, frame, _truth(stored.files), series["kind"])
    return picture, problems


def _same_picture(canvas: np.ndarray, reference: np.ndarray) -> bool:
    """The canvas shows the reference frame (reference lines drawn over it aside)."""
    if canvas.shape != reference.shape:
        return False
    differing = np.abs(canvas - reference).max(axis=-1) > 24
    return float(differing.mean()) < 0.02


def _check_page(page, served_corpus, signed_in, study: str, series: dict[str, Any]) -> np.ndarray:
    picture, shown = _canvas(page)
    assert picture.max() > 40 and np.unique(picture.reshape(-1, 3), axis=0).shape[0] > 1, "the view is black"
    assert abs(shown["width"] / shown["height"] - shown["cssWidth"] / shown["cssHeight"]) < 0.01 * (
        shown["width"] / shown["height"]), f"the canvas is stretched on screen: {shown}"
    reference, problems = _reference(served_corpus, signed_in, study, series,
                                     int(shown["width"]), int(shown["height"]))
    assert _same_picture(picture, reference), f"the canvas does not show {series['modality']} {series['uid']}"
    assert problems == [], problems
    return picture


@pytest.mark.browser
@pytest.mark.parametrize("what", ["radiograph", "ultrasound cine", "whole-body NM", "sagittal MR"])
def test_the_viewer_page_shows_the_picture_and_the_strip_switches_series(served_corpus, chromium, what):
    context, signed_in = chromium
    if what == "radiograph":
        study = served_corpus.series_of("RG1_UNCR.dcm").study
    elif what == "ultrasound cine":
        study = served_corpus.series_of("examples_ybr_color.dcm").study
    elif what == "whole-body NM":
        study = _whole_body_nm(served_corpus).study
    else:
        study = _sagittal_mr_study(served_corpus)
    page = context.new_page()
    try:
        page.goto(f"{served_corpus.gateway.base}/viewer/{study}/")
        page.locator(CANVAS).wait_for()
        sequence = _still_painted(page, above=0)
        _until(page, lambda: _selected(page) is not None, "a series marked as shown in the strip")
        items = page.locator("#series .series-item")
        ready = {s["uid"]: s for s in _ready_series(served_corpus, signed_in, study)}
        listed = {uid: ready[uid] for uid in (items.nth(i).get_attribute("data-series")
                                              for i in range(items.count()))}
        assert set(listed) == set(ready), "the strip does not list every series"
        first = listed[_selected(page)]
        before = _check_page(page, served_corpus, signed_in, study, first)
        others = [s for uid, s in listed.items() if s["available"] and uid != first["uid"]]
        if what == "sagittal MR":
            assert others, "the sagittal MR study has one series: nothing to switch to"
        for other in others:
            page.locator(f"#series .series-item[data-series='{other['uid']}']").click()
            sequence = _still_painted(page, above=sequence)
            assert _selected(page) == other["uid"]
            assert other["modality"] in (page.text_content(".overlay .facts") or "")
            after = _check_page(page, served_corpus, signed_in, study, other)
            assert not _same_picture(after, before), "the view did not change"
    finally:
        page.close()


def _ready_series(served_corpus, signed_in, study: str) -> list[dict[str, Any]]:
    with viewer_socket(served_corpus.gateway, signed_in, study=study) as ws:
        return viewer_ready(ws)["series"]
