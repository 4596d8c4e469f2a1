"""Segmentations over the viewer socket: real session, the ingested phantom, real render workers.

A doctor starts a segmentation on the PET, grows the planted lesion at 41 % of its maximum,
brushes a second segment, undoes and redoes, restyles, and stores it as a DICOM SEG that
dicom3tools' ``dciodvfy`` accepts and highdicom reads back to the voxels the statistics
counted. The lesion's SUVmax comes from the phantom's truth file; a nurse sees and may not edit.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from channels.db import database_sync_to_async

from gateway.audit.models import AuditEvent
from imaging import storage
from imaging.models import Instance, Series
from imaging.phantom import phantom_write
from imaging.segmentation_dicom import NOT_FROM_A_MODEL
from imaging.segmentations import segmentation_edit
from tests.conftest import ZONES
from tests.rendering.test_consumer import _next, _open, _pixel_of, _rgb, _stills, _until
from tests.stores import phantom_study

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


@pytest.fixture(scope="module")
def pet_ct_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("segmentation-phantom")
    return out, phantom_write(out_dir=out, slices=40, patients=1, seed=3)


@pytest.fixture
def study(pet_ct_files, keys_dir, tmp_path, settings):
    """The phantom PET/CT ingested into a fresh store, with fresh render workers around the test."""
    out, truth = pet_ct_files
    with phantom_study(out, truth, settings, tmp_path / "objects") as ingested:
        yield ingested


def _message(kind: str):
    return lambda m: isinstance(m, dict) and m["type"] in (kind, "error")


def _pet_view(ready: dict) -> int:
    modality = {s["uid"]: s["modality"] for s in ready["series"]}
    return next(
        n
        for n, view in enumerate(ready["views"])
        if view["kind"] != "3d" and modality[view["layers"][0]] == "PT"
    )


async def _opened(communicator) -> tuple[dict, dict, dict]:
    """(ready, segmentations, a frame of every view) as a session opens: they arrive interleaved."""
    ready = await _next(communicator)
    listed, frames = None, {}
    while listed is None or len(frames) < len(ready["views"]):
        item = await _next(communicator)
        if isinstance(item, dict):
            assert item["type"] != "error", item
            listed = item if item["type"] == "segmentations" else listed
            continue
        frames[item.view] = item
        await communicator.send_json_to({"type": "ack", "view": item.view, "seq": item.sequence})
    return ready, listed, frames


async def _at(communicator, frame, point_mm) -> tuple[int, int, object]:
    """The view of ``frame`` scrolled to the slice of ``point_mm`` and focused there: the pixel and
    the still frame there."""
    view = frame.view
    await communicator.send_json_to(
        {
            "type": "input",
            "view": view,
            "op": "scroll",
            "delta": round((point_mm[2] - frame.overlay["position"]) / 4.0),
        }
    )
    frame = await _until(
        communicator,
        lambda f: (
            not isinstance(f, dict) and f.view == view and abs(f.overlay["position"] - point_mm[2]) <= 2.01
        ),
    )
    x, y = _pixel_of(frame, point_mm)
    await communicator.send_json_to({"type": "input", "view": view, "op": "focus", "x": x, "y": y})
    still = (await _stills(communicator, {view}, at=(x, y)))[view]
    x, y = (round(v) for v in still.overlay["crosshair"])
    return x, y, still


async def _still_where(communicator, view: int, at: tuple[int, int], wanted, stills: int = 6):
    """The first of the next ``stills`` stills of ``view`` at ``at`` whose picture is ``wanted``
    (frames rendered before an edit may still be on their way), or None."""
    for _ in range(stills):
        still = (await _stills(communicator, {view}, at=at))[view]
        if wanted(_rgb(still).astype(int)):
            return still
    return None


async def _answer(communicator, kind: str) -> dict:
    answer = await _until(communicator, _message(kind))
    assert answer["type"] == kind, answer
    return answer


async def test_a_doctor_segments_the_lesion_edits_undoes_and_stores_a_seg(client, signed_in, study, tmp_path):
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["suv_max"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready, listed, frames = await _opened(communicator)
    assert listed["may_edit"] is True and listed["segmentations"] == []
    view = _pet_view(ready)
    x, y, still = await _at(communicator, frames[view], lesion["center_mm"])
    before = _rgb(still)[y, x].astype(int)

    await communicator.send_json_to({"type": "seg_new", "view": view, "label": "hot lesions"})
    opened = (await _answer(communicator, "segmentation"))["segmentation"]
    assert (opened["revision"], opened["statistics"]["segments"]) == (0, {})
    await communicator.send_json_to(
        {"type": "seg_segment", "segment": 1, "colour": "#0000ff", "opacity": 1.0}
    )
    await _answer(communicator, "segmentation")
    await communicator.send_json_to(
        {
            "type": "seg_edit",
            "view": view,
            "tool": "suv_fraction",
            "segment": 1,
            "points": [[x, y]],
            "fraction": 0.41,
            "box_mm": lesion["radius_mm"] + 8,
        }
    )
    grown = (await _answer(communicator, "segmentation"))["segmentation"]
    first = grown["statistics"]["segments"]["1"]
    assert grown["statistics"]["unit"] == "SUV" and grown["revision"] == 1 and grown["can_undo"]
    assert first["max"] == pytest.approx(lesion["suv_max"], rel=0.01)
    assert 0 < first["volume_ml"] < 4 / 3 * np.pi * (lesion["radius_mm"] + 8) ** 3 / 1000
    shown = await _still_where(communicator, view, (x, y), lambda rgb: rgb[y, x, 2] - before[2] > 60)
    assert shown is not None, f"no still of view {view} shows the segment's blue over the lesion ({before})"

    await communicator.send_json_to({"type": "seg_segment", "segment": 2, "name": "marked"})
    await _answer(communicator, "segmentation")
    await communicator.send_json_to(
        {
            "type": "seg_edit",
            "view": view,
            "tool": "brush",
            "segment": 2,
            "points": [[x + 40, y + 40]],
            "radius_mm": 10,
            "planar": True,
        }
    )
    brushed = (await _answer(communicator, "segmentation"))["segmentation"]
    assert set(brushed["statistics"]["segments"]) == {"1", "2"}
    await communicator.send_json_to({"type": "seg_undo"})
    undone = (await _answer(communicator, "segmentation"))["segmentation"]
    assert set(undone["statistics"]["segments"]) == {"1"} and undone["can_redo"]
    await communicator.send_json_to({"type": "seg_redo"})
    redone = (await _answer(communicator, "segmentation"))["segmentation"]
    assert redone["statistics"]["segments"] == brushed["statistics"]["segments"]
    await communicator.send_json_to(
        {
            "type": "seg_edit",
            "view": view,
            "tool": "grow",
            "segment": 1,
            "points": [[-4000, -4000]],
            "low": 0.0,
            "high": 1.0,
        }
    )
    failed = await _until(communicator, _message("segmentation"))
    assert failed["type"] == "error" and failed["of"] == "seg_edit", failed

    await communicator.send_json_to({"type": "seg_store"})
    stored = await _answer(communicator, "segmentation_stored")
    assert (stored["segments"], stored["frames"] > 0) == (2, True)
    await communicator.send_json_to({"type": "seg_delete", "segmentation": redone["id"]})
    assert (await _answer(communicator, "segmentation"))["segmentation"] is None
    assert (await _answer(communicator, "segmentations"))["segmentations"] == []
    await communicator.disconnect()

    seg = await database_sync_to_async(_stored_seg)(stored["seg_series"])
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    _valid(path)
    read = hd.seg.Segmentation.from_dataset(seg)
    counts = {
        number: int(np.count_nonzero(read.get_volume(segment_numbers=[number]).array)) for number in (1, 2)
    }
    assert counts == {
        1: redone["statistics"]["segments"]["1"]["voxels"],
        2: redone["statistics"]["segments"]["2"]["voxels"],
    }
    actions = await database_sync_to_async(
        lambda: sorted(
            AuditEvent.objects.filter(actor=doctor.username, action__startswith="segmentation.").values_list(
                "action", "outcome"
            )
        )
    )()
    assert actions == [
        ("segmentation.create", "success"),
        ("segmentation.delete", "success"),
        ("segmentation.store", "success"),
    ]


def _stored_seg(series_uid: str) -> pydicom.Dataset:
    instance = Instance.objects.get(series=Series.objects.get(series_instance_uid=series_uid))
    return pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))


def _valid(path) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not on PATH: make sysdeps installs dicom3tools")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], run.stdout + run.stderr


async def test_a_nurse_sees_segmentations_and_may_not_edit_them(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor", username="doctor-seg")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready, _, _ = await _opened(communicator)
    await communicator.send_json_to({"type": "seg_new", "view": _pet_view(ready), "label": "to be seen"})
    created = (await _answer(communicator, "segmentation"))["segmentation"]
    await communicator.disconnect()

    await database_sync_to_async(signed_in)("nurse")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready, listed, _ = await _opened(communicator)
    assert listed["may_edit"] is False and [s["id"] for s in listed["segmentations"]] == [created["id"]]
    await communicator.send_json_to({"type": "seg_open", "segmentation": created["id"]})
    opened = (await _answer(communicator, "segmentation"))["segmentation"]
    assert opened["editable"] is False
    for message in (
        {"type": "seg_edit", "view": 0, "tool": "clear", "segment": 1},
        {"type": "seg_delete", "segmentation": created["id"]},
        {"type": "seg_undo"},
        {"type": "seg_new", "view": _pet_view(ready), "label": "mine"},
        {"type": "seg_store"},
    ):
        await communicator.send_json_to(message)
        refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
        assert (refused["code"], refused["of"]) == ("refused", message["type"]), refused

    # An edit no worker can replay (recorded behind the socket's back): opening it is an error, not the end.
    await database_sync_to_async(segmentation_edit)(
        created["id"],
        {"tool": "grow", "segment": 1, "seeds_mm": [[9999.0, 0.0, 0.0]], "low": 0.0, "high": 1.0},
        author="elsewhere",
    )
    await communicator.send_json_to({"type": "seg_open", "segmentation": created["id"]})
    failed = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert (failed["code"], failed["of"]) == ("segment_failed", "seg_open") and "outside" in failed["message"]
    await communicator.send_json_to({"type": "seg_close"})
    assert (await _answer(communicator, "segmentation"))["segmentation"] is None
    await communicator.disconnect()


def _pet_values(folder) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The PET in Bq/ml and its (z, y, x) spacing, from the DICOM files with pydicom."""
    headers = sorted(
        (pydicom.dcmread(path) for path in folder.glob("*.dcm")),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    values = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in headers]
    )
    step = float(headers[1].ImagePositionPatient[2]) - float(headers[0].ImagePositionPatient[2])
    return values, (step, *(float(v) for v in headers[0].PixelSpacing))


