"""Every image series of the public test corpora opens, in its own plane, looking as its header says.

The corpus is pydicom's and pydicom-data's test files, ingested through the
import door as a hospital's files would be. Truth is computed here from the
stored (de-identified) DICOM with pydicom alone: pixel size and the plane
from the header, colour through ``convert_color_space``/``apply_color_lut``,
values through ``apply_modality_lut``/``apply_voi_lut``.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

from imaging import storage
from imaging.models import Instance, Series, VolumeState
from imaging.services import IngestBatch, Status
from imaging.volumes import load_volume
from rendering.engine.core import RenderEngine
from rendering.viewstate import viewstate_from_dict
from rendering.volume import Volume, volume_describe
from tests.conftest import ZONES
from tests.dicom_truth import header_spacing

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

VIEWPORT = 256
ENGINE = RenderEngine()


def _ingest(paths: list[Path]) -> int:
    batch = IngestBatch(actor="cli:test", door="import")
    stored = sum(batch.ingest(Path(path).read_bytes()).status is Status.STORED for path in paths)
    batch.close()
    return stored


def _first_instance(series: Series) -> pydicom.Dataset:
    instance = Instance.objects.filter(series=series).order_by("instance_number", "id").first()
    return pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))


def _header_plane(ds: pydicom.Dataset) -> str:
    orientation = [float(v) for v in ds.get("ImageOrientationPatient") or []]
    if len(orientation) != 6 or "ImagePositionPatient" not in ds:
        return "image"
    normal = np.abs(np.cross(orientation[:3], orientation[3:]))
    return "oblique" if normal.max() < 0.8 else ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def _native(volume: Volume, *, width: int, height: int, low: float, high: float,
            palette: str = "grey", frame: int | None = None) -> np.ndarray:
    geometry = volume_describe(volume)
    focus = list(geometry["center"])
    if frame is not None:
        focus = [float(v) for v in volume.index_to_patient((frame, (volume.shape[1] - 1) / 2,
                                                             (volume.shape[2] - 1) / 2))]
    state = viewstate_from_dict({
        "view": "native", "width": width, "height": height, "focus_mm": focus, "quality": "interactive",
        "layers": [{"series_id": volume.series_id, "window_center": (low + high) / 2,
                    "window_width": high - low, "palette": palette}]})
    return ENGINE.pixels(state, {volume.series_id: volume})


def _content_box(image: np.ndarray) -> tuple[int, int]:
    rows, columns = np.nonzero(image)
    return int(columns.max() - columns.min() + 1), int(rows.max() - rows.min() + 1)


def _fitted(width_mm: float, height_mm: float) -> tuple[float, float]:
    scale = VIEWPORT / max(width_mm, height_mm)
    return width_mm * scale, height_mm * scale


def _check_series(series: Series) -> list[str]:
    problems = []
    ds = _first_instance(series)
    volume = load_volume(series)
    geometry = volume_describe(volume)
    header_plane = _header_plane(ds)
    if header_plane != "image" and geometry["plane"] not in (header_plane, "image"):
        problems.append(f"plane {geometry['plane']} where the header says {header_plane}")
    middle = volume.voxels[volume.shape[0] // 2]
    if volume.colour:
        shown = _native(volume, width=VIEWPORT, height=VIEWPORT, low=0, high=255)
        if middle.std() > 0 and shown.std() == 0:
            problems.append("blank colour frame")
        return problems
    lowest, highest = float(middle.min()), float(middle.max())
    spread = max(highest - lowest, 1.0)
    # every value inside the picture maps to at least mid-grey; outside it stays black
    shown = _native(volume, width=VIEWPORT, height=VIEWPORT, low=lowest - spread - 1, high=highest + 1)
    if highest > lowest and np.unique(shown[shown > 0]).size < 2:
        problems.append("blank frame")
    sizes = set(Instance.objects.filter(series=series).values_list("number_of_frames", flat=True))
    if len(sizes) == 1 and not series.volume_reason:
        row_mm, column_mm = header_spacing(ds)
        expected = _fitted(int(ds.Columns) * column_mm, int(ds.Rows) * row_mm)
        got = _content_box(shown)
        if abs(got[0] - expected[0]) > 2 or abs(got[1] - expected[1]) > 2:
            problems.append(f"shown {got[0]}x{got[1]} px where the header implies "
                            f"{expected[0]:.0f}x{expected[1]:.0f}")
    return problems


def test_every_series_the_import_accepts_opens_in_its_own_plane(store):
    corpus = [Path(p) for p in get_testdata_files("**/*") if os.path.isfile(p)]
    assert len(corpus) > 150, "pydicom-data is not installed"
    assert _ingest(corpus) > 80
    failures = {}
    checked = 0
    objects = segmentations = 0
    for series in Series.objects.order_by("id"):
        if series.volume_state == VolumeState.REFUSED and _holds_no_image(series):
            # The RT structure set of the corpus comes without its images: said, not shown.
            objects += 1
            assert "structure set" in series.volume_reason or "not an image" in series.volume_reason
            continue
        if series.modality == "SEG" and series.volume_state == VolumeState.READY:
            segmentations += 1
            failures.update({f"SEG {series.series_description}": problems
                             for problems in [_label_problems(series)] if problems})
            continue
        if series.volume_state != VolumeState.READY:
            failures[series.series_instance_uid] = [f"{series.volume_state}: {series.volume_reason}"]
            continue
        problems = _check_series(series)
        checked += 1
        if problems:
            failures[f"{series.modality} {series.series_description}"] = problems
    assert checked > 40
    assert objects >= 1, "the corpus's RT structure set is stored, and why it is not shown is said"
    assert segmentations >= 1, "the corpus's segmentations open as label volumes"
    assert failures == {}


def _label_problems(series: Series) -> list[str]:
    """A segmentation's label volume holds as many voxels as its frames segment (pydicom's pixels)."""
    (instance,) = Instance.objects.filter(series=series)
    ds = pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))
    segmented = int(np.count_nonzero(ds.pixel_array))
    labels = load_volume(series)
    shown = int(np.count_nonzero(labels.voxels))
    problems = [] if labels.labels else ["not a label volume"]
    if shown != segmented:
        problems.append(f"{shown} labelled voxels where the SEG has {segmented}")
    return problems


NOT_IMAGE_WORDS = ("Segmentation", "Structure Set", "Presentation State", "Spatial Registration", " SR ",
                   "Key Object Selection")


def _holds_no_image(series: Series) -> bool:
    """Every stored instance is, by pydicom's own UID dictionary, a non-image object."""
    names = [pydicom.uid.UID(str(pydicom.dcmread(io.BytesIO(storage.object_get(i.object_id)),
                                                 stop_before_pixels=True).SOPClassUID)).name
             for i in Instance.objects.filter(series=series)]
    return bool(names) and all(any(word in name for word in NOT_IMAGE_WORDS) for name in names)


