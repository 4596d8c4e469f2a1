"""Presentation states arrive like images and are applied to the images they reference.

The state is written by highdicom (an independent writer) against pydicom's
``MR_small.dcm``; both go through the import door, so their UIDs are replaced
and the reference must survive de-identification. Truth for the picture is
computed here from the stored image with pydicom: which image pixel the
displayed area puts in the viewport's corner, and its grey under the state's
window (the linear window function of PS3.3 C.11.2.1.2.1).
"""

from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from imaging import storage
from imaging.access import study_for_viewer
from imaging.models import Instance, Series, VolumeState
from imaging.services import IngestBatch, Reason, Status
from imaging.volumes import load_volume
from rendering.engine.core import RenderEngine
from rendering.session import SeriesInfo, ViewerSession
from rendering.volume import volume_describe
from tests.conftest import ZONES
from tests.sharing.factories import doctor, verified

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

VIEWPORT = 256
WINDOW = (600.0, 1200.0)


def _image() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def _presentation(image: pydicom.Dataset, *, top_left, bottom_right, mode="SCALE TO FIT",
                  magnification=None) -> pydicom.Dataset:
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[image], series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Test",
        manufacturer_model_name="Test", software_versions="1", device_serial_number="1",
        content_label="KEY_VIEW", content_description="zoomed on the lesion",
        voi_lut_transformations=[hd.pr.SoftcopyVOILUTTransformation(
            window_center=WINDOW[0], window_width=WINDOW[1])])
    area = state.DisplayedAreaSelectionSequence[0]
    area.DisplayedAreaTopLeftHandCorner = list(top_left)
    area.DisplayedAreaBottomRightHandCorner = list(bottom_right)
    area.PresentationSizeMode = mode
    if magnification is not None:
        area.PresentationPixelMagnificationRatio = magnification
    return state


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ingest(*datasets: pydicom.Dataset) -> list:
    batch = IngestBatch(actor="cli:test", door="import")
    outcomes = [batch.ingest(_bytes(ds)) for ds in datasets]
    batch.close()
    return outcomes


def _stored_image(series: Series) -> pydicom.Dataset:
    instance = Instance.objects.get(series=series)
    return pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))


def _session(image_series: Series, presentation: dict) -> tuple[ViewerSession, object]:
    volume = load_volume(image_series)
    geometry = {**volume_describe(volume), "presentation": presentation}
    info = SeriesInfo(image_series.series_instance_uid, "MR", "", geometry, images=1)
    session = ViewerSession(study_uid=image_series.study.study_instance_uid, series=[info])
    session.resize(0, VIEWPORT, VIEWPORT)
    return session, volume


def _opened(store, **area) -> tuple[Series, dict, pydicom.Dataset]:
    image = _image()
    outcomes = _ingest(image, _presentation(image, **area))
    assert [o.status for o in outcomes] == [Status.STORED, Status.STORED], outcomes
    image_series = Series.objects.get(pk=outcomes[0].series_id)
    state_series = Series.objects.get(pk=outcomes[1].series_id)
    assert state_series.volume_state == VolumeState.REFUSED
    assert "Grayscale Softcopy Presentation State" in state_series.volume_reason
    assert "applied to the images it references" in state_series.volume_reason
    study = study_for_viewer(principal=verified(doctor()),
                             study_uid=image_series.study.study_instance_uid)
    assert set(study.presentations) == {image_series.series_instance_uid}
    return image_series, study.presentations[image_series.series_instance_uid], _stored_image(image_series)


def test_displayed_area_fills_the_view_and_the_window_is_the_states(store):
    image_series, presentation, stored = _opened(store, top_left=(17, 9), bottom_right=(48, 40))
    assert presentation["window"] == list(WINDOW)
    assert presentation["label"] == "KEY_VIEW"
    session, volume = _session(image_series, presentation)
    layer = session.views[0].layers[0]
    assert (layer["window_center"], layer["window_width"]) == WINDOW
    frame = RenderEngine().pixels(session.state(0), {volume.series_id: volume})

    values = apply_modality_lut(stored.pixel_array, stored).astype(np.float64)
    scale = VIEWPORT // 32  # 32 x 32 image pixels scaled to fit 256 x 256
    for row, column in ((8, 16), (8 + 31, 16 + 31), (8 + 15, 16 + 7)):
        expected = np.clip((values[row, column] - (WINDOW[0] - 0.5)) / (WINDOW[1] - 1) + 0.5, 0, 1) * 255
        shown = frame[(row - 8) * scale + scale // 2, (column - 16) * scale + scale // 2]
        assert abs(float(np.mean(shown)) - expected) <= 2.5, (row, column, shown, expected)


def test_magnify_shows_image_pixels_at_the_ratio_and_reader_zoom_starts_from_it(store):
    image_series, presentation, stored = _opened(
        store, top_left=(1, 1), bottom_right=(64, 64), mode="MAGNIFY", magnification=2.0)
    session, _ = _session(image_series, presentation)
    plane_mm = float(stored.PixelSpacing[1]) / 2.0
    state = session.state(0)
    fitted_mm = 64 * float(stored.PixelSpacing[1]) / VIEWPORT
    assert state.camera2d.zoom == pytest.approx(fitted_mm / plane_mm)
    assert state.camera2d.pan_mm == pytest.approx((0.0, 0.0))

    from rendering.protocol import Input
    session.apply_input(Input(view=0, operation="zoom", arguments={"factor": 1.5}))
    assert session.state(0).camera2d.zoom == pytest.approx(1.5 * fitted_mm / plane_mm)
    session.apply_input(Input(view=0, operation="reset", arguments={}))
    assert session.state(0).camera2d.zoom == pytest.approx(fitted_mm / plane_mm)


def test_reader_pan_keeps_the_presented_zoom(store):
    image_series, presentation, _ = _opened(store, top_left=(1, 1), bottom_right=(32, 32))
    session, _ = _session(image_series, presentation)
    before = session.state(0).camera2d
    assert before.zoom == pytest.approx(2.0)
    from rendering.protocol import Input
    session.apply_input(Input(view=0, operation="pan", arguments={"dx": 0.0, "dy": 0.0}))
    after = session.state(0).camera2d
    assert after.zoom == pytest.approx(before.zoom)
    assert after.pan_mm == pytest.approx(before.pan_mm)


def test_without_a_state_the_image_opens_whole(store):
    image = _image()
    outcome, = _ingest(image)
    series = Series.objects.get(pk=outcome.series_id)
    study = study_for_viewer(principal=verified(doctor()), study_uid=series.study.study_instance_uid)
    assert study.presentations == {}
    volume = load_volume(series)
    info = SeriesInfo(series.series_instance_uid, "MR", "", volume_describe(volume), images=1)
    session = ViewerSession(study_uid=series.study.study_instance_uid, series=[info])
    assert session.state(0).camera2d.zoom == 1.0


def test_an_object_of_a_class_not_kept_is_refused_with_why(store):
    report = copy.deepcopy(_image())
    del report.PixelData
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"  # RT Plan
    outcome, = _ingest(report)
    assert outcome.status is Status.REJECTED
    assert outcome.reason is Reason.NOT_IMAGE
    assert "presentation states, structured reports" in outcome.detail
