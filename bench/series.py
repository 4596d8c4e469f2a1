"""Series beyond the PET/CT for ``bench/render.py --series`` (issue #13): radiographs, cine, thumbnails.

Writes its own DICOM for one synthetic patient, imported through ``manage.py
import_dicom`` like any other data:

* a chest radiograph study: CR PA 2500x2500 and CR lateral 2500x2048, uint16
  (12 bits stored), MONOCHROME2, ImagerPixelSpacing 0.16 mm;
* an ultrasound study: one US Multi-frame object, RGB 600x800, 60 frames,
  FrameTime 33.3 ms, CineRate 30;
* an MR head study of 10 series (axial, sagittal and coronal stacks, 128² to 320²,
  24 to 60 slices), the strip whose thumbnails are timed.

Figures (each beside its target and a pass/fail):

* radiograph: the first frame of a fresh socket (cold: these volumes never loaded, and
  with ``--series-only`` workers that never served a request), then the first frame
  after ``set series`` to the other view (first time, then several rounds alternating
  PA and lateral: median and p95), and the lossless still after it;
* cine: ``frame`` inputs at the header's rate (one per FrameTime) for the whole loop,
  several loops: delivered frames/s, frames dropped, input-to-frame latency;
* thumbnails: ``thumbnails`` sent on a fresh socket to the last thumbnail received,
  one socket per round;
* peer: Orthanc's ``/instances/{id}/rendered`` of the same PA radiograph at the same
  size, when Debian's Orthanc is installed.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from render import Viewer, manage, next_frame, percentile

RADIOGRAPH_TARGET_MS = 300.0
CINE_TARGET_FPS = 30.0
THUMBNAILS_TARGET_MS = 1000.0
RADIOGRAPH_VIEWPORT = 1024
CINE_FRAMES, CINE_ROWS, CINE_COLUMNS, CINE_FRAME_MS = 60, 600, 800, 33.3
FRAME_TIMEOUT_S = 30.0
PATIENT = {"PatientName": "BENCH^SERIES", "PatientID": "FGBENCH0001",
           "IssuerOfPatientID": "FG-BENCH", "PatientBirthDate": "19700101", "PatientSex": "F"}
MR_SERIES = (  # description, plane, matrix, slices, spacing mm, slice mm
    ("T1 SAG", "sagittal", 256, 24, 0.94, 5.0), ("T2 AX", "axial", 320, 30, 0.72, 5.0),
    ("FLAIR AX", "axial", 256, 30, 0.9, 5.0), ("DWI AX b1000", "axial", 128, 30, 1.8, 5.0),
    ("ADC AX", "axial", 128, 30, 1.8, 5.0), ("T2 COR", "coronal", 320, 24, 0.72, 5.0),
    ("T1 AX post", "axial", 256, 30, 0.9, 5.0), ("T1 COR post", "coronal", 256, 24, 0.9, 5.0),
    ("T1 SAG post", "sagittal", 256, 24, 0.94, 5.0), ("SWI AX", "axial", 256, 60, 0.9, 2.0),
)
ORIENTATIONS = {"axial": ([1, 0, 0], [0, 1, 0]), "sagittal": ([0, 1, 0], [0, 0, -1]),
                "coronal": ([1, 0, 0], [0, 0, -1])}


@dataclass(frozen=True)
class Studies:
    """Gateway (de-identified) study UIDs of the three studies, and the PA radiograph's file."""

    radiograph: str
    cine: str
    mr: str
    radiograph_file: Path


# --- DICOM ------------------------------------------------------------------------------------


