"""VOI LUTs and VOILUTFunction applied as PS3.3 C.11.2 says, checked against pydicom and the formulas.

Truth here never comes from the gateway's code: a VOI LUT's grey is pydicom's
``apply_voi_lut`` (after ``apply_modality_lut``) scaled from the LUT's bit depth
to 0..255, and the SIGMOID and LINEAR_EXACT windows are the standard's formulas
written out below.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.image_stacks import images_from_datasets
from imaging.presentation import display_facts, voi_presets, window_presets
from imaging.volumes import volume_assemble, volume_from_datasets
from rendering.engine.core import RenderEngine
from rendering.engine.palettes import LUTS
from rendering.viewstate import Palette, viewstate_from_dict
from rendering.volume import Volume, presentation_from_dict, volume_describe

ENGINE = RenderEngine()
ROWS, COLUMNS = 96, 128


def _stored(seed: int = 0) -> np.ndarray:
    """12-bit stored values over the whole range: a ramp with noise, so every LUT region is hit."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 4095, ROWS * COLUMNS).reshape(ROWS, COLUMNS)
    return np.clip(ramp + rng.normal(0, 40, ramp.shape), 0, 4095).astype(np.uint16)


def _gamma_lut(count: int, bits: int) -> list[int]:
    top = 2**bits - 1
    return [round(top * (i / (count - 1)) ** 0.45) for i in range(count)]


def _logistic_lut(count: int, bits: int) -> list[int]:
    top = 2**bits - 1
    x = np.linspace(-1, 1, count)
    return [int(v) for v in np.rint(top / (1 + np.exp(-6 * x)))]


def _dataset(*, stored: np.ndarray | None = None, photometric: str = "MONOCHROME2",
             slice_z: float | None = None, series: str = "1.2.826.0.1.3680043.8.498.1",
             **header) -> Dataset:
    """A 12-bit greyscale image (CT-like rescale to -1024..3071) with whatever VOI header is given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [1, 1]
    if slice_z is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, slice_z]
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
        ds.InstanceNumber = int(slice_z) + 1
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.PixelData = (_stored() if stored is None else stored).astype("<u2").tobytes()
    return ds


def _voi_lut(data: list[int], *, first: int, bits: int, explanation: str = "") -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data) if len(data) < 65536 else 0, first, bits]
    item.add_new("LUTData", "US", data)
    if explanation:
        item.LUTExplanation = explanation
    return item


def _with_luts(*items: Dataset, **header) -> Dataset:
    return _dataset(VOILUTSequence=Sequence(list(items)), **header)


def _native(volume: Volume, *, voi: int | None, frame: int = 0, palette: str = "grey",
            window: tuple[float, float] | None = None) -> np.ndarray:
    """The engine's 8-bit image of one frame, one screen pixel per image pixel."""
    geometry = volume_describe(volume)
    center, width = window or geometry["windows"][voi or 0]
    focus = [float(v) for v in volume.index_to_patient((frame, (volume.shape[1] - 1) / 2,
                                                         (volume.shape[2] - 1) / 2))]
    state = viewstate_from_dict({
        "view": "native", "width": volume.shape[2], "height": volume.shape[1], "focus_mm": focus,
        "quality": "interactive",
        "layers": [{"series_id": volume.series_id, "window_center": center, "window_width": width,
                    "palette": palette, "voi": voi}]})
    return ENGINE.pixels(state, {volume.series_id: volume})


def _pydicom_grey(ds: Dataset, index: int = 0) -> np.ndarray:
    """pydicom's VOI LUT output for the file's LUT ``index``, from its bit depth onto 0..255."""
    values = apply_modality_lut(ds.pixel_array, ds)
    assert np.array_equal(values, np.rint(values)), "whole numbers: pydicom's table index is exact"
    count, first, bits = (int(v) for v in ds.VOILUTSequence[index].LUTDescriptor)
    # C.11.2.1.1 maps values outside the input range to the end entries; clipping them first
    # changes nothing there and keeps pydicom's 8-bit index array from wrapping around.
    inside = np.clip(values, first, first + (count or 65536) - 1).astype(np.int64)
    mapped = apply_voi_lut(inside, ds, index=index)
    return mapped.astype(np.float64) * 255.0 / (2**bits - 1)