async def _model_registered(folder, model: bytes, spacing) -> Path:
    """The "hot spots" model (argmax, label 1 "hot"), registered by IT on 8 x 32 x 32 tiles at
    ``spacing``; its file."""
    from django.core.management import call_command

    model_file = folder / "hot.onnx"
    model_file.write_bytes(model)
    manifest = {
        "name": "hot spots",
        "version": "1",
        "input_size": [8, 32, 32],
        "input_spacing_mm": list(spacing),
        "normalisation": {"kind": "none"},
        "output": {"kind": "argmax", "labels": [{"value": 1, "name": "hot", "colour": "#00FF00"}]},
        "provenance": {"author": "the test"},
    }
    (folder / "hot.json").write_text(json.dumps(manifest))
    await database_sync_to_async(call_command)(
        "model_register", str(model_file), manifest=str(folder / "hot.json"), operator="it.admin"
    )
    return model_file


async def _model_run(communicator, model: int) -> dict:
    """The open segmentation after ``model`` ran on it (every tile done)."""
    await communicator.send_json_to({"type": "seg_model", "model": model})
    ended = await _until(
        communicator,
        lambda m: isinstance(m, dict) and m["type"] == "segmentation_job" and m["state"] != "running",
    )
    assert ended["state"] == "done" and ended["done"] == ended["total"] > 1, ended  # tiles the worker wrote
    return (await _answer(communicator, "segmentation"))["segmentation"]


