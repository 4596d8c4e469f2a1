"""Derived series in a live viewer: a filter of the CT, arithmetic of two series, a preview.

The phantom PET/CT goes through the import door. A doctor asks for a 3-D Gaussian of the CT; the
derived series joins the reading (``ready``), is shown like any series and probed: its value at
the probed voxel must be the Gaussian computed here with numpy from the CT's own voxels (a
separable sum of exp(-x^2 / 2 sigma^2) weights in mm, not the filter module). The CT minus that Gaussian
must probe to the difference; a preview answers with a picture of the view; a nurse is refused.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from channels.db import database_sync_to_async
from PIL import Image

from imaging.models import Series
from imaging.volumes import load_volume
from tests.conftest import ZONES
from tests.rendering.test_consumer import _open, _until, phantom_dir, study  # noqa: F401

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

SIGMA_MM = 2.0


def _gaussian_at(voxels: np.ndarray, spacing: tuple[float, float, float],
                 index: tuple[int, int, int]) -> float:
    """The Gaussian-smoothed value at one voxel: separable weights along z, y and x, in mm."""
    block = voxels.astype(np.float64)
    slices = []
    weights = []
    for axis, (centre, step) in enumerate(zip(index, spacing, strict=True)):
        reach = int(np.ceil(4 * SIGMA_MM / step))
        low, high = max(0, centre - reach), min(voxels.shape[axis], centre + reach + 1)
        offsets = (np.arange(low, high) - centre) * step
        kernel = np.exp(-0.5 * (offsets / SIGMA_MM) ** 2)
        slices.append(slice(low, high))
        weights.append(kernel / kernel.sum())
    block = block[tuple(slices)]
    return float(np.einsum("kji,k,j,i->", block, *weights))


async def _derived(communicator, message: dict) -> tuple[dict, dict]:
    await communicator.send_json_to(message)
    done = await _until(communicator, lambda m: isinstance(m, dict) and (
        (m["type"] == "derived" and m["state"] != "running")
        or (m["type"] == "error" and m.get("of") == "derive")))
    assert done.get("state") == "done", done
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready"
                         and any(s["uid"] == done["series"] for s in m["series"]))
    return done, ready


async def _probe_of(communicator, view: int, uid: str) -> dict:
    await communicator.send_json_to({"type": "set", "view": view, "name": "series", "value": uid})
    frame = await _until(communicator, lambda m: not isinstance(m, dict) and m.view == view
                         and m.overlay.get("windows") and len(m.overlay["windows"]) == 1)
    x, y = frame.width // 2 + 7, frame.height // 2 - 5
    await communicator.send_json_to({"type": "probe", "view": view, "x": x, "y": y})
    return await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "probe")


def _ct_volume(uid: str):
    return load_volume(Series.objects.get(series_instance_uid=uid))


async def test_a_gaussian_of_the_ct_and_the_ct_minus_it_probe_to_values_computed_here(
        client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    names = {item["name"] for item in ready["derive"]["filters"]}
    assert {"gaussian", "median", "metz", "wiener", "butterworth_lowpass"} <= names
    ct = next(s["uid"] for s in ready["series"] if s["modality"] == "CT")

    gaussian, ready = await _derived(communicator, {"type": "derive", "operation": "gaussian", "series": [ct],
                                                    "parameters": {"sigma_mm": SIGMA_MM}})
    listed = next(s for s in ready["series"] if s["uid"] == gaussian["series"])
    assert listed["description"].startswith("Derived: gaussian")
    probe = await _probe_of(communicator, 0, gaussian["series"])
    volume = await database_sync_to_async(_ct_volume)(ct)
    index = tuple(int(v) for v in np.rint(volume.patient_to_index(np.asarray(probe["point"]))))
    expected = _gaussian_at(volume.voxels, volume.spacing, index)
    assert probe["value"] == pytest.approx(expected, abs=2.0), (probe, expected)

    difference, _ = await _derived(communicator, {"type": "derive", "operation": "difference",
                                                  "series": [ct, gaussian["series"]]})
    probe = await _probe_of(communicator, 0, difference["series"])
    index = tuple(int(v) for v in np.rint(volume.patient_to_index(np.asarray(probe["point"]))))
    expected = float(volume.voxels[index]) - _gaussian_at(volume.voxels, volume.spacing, index)
    assert probe["value"] == pytest.approx(expected, abs=2.0), (probe, expected)
    await communicator.disconnect()


async def test_a_preview_is_a_picture_of_the_view_and_a_nurse_may_not_derive(
        client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    plain = await _until(communicator, lambda m: not isinstance(m, dict) and m.view == 0)
    await communicator.send_json_to({"type": "filter_preview", "view": 0, "filter": "median",
                                     "parameters": {"radius_mm": 3}})
    preview = await _until(communicator, lambda m: isinstance(m, dict)
                           and m["type"] in {"filter_preview", "error"})
    assert preview["type"] == "filter_preview", preview
    assert "reduced" not in preview, "a median previews at full resolution"
    with Image.open(io.BytesIO(base64.b64decode(preview["image"]))) as picture:
        assert picture.size == (plain.width, plain.height)
        shown = np.asarray(picture.convert("L"), dtype=float)
    with Image.open(io.BytesIO(plain.image)) as picture:
        assert np.abs(shown - np.asarray(picture.convert("L"), dtype=float)).mean() > 0.5
    await communicator.send_json_to({"type": "filter_preview", "view": 0, "filter": "bilateral",
                                     "parameters": {"domain_sigma_mm": 2, "range_sigma": 50}})
    halved = await _until(communicator, lambda m: isinstance(m, dict)
                          and m["type"] in {"filter_preview", "error"})
    assert halved["type"] == "filter_preview" and halved["reduced"] == 2, halved
    with Image.open(io.BytesIO(base64.b64decode(halved["image"]))) as picture:
        assert picture.size == (plain.width, plain.height)
    await communicator.send_json_to({"type": "filter_preview", "view": 0, "filter": "median",
                                     "parameters": {"radius_mm": 999}})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["of"] == "filter_preview" and "radius_mm" in refused["message"]
    await communicator.disconnect()

    await database_sync_to_async(client.logout)()
    await database_sync_to_async(signed_in)("nurse")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    assert ready["derive"] is None
    ct = next(s["uid"] for s in ready["series"] if s["modality"] == "CT")
    await communicator.send_json_to({"type": "derive", "operation": "gaussian", "series": [ct],
                                     "parameters": {"sigma_mm": 1}})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["of"] == "derive" and "reporting" in refused["message"]
    await communicator.disconnect()