def _assert_close(shown: np.ndarray, expected: np.ndarray, tolerance: float = 1.0) -> None:
    difference = np.abs(shown.astype(np.float64) - expected)
    off = int((difference > tolerance).sum())
    assert difference.max() <= tolerance, f"{off} pixels off, max {difference.max()}"


# --- VOI LUTs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("lut", "first", "bits"), [
    (_gamma_lut(2048, 16), 24, 16),      # 12-bit input range, clamped below and above
    (_gamma_lut(4096, 12), -1024, 12),   # the whole rescaled range, 12-bit entries
    (_logistic_lut(256, 8), 900, 8),     # 8-bit entries
])
def test_a_curved_voi_lut_shows_what_pydicom_applies(lut, first, bits):
    ds = _with_luts(_voi_lut(lut, first=first, bits=bits))
    volume, _ = images_from_datasets([ds])
    expected = _pydicom_grey(ds)
    assert np.ptp(expected) > 200, "the test image spans the LUT"
    _assert_close(_native(volume, voi=0), expected)
    linear = _native(volume, voi=None)
    assert np.abs(linear.astype(float) - expected).max() > 20, "a curved LUT is not a linear window"


def test_pydicoms_own_voi_lut_file_shows_what_pydicom_applies():
    ds = pydicom.dcmread(get_testdata_file("vlut_04.dcm"))
    volume, _ = images_from_datasets([ds])
    assert volume_describe(volume)["vois"] == [{"name": "LUT 1", "function": "LUT"}]
    _assert_close(_native(volume, voi=0), _pydicom_grey(ds))


def test_a_longer_table_is_resampled_and_still_matches():
    lut = _logistic_lut(6000, 16)
    ds = _with_luts(_voi_lut(lut, first=-1024, bits=16))
    kept = voi_presets(ds)[0]["lut"]
    assert kept["descriptor"] == [6000, -1024, 16] and len(kept["data"]) == 4096
    volume, _ = images_from_datasets([ds])
    _assert_close(_native(volume, voi=0), _pydicom_grey(ds))


def test_each_lut_of_several_is_kept_named_and_chosen_by_index():
    first = _voi_lut(_gamma_lut(4096, 16), first=-1024, bits=16, explanation="SOFT")
    second = _voi_lut(_logistic_lut(2000, 16), first=0, bits=16)
    ds = _with_luts(first, second, WindowCenter=[40], WindowWidth=[400],
                    WindowCenterWidthExplanation=["ABDOMEN"])
    facts = display_facts(ds)
    assert facts["windows"] == window_presets(ds) == [[40.0, 400.0], [1024.0, 4096.0], [1000.0, 2000.0]]
    assert [p["explanation"] for p in facts["vois"]] == ["ABDOMEN", "SOFT", ""]
    assert [p["lut"]["descriptor"] for p in facts["vois"][1:]] == [[4096, -1024, 16], [2000, 0, 16]]
    volume, _ = images_from_datasets([ds])
    assert [v["name"] for v in volume_describe(volume)["vois"]] == ["ABDOMEN", "SOFT", "LUT 2"]
    _assert_close(_native(volume, voi=1), _pydicom_grey(ds, 0))
    _assert_close(_native(volume, voi=2), _pydicom_grey(ds, 1))


def test_an_inverted_picture_shows_the_lut_inverted():
    ds = _with_luts(_voi_lut(_gamma_lut(2048, 16), first=24, bits=16), photometric="MONOCHROME1")
    volume, _ = images_from_datasets([ds])
    assert volume.presentation.invert
    _assert_close(_native(volume, voi=0, palette="inverted"), 255.0 - _pydicom_grey(ds))


def test_a_volume_maps_every_slice_through_the_lut_in_any_plane():
    lut = _voi_lut(_gamma_lut(2048, 16), first=24, bits=16)
    datasets = [_with_luts(lut, stored=_stored(seed=z), slice_z=float(z)) for z in range(4)]
    volume, _ = volume_from_datasets(datasets)
    assert volume.presentation.kind == "volume" and volume.presentation.vois[0].function == "LUT"
    for z in (0, 3):
        _assert_close(_native(volume, voi=0, frame=z), _pydicom_grey(datasets[z]))
    center, width = volume_describe(volume)["windows"][0]
    coronal = ENGINE.pixels(viewstate_from_dict({
        "view": "coronal", "width": 128, "height": 128, "quality": "interactive",
        "layers": [{"series_id": volume.series_id, "window_center": center, "window_width": width,
                    "voi": 0}]}), {volume.series_id: volume})
    table = np.rint(np.asarray(_gamma_lut(2048, 16)) * 255 / 65535)
    assert set(np.unique(coronal)) <= set(table.astype(int)) | {0}, "a reformat shows only LUT entries"