async def test_a_registered_model_becomes_segments_and_a_tampered_one_is_refused(
    client, signed_in, study, pet_ct_files, tmp_path
):
    from tests.rendering.test_onnx_models import above_model

    record, truth = study
    values, spacing = _pet_values(pet_ct_files[0] / truth["folder"] / "PT")
    threshold = float(np.percentile(values, 99.5))
    model_file = await _model_registered(tmp_path, above_model(threshold), spacing)

    await database_sync_to_async(signed_in)("doctor")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready, listed, _ = await _opened(communicator)
    (offered,) = listed["models"]
    assert (offered["name"], offered["labels"]) == ("hot spots", ["hot"])
    await communicator.send_json_to({"type": "seg_new", "view": _pet_view(ready), "label": "model"})
    await _answer(communicator, "segmentation")
    result = await _model_run(communicator, offered["id"])
    found = next(s for s in result["segments"] if s["name"].startswith("hot"))
    assert found["colour"] == "#00ff00"
    assert result["statistics"]["segments"][str(found["number"])]["voxels"] == int(
        np.count_nonzero(values > threshold)
    )

    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF
    model_file.write_bytes(bytes(data))
    await communicator.send_json_to({"type": "seg_model", "model": offered["id"]})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert (refused["code"], refused["of"]) == ("model_failed", "seg_model") and "SHA-256" in refused[
        "message"
    ]
    await communicator.disconnect()
    runs = await database_sync_to_async(
        lambda: list(
            AuditEvent.objects.filter(action="segmentation.model")
            .values_list("outcome", flat=True)
            .order_by("sequence")
        )
    )()
    assert runs == ["success", "failure"]
    registered = await database_sync_to_async(
        lambda: AuditEvent.objects.filter(action="admin.model").count()
    )()
    assert registered == 1