def _dataset(sop_class: str, modality: str, study: str, series: tuple[str, int, str]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study, "1", "BENCH" + study[-8:]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.Manufacturer = modality, "Fusion Gateway bench"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series
    ds.InstanceNumber, ds.PatientOrientation = 1, ""
    ds.BurnedInAnnotation = "NO"
    return ds


def _grey(ds: Dataset, pixels: np.ndarray, bits: int) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()


def _save(ds: Dataset, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)


def _ellipse(ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0


def chest_pixels(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A chest-like radiograph, 12-bit: body, two lungs, mediastinum, spine, noise."""
    ys, xs = np.mgrid[0:rows, 0:columns].astype(np.float32) / max(rows, columns)
    image = np.full((rows, columns), 300.0, dtype=np.float32)
    image[_ellipse(ys, xs, 0.55, 0.5 * columns / max(rows, columns), 0.5, 0.42)] = 2600.0
    for cx in (0.32, 0.68):
        image[_ellipse(ys, xs, 0.48, cx * columns / max(rows, columns), 0.3, 0.13)] = 1100.0
    image[np.abs(xs - 0.5 * columns / max(rows, columns)) < 0.035] += 900.0
    image += rng.normal(0.0, 40.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 4095)


def write_radiographs(folder: Path, rng: np.random.Generator) -> str:
    study = generate_uid()
    for number, (description, columns, view) in enumerate((("CHEST PA", 2500, "PA"),
                                                           ("CHEST LAT", 2048, "LL")), start=1):
        ds = _dataset(ComputedRadiographyImageStorage, "CR", study,
                      (generate_uid(), number, description))
        ds.StudyDescription, ds.BodyPartExamined, ds.ViewPosition = "XR CHEST 2 VIEWS", "CHEST", view
        ds.ImagerPixelSpacing = [0.16, 0.16]
        ds.PatientOrientation = ["A" if view == "LL" else "L", "F"]
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        _grey(ds, chest_pixels(2500, columns, rng), 12)
        _save(ds, folder, f"CR_{number}.dcm")
    return study


def cine_pixels(rng: np.random.Generator) -> np.ndarray:
    """A sector of speckle with a beating dark chamber, RGB uint8 (frames, rows, columns, 3)."""
    ys, xs = np.mgrid[0:CINE_ROWS, 0:CINE_COLUMNS].astype(np.float32)
    angle = np.arctan2(xs - CINE_COLUMNS / 2, ys + 40)
    depth = np.hypot(xs - CINE_COLUMNS / 2, ys + 40)
    sector = (np.abs(angle) < 0.7) & (depth < CINE_ROWS)
    frames = np.zeros((CINE_FRAMES, CINE_ROWS, CINE_COLUMNS, 3), dtype=np.uint8)
    for index in range(CINE_FRAMES):
        radius = 90 + 30 * np.sin(2 * np.pi * index / 30)
        speckle = rng.rayleigh(50.0, (CINE_ROWS, CINE_COLUMNS)).astype(np.float32)
        speckle[_ellipse(ys, xs, 300, CINE_COLUMNS / 2, radius, radius * 1.2)] *= 0.15
        frames[index][sector] = np.clip(speckle[sector], 0, 255)[:, None].astype(np.uint8)
    return frames


def write_cine(folder: Path, rng: np.random.Generator) -> str:
    study = generate_uid()
    ds = _dataset(UltrasoundMultiFrameImageStorage, "US", study, (generate_uid(), 1, "ECHO 4CH"))
    ds.StudyDescription, ds.BodyPartExamined = "US ECHO", "HEART"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = CINE_ROWS, CINE_COLUMNS, CINE_FRAMES
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.CineRate, ds.RecommendedDisplayFrameRate = CINE_FRAME_MS, 30, 30
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.ImageType, ds.LossyImageCompression = ["ORIGINAL", "PRIMARY"], "00"
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = CINE_COLUMNS - 1, CINE_ROWS - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.025
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = cine_pixels(rng).tobytes()
    _save(ds, folder, "US_1.dcm")
    return study


def _head(points: np.ndarray, contrast: float) -> np.ndarray:
    """MR-like values at patient points (..., 3) mm: skull, brain, ventricles."""
    radius = np.linalg.norm(points / np.array([70.0, 90.0, 80.0]), axis=-1)
    value = np.where(radius < 1.0, 200.0, 0.0) + np.where(radius < 0.9, 400.0 * contrast, 0.0)
    ventricles = np.linalg.norm((points - [0, -5, 10]) / np.array([12.0, 25.0, 15.0]), axis=-1) < 1
    return value + np.where(ventricles, 600.0 * (1 - contrast), 0.0)


def _mr_slice(ds: Dataset, plane: str, matrix: int, spacing: float, position: np.ndarray,
              rng: np.random.Generator, contrast: float) -> None:
    row, column = (np.array(v, dtype=np.float64) for v in ORIENTATIONS[plane])
    j, i = np.mgrid[0:matrix, 0:matrix].astype(np.float64) * spacing
    points = position + i[..., None] * row + j[..., None] * column
    pixels = _head(points, contrast) + rng.normal(20.0, 8.0, (matrix, matrix))
    ds.ImageOrientationPatient = [*row, *column]
    ds.ImagePositionPatient = [round(float(v), 3) for v in position]
    ds.PixelSpacing = [spacing, spacing]
    _grey(ds, np.clip(pixels, 0, 4095), 12)


def write_mr_study(folder: Path, rng: np.random.Generator) -> str:
    study, frame = generate_uid(), generate_uid()
    for number, (description, plane, matrix, slices, spacing, step) in enumerate(MR_SERIES, start=1):
        series, contrast = generate_uid(), rng.uniform(0.2, 0.9)
        row, column = (np.array(v, dtype=np.float64) for v in ORIENTATIONS[plane])
        normal = np.cross(row, column)
        corner = -(row + column) * matrix * spacing / 2 - normal * slices * step / 2
        for k in range(slices):
            ds = _dataset(MRImageStorage, "MR", study, (series, number, description))
            ds.StudyDescription, ds.FrameOfReferenceUID = "MR BRAIN WITH CONTRAST", frame
            ds.PatientPosition, ds.PositionReferenceIndicator = "HFS", ""
            ds.InstanceNumber, ds.SliceThickness = k + 1, step
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
            ds.ScanOptions, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", 500, 15, 1
            ds.ImageType, ds.BodyPartExamined = ["ORIGINAL", "PRIMARY", "OTHER"], "BRAIN"
            _mr_slice(ds, plane, matrix, spacing, corner + normal * step * k, rng, contrast)
            _save(ds, folder / f"{number:02d}", f"MR_{k + 1:03d}.dcm")
    return study


def prepare(env: dict[str, str], var_dir: Path) -> Studies:
    """Write the three studies, import them, and return their gateway study UIDs."""
    rng = np.random.default_rng(13)
    out = Path(tempfile.mkdtemp(prefix="series-", dir=var_dir))
    originals = Studies(write_radiographs(out / "cr", rng), write_cine(out / "us", rng),
                        write_mr_study(out / "mr", rng), radiograph_file=out / "cr" / "CR_1.dcm")
    report = manage(env, "import_dicom", str(out), "--no-progress", "--jobs", "2")
    if "rejected 0" not in report:
        raise SystemExit(f"import rejected files:\n{report}")
    for imported in ("us", "mr"):
        shutil.rmtree(out / imported)
    query = ("import json; from imaging.identity.models import StudyIdentity as S; "
             "print(json.dumps({s.original_study_instance_uid: s.study_instance_uid "
             "for s in S.objects.all()}))")
    mapping = json.loads(manage(env, "shell", "--no-imports", "-c", query))
    return Studies(*(mapping[uid] for uid in (originals.radiograph, originals.cine, originals.mr)),
                   radiograph_file=out / "cr" / "CR_1.dcm")


# --- measuring --------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _spread(seconds: list[float]) -> dict[str, float]:
    return {"median_ms": _ms(statistics.median(seconds)), "p95_ms": _ms(percentile(seconds, 0.95)),
            "samples": len(seconds)}


def _judged(seconds: list[float], target_ms: float) -> dict:
    spread = _spread(seconds)
    return {**spread, "target_ms": target_ms, "pass": spread["median_ms"] <= target_ms,
            "p95_within_target": spread["p95_ms"] <= target_ms}


class Tracked(Viewer):
    """A viewer that remembers the newest frame sequence of each view it acknowledged."""

    def __init__(self, socket_) -> None:
        super().__init__(socket_)
        self.latest: dict[int, int] = {}

    async def ack(self, frame) -> None:
        self.latest[frame.view] = max(self.latest.get(frame.view, 0), frame.sequence)
        await super().ack(frame)

    async def resize(self, width: int, height: int) -> None:
        await self.send({"type": "resize", "view": 0, "width": width, "height": height})
        await self.frame(0, quality=1, after=self.latest.get(0, 0))
        await self.settle(0.3)


async def _opened(base: str, study: str, cookie: str) -> tuple[Tracked, dict, float]:
    """A fresh socket, its ``ready``, and the seconds from connecting to view 0's first frame."""
    started = time.perf_counter()
    viewer, ready = await Tracked.open(base, study, cookie)
    await asyncio.wait_for(viewer.frame(0), FRAME_TIMEOUT_S)
    return viewer, ready, time.perf_counter() - started


async def _show(viewer: Tracked, uid: str) -> tuple[float, float, list]:
    """Seconds from ``set series`` to its first frame and to its lossless still; the two frames."""
    after = viewer.latest.get(0, 0)
    started = time.perf_counter()
    await viewer.send({"type": "set", "view": 0, "name": "series", "value": uid})
    first = await asyncio.wait_for(viewer.frame(0, after=after), FRAME_TIMEOUT_S)
    first_s = time.perf_counter() - started
    still = first
    if first.quality != 1:
        still = await asyncio.wait_for(viewer.frame(0, quality=1, after=first.sequence - 1),
                                       FRAME_TIMEOUT_S)
    still_s = time.perf_counter() - started
    await viewer.settle(0.2)
    return first_s, still_s, [first, still]


def _looks(frames: list) -> dict:
    """Size, bytes and worker time (render + encode) of a frame: the first one and the still."""
    return {name: {"pixels": f"{frame.width}x{frame.height}", "encoding": frame.encoding.name,
                   "bytes": len(frame.image), "render_ms": frame.overlay.get("render_ms")}
            for name, frame in zip(("first_frame", "still"), frames, strict=True)}


async def radiograph(base: str, study: str, cookie: str, rounds: int) -> dict:
    viewer, ready, open_cold = await _opened(base, study, cookie)
    pa, lateral = (s["uid"] for s in sorted(ready["series"], key=lambda s: s["number"]))
    await viewer.resize(RADIOGRAPH_VIEWPORT, RADIOGRAPH_VIEWPORT)
    first, first_still, _ = await _show(viewer, lateral)
    firsts, stills = [], []
    for _ in range(rounds):
        for uid in (pa, lateral):
            frame_s, still_s, frames = await _show(viewer, uid)
            firsts.append(frame_s)
            stills.append(still_s)
    await viewer.socket.close()
    return {"pictures": "CR PA 2500x2500 and CR lateral 2500x2048, uint16",
            "viewport": f"{RADIOGRAPH_VIEWPORT}x{RADIOGRAPH_VIEWPORT}",
            "open_to_first_frame_cold_ms": _ms(open_cold),
            "open_to_first_frame_warm": _spread(await _reopen(base, study, cookie, rounds)),
            "set_series_first_time": {"first_frame_ms": _ms(first), "still_ms": _ms(first_still)},
            "set_series_warm_first_frame": _judged(firsts, RADIOGRAPH_TARGET_MS),
            "set_series_warm_still": _spread(stills), "lateral_frames": _looks(frames)}


async def _reopen(base: str, study: str, cookie: str, times: int) -> list[float]:
    seconds = []
    for _ in range(times):
        viewer, _, elapsed = await _opened(base, study, cookie)
        seconds.append(elapsed)
        await viewer.socket.close()
    return seconds


async def _play(viewer: Tracked, frame_s: float, frames: int) -> tuple[dict[int, float], dict[int, float]]:
    """Send ``frame`` inputs 0..frames-1 one per ``frame_s``; (send time, first-shown time) per index."""
    sent: dict[int, float] = {}
    shown: dict[int, float] = {}

    async def send_all() -> None:
        start = time.perf_counter()
        for index in range(frames):
            await asyncio.sleep(max(0.0, start + index * frame_s - time.perf_counter()))
            sent[index] = time.perf_counter()
            await viewer.send({"type": "input", "view": 0, "op": "frame", "index": index})

    async def receive_all() -> None:
        deadline = float("inf")
        while frames - 1 not in shown and time.perf_counter() < deadline:
            if len(sent) == frames:
                deadline = min(deadline, time.perf_counter() + 2.0)
            frame = await next_frame(viewer, 0.1)
            if frame is None:
                continue
            if frame.view == 0 and frame.quality == 0 and "slice" in frame.overlay:
                shown.setdefault(frame.overlay["slice"][0] - 1, time.perf_counter())

    await asyncio.gather(send_all(), receive_all())
    await viewer.settle(0.3)
    return sent, shown


def _rate(shown: dict[int, float]) -> float:
    times = sorted(shown.values())
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def cine(base: str, study: str, cookie: str, loops: int) -> dict:
    viewer, ready, _ = await _opened(base, study, cookie)
    series = ready["series"][0]
    frame_ms = float(series["frame_time_ms"])
    target = min(1000.0 / frame_ms, CINE_TARGET_FPS)
    await viewer.resize(CINE_COLUMNS, CINE_ROWS)
    rates, latencies, shown_total = [], [], 0
    for _ in range(loops):
        sent, shown = await _play(viewer, frame_ms / 1000, series["images"])
        rates.append(_rate(shown))
        latencies += [shown[i] - sent[i] for i in shown if i in sent]
        shown_total += len(shown)
    await viewer.socket.close()
    sent_total = loops * series["images"]
    keeps_up = min(rates) >= 0.95 * target and shown_total >= 0.95 * sent_total
    return {"series": f"US RGB {CINE_ROWS}x{CINE_COLUMNS}, {series['images']} frames",
            "kind": series["kind"], "frame_time_ms": frame_ms,
            "native_frames_per_second": round(1000.0 / frame_ms, 1), "target_frames_per_second": target,
            "viewport": f"{CINE_COLUMNS}x{CINE_ROWS}",
            "delivered_frames_per_second": [round(r, 1) for r in rates],
            "frames_sent": sent_total, "frames_shown": shown_total,
            "input_to_frame": _spread(latencies), "keeps_up": keeps_up, "pass": keeps_up}


async def _strip(base: str, study: str, cookie: str) -> tuple[float, float, list[int]]:
    """A fresh socket: seconds to ``ready``, seconds from ``thumbnails`` to the last one, sizes."""
    started = time.perf_counter()
    viewer, ready = await Tracked.open(base, study, cookie)
    wanted = {s["uid"] for s in ready["series"] if s.get("available", True)}
    asked = time.perf_counter()
    await viewer.send({"type": "thumbnails"})
    got, sizes = set(), []
    while got != wanted:
        body = await asyncio.wait_for(viewer.text("thumbnail"), FRAME_TIMEOUT_S)
        got.add(body["series"])
        sizes.append(len(body["image"]) * 3 // 4)
    done = time.perf_counter()
    await viewer.socket.close()
    return asked - started, done - asked, sizes


async def thumbnails(base: str, study: str, cookie: str, rounds: int) -> dict:
    rounds_run = [await _strip(base, study, cookie) for _ in range(rounds)]
    opens, strips = [r[0] for r in rounds_run], [r[1] for r in rounds_run]
    sizes = [size for r in rounds_run for size in r[2]]
    return {"series": len(rounds_run[0][2]), "first_round_ms": _ms(strips[0]),
            "first_round_open_to_ready_ms": _ms(opens[0]),
            "all_thumbnails": _judged(strips, THUMBNAILS_TARGET_MS),
            "open_to_ready": _spread(opens),
            "open_to_last_thumbnail": _spread([a + b for a, b in zip(opens, strips, strict=True)]),
            "thumbnail_bytes_median": int(statistics.median(sizes))}


async def measure(base: str, cookie: str, studies: Studies, rounds: int) -> dict:
    return {"radiograph": await radiograph(base, studies.radiograph, cookie, rounds),
            "cine": await cine(base, studies.cine, cookie, max(3, rounds // 3)),
            "thumbnails": await thumbnails(base, studies.mr, cookie, rounds)}


# --- peer -------------------------------------------------------------------------------------


def _timed_get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    request = urllib.request.Request(url, headers={"Accept": "image/jpeg"})  # noqa: S310
    body = urllib.request.urlopen(request, timeout=60).read()  # noqa: S310
    return time.perf_counter() - started, body


def _orthanc_rendered(orthanc, path: Path, rounds: int) -> dict:
    base = f"http://127.0.0.1:{orthanc.http_port}"
    upload = urllib.request.Request(base + "/instances", data=path.read_bytes(), method="POST")  # noqa: S310
    instance = json.loads(urllib.request.urlopen(upload, timeout=60).read())["ID"]  # noqa: S310
    query = (f"width={RADIOGRAPH_VIEWPORT}&height={RADIOGRAPH_VIEWPORT}&quality=80"
             "&window-center=2048&window-width=4096")
    url = f"{base}/instances/{instance}/rendered?{query}"
    first, body = _timed_get(url)
    warm = [_timed_get(url)[0] for _ in range(2 * rounds)]
    width, height = Image.open(io.BytesIO(body)).size
    return {"version": orthanc.version, "request": f"GET /instances/{{id}}/rendered?{query}",
            "first_ms": _ms(first), "warm": _spread(warm),
            "jpeg": {"pixels": f"{width}x{height}", "bytes": len(body)}}


def orthanc_peer(path: Path, rounds: int) -> dict:
    """Orthanc's rendered JPEG of the same radiograph, or why there is none."""
    from orthanc_side_by_side import Cleanup, orthanc_binary, start_orthanc

    try:
        orthanc_binary()
    except SystemExit as missing:
        return {"skipped": str(missing)}
    cleanup = Cleanup()
    directory = Path(tempfile.mkdtemp(prefix="series-orthanc-"))
    cleanup.directories.append(directory)
    (directory / "logs").mkdir()
    try:
        return _orthanc_rendered(start_orthanc(cleanup, directory, directory / "logs"), path, rounds)
    finally:
        cleanup.close()


def with_peer_ratio(figures: dict, peer: dict) -> dict:
    """Orthanc's figures beside ours: gateway warm median over Orthanc's warm median."""
    if "warm" in peer:
        ours = figures["radiograph"]
        theirs = peer["warm"]["median_ms"]
        peer["ratio_gateway_first_frame_to_orthanc"] = round(
            ours["set_series_warm_first_frame"]["median_ms"] / theirs, 2)
        peer["ratio_gateway_still_to_orthanc"] = round(ours["set_series_warm_still"]["median_ms"] / theirs, 2)
    return {**figures, "peer_orthanc_radiograph": peer}