def test_a_fused_layer_takes_its_colours_through_the_lut():
    ds = _with_luts(_voi_lut(_gamma_lut(2048, 16), first=24, bits=16))
    volume, _ = images_from_datasets([ds])
    center, width = volume_describe(volume)["windows"][0]
    layer = {"series_id": volume.series_id, "window_center": center, "window_width": width, "voi": 0}
    state = viewstate_from_dict({
        "view": "native", "width": COLUMNS, "height": ROWS, "quality": "interactive",
        "layers": [{**layer, "palette": "hot_iron"}]})
    # a coloured layer goes the palette path, not the single-grey one
    shown = ENGINE.pixels(state, {volume.series_id: volume})
    expected = LUTS[Palette.HOT_IRON][np.rint(_pydicom_grey(ds)).astype(int)]
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 4  # one index of hot iron


# --- VOILUTFunction -----------------------------------------------------------------------------


def _values(ds: Dataset) -> np.ndarray:
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64)


def test_a_sigmoid_window_follows_the_standards_formula():
    center, width = 1000.0, 1500.0
    ds = _dataset(WindowCenter=center, WindowWidth=width, VOILUTFunction="SIGMOID")
    volume, _ = images_from_datasets([ds])
    assert volume_describe(volume)["vois"] == [{"name": "sigmoid", "function": "SIGMOID"}]
    # PS3.3 C.11.2.1.3.1: y = (ymax - ymin) / (1 + exp(-4 (x - c) / w)) + ymin, onto 0..255
    expected = 255.0 / (1.0 + np.exp(-4.0 * (_values(ds) - center) / width))
    _assert_close(_native(volume, voi=0), expected)
    assert np.abs(_native(volume, voi=None).astype(float) - expected).max() > 20


def test_a_linear_exact_window_follows_the_standards_formula():
    center, width = 100.0, 4.0  # narrow: the LINEAR function's half-value offsets would show
    ds = _dataset(WindowCenter=center, WindowWidth=width, VOILUTFunction="LINEAR_EXACT")
    volume, _ = images_from_datasets([ds])
    assert volume.presentation.vois[0].function == "LINEAR_EXACT"
    x = _values(ds)
    # PS3.3 C.11.2.1.3.2: x <= c - w/2 -> ymin; x > c + w/2 -> ymax;
    # else y = ((x - c) / w + 0.5) * (ymax - ymin) + ymin
    expected = np.where(x <= center - width / 2, 0.0,
                        np.where(x > center + width / 2, 255.0, ((x - center) / width + 0.5) * 255.0))
    _assert_close(_native(volume, voi=0), expected)


def test_an_unknown_voi_function_is_linear():
    ds = _dataset(WindowCenter=100, WindowWidth=200, VOILUTFunction="CURVY")
    assert display_facts(ds)["voi_function"] == "LINEAR"


# --- volumes built before VOI LUTs were kept ------------------------------------------------------


def test_a_display_dict_built_before_voi_luts_renders_as_it_did():
    ds = _with_luts(_voi_lut(_gamma_lut(2048, 16), first=24, bits=16),
                    WindowCenter=1000, WindowWidth=1500, VOILUTFunction="SIGMOID")
    volume, _ = images_from_datasets([ds])
    old = {key: value for key, value in volume.display.items() if key not in {"vois", "voi_function"}}
    before = volume_assemble(voxels=np.asarray(volume.voxels), origin=volume.origin,
                             spacing_ijk=volume.spacing[::-1], direction=volume.direction,
                             display=old, series_id=volume.series_id)
    assert [v.function for v in before.presentation.vois] == ["LINEAR", "LINEAR"]
    assert presentation_from_dict(old).windows == volume.presentation.windows
    for voi in (0, 1):
        linear = _native(before, voi=None, window=volume.presentation.windows[voi])
        assert np.array_equal(_native(before, voi=voi), linear), "an old volume's presets stay linear windows"
        assert not np.array_equal(_native(volume, voi=voi), linear), "a new volume applies them exactly"