def _stored_pet() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(SOP instance UIDs, values in Bq/ml, voxel centres in patient mm [k, j, i, 3]) of the PET
    as the gateway stored it, read with pydicom slice by slice along z."""
    instances = Instance.objects.filter(series__modality="PT")
    headers = sorted(
        (pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id))) for instance in instances),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    values = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in headers]
    )
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    row_step, column_step = (float(v) for v in headers[0].PixelSpacing)
    cosines = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    j, i = np.mgrid[0:rows, 0:columns].astype(np.float64)
    plane = i[..., None] * column_step * cosines[:3] + j[..., None] * row_step * cosines[3:]
    centres = np.stack([np.asarray(ds.ImagePositionPatient, dtype=np.float64) + plane for ds in headers])
    return [str(ds.SOPInstanceUID) for ds in headers], values, centres


def _segment_frames(seg: pydicom.Dataset, uids: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Each segment's stored values (fractions unscaled) by its label, on the PET's slices in
    ``uids`` order; a slice the SEG does not reference holds none."""
    read = hd.seg.Segmentation.from_dataset(seg)
    referenced = [uid for uid in uids if uid in {str(sop) for _, _, sop in read.get_source_image_uids()}]
    out = {}
    for item in read.SegmentSequence:
        frames = np.zeros(shape, dtype=np.int64)
        pixels = read.get_pixels_by_source_instance(
            source_sop_instance_uids=referenced, segment_numbers=[int(item.SegmentNumber)],
            combine_segments=False, rescale_fractional=False,
        )
        frames[[uids.index(uid) for uid in referenced]] = pixels[..., 0]
        out[str(item.SegmentLabel)] = frames
    return out


async def _stored(communicator, message: dict, tmp_path) -> tuple[dict, pydicom.Dataset]:
    """The answer to a ``seg_store`` and the SEG it wrote, which dciodvfy accepts."""
    await communicator.send_json_to(message)
    stored = await _answer(communicator, "segmentation_stored")
    seg = await database_sync_to_async(_stored_seg)(stored["seg_series"])
    path = tmp_path / f"{stored['seg_series']}.dcm"
    seg.save_as(path, enforce_file_format=True)
    _valid(path)
    return stored, seg