def _one_series(name: str) -> tuple[pydicom.Dataset, Volume]:
    assert _ingest([Path(get_testdata_file(name))]) == 1
    series = Series.objects.get()
    assert series.volume_state == VolumeState.READY, series.volume_reason
    return _first_instance(series), load_volume(series)


def _raw(ds: pydicom.Dataset) -> np.ndarray:
    ds.pixel_array_options(as_rgb=False)
    pixels = ds.pixel_array
    return pixels[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels


@pytest.mark.parametrize("name", ["SC_ybr_full_uncompressed.dcm", "examples_ybr_color.dcm",
                                  "SC_rgb_jpeg_dcmd.dcm", "US1_UNCR.dcm"])
def test_colour_pictures_match_pydicoms_colour_conversion(store, name):
    ds, volume = _one_series(name)
    raw = _raw(ds)
    interpretation = str(ds.PhotometricInterpretation)
    expected = raw if interpretation == "RGB" else convert_color_space(raw, interpretation, "RGB")
    shown = _native(volume, width=int(ds.Columns), height=int(ds.Rows), low=0, high=255, frame=0)
    assert shown.shape == expected.shape
    difference = np.abs(shown.astype(int) - expected.astype(int))
    assert difference.max() <= 3 and difference.mean() < 1.0


@pytest.mark.parametrize("name", ["gdcm-US-ALOKA-16.dcm", "examples_palette.dcm"])
def test_palette_colour_pictures_match_their_lookup_tables(store, name):
    ds, volume = _one_series(name)
    expected = apply_color_lut(_raw(ds), ds)
    if int(ds.RedPaletteColorLookupTableDescriptor[2]) == 16:
        expected = expected >> 8
    row_mm, column_mm = header_spacing(ds)
    assert row_mm == pytest.approx(column_mm), "the 1:1 comparison needs square pixels"
    shown = _native(volume, width=int(ds.Columns), height=int(ds.Rows), low=0, high=255, frame=0)
    assert np.array_equal(shown, expected.astype(np.uint8))


def _windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    low = center - width / 2
    return np.clip((values - low) * 255.0 / width, 0, 255)


def test_monochrome1_shows_inverted_in_the_files_window(store):
    ds, volume = _one_series("RG1_UNCR.dcm")
    geometry = volume_describe(volume)
    assert geometry["invert"] is True and geometry["windows"][0] == [15000.0, 30000.0]
    values = apply_modality_lut(_raw(ds), ds).astype(np.float64)
    expected = 255 - _windowed(values, 15000.0, 30000.0)
    shown = _native(volume, width=int(ds.Columns), height=int(ds.Rows), low=0, high=30000,
                    palette="inverted", frame=0)
    assert np.abs(shown - expected).max() <= 1.0
    wide = _native(volume, width=512, height=128, low=0, high=30000, palette="inverted", frame=0)
    assert wide[:, :5].max() == 0 and wide[:, -5:].max() == 0, "a black surround, not white"


def test_modality_lut_gives_the_values_pydicom_gives(store):
    ds, volume = _one_series("mlut_18.dcm")
    values = apply_modality_lut(_raw(ds), ds).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    shown = _native(volume, width=int(ds.Columns), height=int(ds.Rows), low=low, high=high, frame=0)
    assert np.abs(shown - _windowed(values, (low + high) / 2, high - low)).max() <= 1.0


def test_a_voi_lut_becomes_the_window_pydicom_applies(store):
    ds, volume = _one_series("vlut_04.dcm")
    center, width = volume_describe(volume)["windows"][0]
    expected = apply_voi_lut(_raw(ds), ds).astype(np.float64) * 255.0 / 65535.0
    shown = _native(volume, width=int(ds.Columns), height=int(ds.Rows), low=center - width / 2,
                    high=center + width / 2, frame=0)
    assert np.abs(shown - expected).max() <= 2.0


def _whole_body_pair(tmp_path: Path) -> Path:
    """pydicom's whole-body bone scan as a two-detector object: frame 1 posterior, frame 2 anterior."""
    ds = pydicom.dcmread(get_testdata_file("JPEG2000_UNC.dcm"))
    anterior = ds.pixel_array.astype(np.int16)
    posterior = np.ascontiguousarray(anterior[:, ::-1] // 2)
    ds.NumberOfFrames = 2
    ds.NumberOfDetectors = 2
    ds.DetectorVector = [2, 1]
    ds.PixelData = np.stack([posterior, anterior]).tobytes()
    detectors = []
    for meaning, code in (("anterior", "G-A100"), ("posterior", "G-A101")):
        view = pydicom.Dataset()
        view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = code, "SRT", meaning
        detector = pydicom.Dataset()
        detector.ViewCodeSequence = [view]
        detectors.append(detector)
    ds.DetectorInformationSequence = detectors
    path = tmp_path / "whole_body_pair.dcm"
    ds.save_as(path)
    return path


def test_a_whole_body_scan_shows_anterior_and_posterior_side_by_side(store, tmp_path):
    assert _ingest([_whole_body_pair(tmp_path)]) == 1
    series = Series.objects.get()
    ds = _first_instance(series)
    frames = {str(detector.ViewCodeSequence[0].CodeMeaning): ds.pixel_array[n]
              for n, detector in enumerate(ds.DetectorInformationSequence[index - 1]
                                           for index in ds.DetectorVector)}
    volume = load_volume(series)
    rows, columns = frames["anterior"].shape
    assert volume.shape[0] == 1 and volume.shape[1] == rows and volume.shape[2] > 2 * columns
    picture = volume.voxels[0]
    assert np.array_equal(picture[:, :columns], frames["anterior"])
    assert np.array_equal(picture[:, -columns:], frames["posterior"])
    assert volume_describe(volume)["panels"] == ["anterior", "posterior"]


@pytest.mark.parametrize(("name", "unit"), [("CT_small.dcm", "HU"), ("MR_small.dcm", "raw"),
                                            ("JPEG2000_UNC.dcm", "CNTS"), ("US1_UNCR.dcm", "RGB")])
def test_the_value_under_the_cursor_names_the_series_unit(store, name, unit):
    _, volume = _one_series(name)
    geometry = volume_describe(volume)
    state = viewstate_from_dict({
        "view": "native", "width": VIEWPORT, "height": VIEWPORT, "focus_mm": geometry["center"],
        "layers": [{"series_id": volume.series_id, "window_center": 0, "window_width": 1}]})
    probed = ENGINE.probe(state, {volume.series_id: volume}, VIEWPORT / 2, VIEWPORT / 2)
    assert probed.values[0].unit == unit
    if unit not in {"RGB"}:
        middle = volume.voxels[volume.shape[0] // 2]
        assert middle.min() <= probed.values[0].value <= middle.max()


def _perfusion_map(tmp_path: Path) -> Path:
    """pydicom's CT slice with a Supplemental Palette Color LUT over stored values 1500..1755."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ramp = np.arange(256, dtype=np.uint16)
    for colour, table in (("Red", ramp * 257), ("Green", (255 - ramp) * 257), ("Blue", (ramp // 2) * 257)):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 1500, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", table.astype("<u2").tobytes())
    ds.PixelPresentation = "MIXED"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    path = tmp_path / "perfusion.dcm"
    ds.save_as(path)
    return path


def test_a_supplemental_palette_colours_its_range_and_leaves_the_rest_grey(store, tmp_path):
    assert _ingest([_perfusion_map(tmp_path)]) == 1
    series = Series.objects.get()
    assert series.volume_state == VolumeState.READY, series.volume_reason
    ds = _first_instance(series)
    stored = ds.pixel_array
    volume = load_volume(series)
    assert volume.colour
    shown = volume.voxels[0].astype(int)
    inside = (stored >= 1500) & (stored < 1756)
    assert inside.any() and (~inside).any()
    index = stored[inside].astype(int) - 1500
    expected = np.stack([index, 255 - index, index // 2], axis=-1)
    assert np.array_equal(shown[inside], expected)
    # PS3.3 C.11.2.1.2.1, the linear window function, onto 0..255
    values, centre, width = apply_modality_lut(stored, ds), float(ds.WindowCenter), float(ds.WindowWidth)
    grey = np.clip(((values - (centre - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    assert np.abs(shown[~inside][:, 0] - grey[~inside]).max() <= 2
    assert np.array_equal(shown[~inside][:, 0], shown[~inside][:, 2])


TIMES, DEPTH = 3, 4


def _dynamic_series(tmp_path: Path) -> list[Path]:
    """pydicom's CT slice as 3 time points x 4 positions, written in a scrambled order."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    orientation = np.array([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    series_uid = pydicom.uid.generate_uid()
    paths = []
    for t, z in [(t, z) for z in (2, 0, 3, 1) for t in (1, 2, 0)]:
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = series_uid
        position = np.array(template.ImagePositionPatient, float) + normal * 2 * z
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.InstanceNumber = 1 + 7 * z + 11 * t  # no order to lean on
        ds.TemporalPositionIdentifier = t + 1
        ds.FrameReferenceTime = 5000 + 60000 * t  # ms; a minute per time point
        ds.PixelData = (template.pixel_array + 100 * t + 10 * z).astype(np.int16).tobytes()
        paths.append(tmp_path / f"t{t}z{z}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_a_dynamic_series_opens_as_one_volume_per_time_point(store, tmp_path):
    assert _ingest(_dynamic_series(tmp_path)) == TIMES * DEPTH
    series = Series.objects.get()
    assert series.volume_state == VolumeState.READY, series.volume_reason
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = base.pixel_array.astype(np.float64) * float(base.RescaleSlope) + float(base.RescaleIntercept)
    volume = load_volume(series)
    described = volume_describe(volume)
    assert described["kind"] == "dynamic" and described["time_points"] == TIMES
    assert described["shape"] == [DEPTH, *hu.shape] and described["mpr"] is True
    assert volume.presentation.time_points_s == (0.0, 60.0, 120.0)
    for t in range(TIMES):
        for z in range(DEPTH):
            assert np.array_equal(volume.at_time(t).voxels[z], hu + 100 * t + 10 * z)
    point = volume.at_time(0).index_to_patient((2, 20, 30))
    state = viewstate_from_dict({
        "view": "axial", "width": VIEWPORT, "height": VIEWPORT, "focus_mm": [float(v) for v in point],
        "layers": [{"series_id": volume.series_id, "window_center": 0, "window_width": 1, "time_point": 2}]})
    frame = ENGINE.render(state, {volume.series_id: volume})
    assert frame.overlay.time_point == (3, TIMES)
    x, y = frame.overlay.crosshair_px
    assert ENGINE.probe(state, {volume.series_id: volume}, x, y).values[0].value == hu[20, 30] + 200 + 20


def test_an_rt_dose_grid_is_a_volume_along_its_frame_offsets_in_its_dose_units(store):
    ds, volume = _one_series("rtdose.dcm")
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    described = volume_describe(volume)
    assert described["kind"] == "volume" and described["plane"] == "axial"
    assert volume.shape[0] == len(offsets) == int(ds.NumberOfFrames)
    assert volume.spacing[0] == pytest.approx(offsets[1] - offsets[0])
    corner = [float(v) for v in ds.ImagePositionPatient]
    assert np.allclose(volume.index_to_patient((len(offsets) - 1, 0, 0)),
                       [corner[0], corner[1], corner[2] + offsets[-1]])
    assert np.allclose(volume.voxels, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    assert volume.presentation.units == str(ds.DoseUnits)


def test_an_nm_dynamic_acquisition_plays_at_its_frame_duration():
    from pydicom.dataset import Dataset

    from imaging.presentation import frame_time_ms

    phase = Dataset()
    phase.ActualFrameDuration = 500
    ds = Dataset()
    ds.Modality = "NM"
    ds.PhaseInformationSequence = [phase]
    assert frame_time_ms(ds) == 500.0
    ds.FrameTime = 40
    assert frame_time_ms(ds) == 40.0, "the header's own frame time comes first"