async def test_a_model_s_segment_is_stored_as_its_probabilities_where_the_reader_left_it(
    client, signed_in, study, tmp_path
):
    from tests.rendering.test_onnx_models import sigmoid_model, sigmoid_truth, undecidable

    record, truth = study
    uids, values, centres = await database_sync_to_async(_stored_pet)()
    threshold = float(np.percentile(values, 99.5))
    scale, offset = 8.0 / threshold, -8.0  # p = 0.5 at the threshold, 0.02 at half of it
    spacing = (float(np.linalg.norm(centres[1, 0, 0] - centres[0, 0, 0])),
               *(float(np.linalg.norm(centres[0, 1, 0] - centres[0, 0, 0])),
                 float(np.linalg.norm(centres[0, 0, 1] - centres[0, 0, 0]))))
    await _model_registered(tmp_path, sigmoid_model(scale, offset), spacing)
    doctor = await database_sync_to_async(signed_in)("doctor")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready, listed, _ = await _opened(communicator)
    await communicator.send_json_to({"type": "seg_new", "view": _pet_view(ready), "label": "model, edited"})
    opened = (await _answer(communicator, "segmentation"))["segmentation"]
    await communicator.send_json_to({"type": "seg_segment", "segment": 1, "name": "marked"})
    await _answer(communicator, "segmentation")
    found = await _model_run(communicator, listed["models"][0]["id"])
    scored = {segment["name"]: segment.get("fractional", False) for segment in found["segments"]}
    assert scored == {"marked": False, "hot (hot spots)": True}
    await communicator.send_json_to({"type": "seg_undo"})
    undone = (await _answer(communicator, "segmentation"))["segmentation"]
    assert not any(segment.get("fractional") for segment in undone["segments"])
    await communicator.send_json_to({"type": "seg_redo"})
    await _answer(communicator, "segmentation")

    hot = next(segment["number"] for segment in found["segments"] if segment["name"].startswith("hot"))
    lesions = {lesion["organ"]: lesion["center_mm"] for lesion in truth["lesions"]}
    muscle = truth["organ_samples_mm"]["muscle"]
    for op in ({"tool": "brush", "segment": hot, "points_mm": [muscle], "radius_mm": 10.0},
               {"tool": "erase", "segment": hot, "points_mm": [lesions["lymph_node"]], "radius_mm": 6.0},
               {"tool": "brush", "segment": 1, "points_mm": [lesions["liver"]], "radius_mm": 6.0}):
        await database_sync_to_async(segmentation_edit)(opened["id"], op, author=doctor.username)

    stored, seg = await _stored(communicator, {"type": "seg_store", "fractional": True}, tmp_path)
    assert (stored["fractional"], stored["segments"]) == (True, 2)
    assert (seg.SegmentationType, seg.SegmentationFractionalType, seg.MaximumFractionalValue) == (
        "FRACTIONAL", "PROBABILITY", 255)
    written = _segment_frames(seg, uids, values.shape)

    def ball(point, radius):
        return np.linalg.norm(centres - np.asarray(point), axis=-1) <= radius

    probability, quantised = sigmoid_truth(values, scale, offset)
    model = probability > 0.5
    marked = ball(lesions["liver"], 6.0)
    final = (model | ball(muscle, 10.0)) & ~ball(lesions["lymph_node"], 6.0) & ~marked
    changed = model != final
    assert np.any(changed & final) and np.any(changed & ~final) and np.any(~changed & (quantised % 255 > 0))
    decidable = ~undecidable(probability)
    expected = np.where(changed, final * 255, quantised)
    np.testing.assert_array_equal(written["hot (hot spots)"][decidable], expected[decidable])
    np.testing.assert_array_equal(written["marked"], marked * 255)

    binary, seg = await _stored(communicator, {"type": "seg_store"}, tmp_path)
    assert (binary["fractional"], seg.SegmentationType) == (False, "BINARY")
    written = _segment_frames(seg, uids, values.shape)
    np.testing.assert_array_equal(written["hot (hot spots)"][decidable], final[decidable])
    np.testing.assert_array_equal(written["marked"], marked)
    await communicator.disconnect()


async def test_a_fractional_store_of_a_segmentation_drawn_by_hand_is_refused(client, signed_in, study):
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready, _, _ = await _opened(communicator)
    await communicator.send_json_to({"type": "seg_new", "view": _pet_view(ready), "label": "by hand"})
    opened = (await _answer(communicator, "segmentation"))["segmentation"]
    await database_sync_to_async(segmentation_edit)(
        opened["id"],
        {"tool": "brush", "segment": 1, "points_mm": [truth["lesions"][0]["center_mm"]], "radius_mm": 8.0},
        author=doctor.username,
    )

    await communicator.send_json_to({"type": "seg_store", "fractional": True})
    refused = await _until(communicator, _message("segmentation_stored"))
    assert (refused["type"], refused["code"], refused["of"]) == ("error", "store_failed", "seg_store")
    assert refused["message"] == NOT_FROM_A_MODEL
    await communicator.disconnect()
    stored = await database_sync_to_async(lambda: Series.objects.filter(modality="SEG").count())()
    assert stored == 0
