"""The crop box over the socket: ``crop`` blacks out a view's pixels outside the box, null undoes it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from channels.db import database_sync_to_async
from PIL import Image

from tests.conftest import ZONES
from tests.rendering.test_consumer import _open, _until, phantom_dir, study  # noqa: F401
from tests.rendering.test_consumer_derived import _ct_volume, _derived, _probe_of

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


def _black(frame) -> float:
    with Image.open(io.BytesIO(frame.image)) as picture:
        return float((np.asarray(picture.convert("L")) < 3).mean())


async def test_a_crop_box_blacks_out_the_view_outside_it_and_null_undoes_it(client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    plain = await _until(communicator, lambda m: not isinstance(m, dict) and m.view == 0)
    before = _black(plain)
    assert before < 0.9
    # a box around the first voxel column: next to nothing of the slice is left
    await communicator.send_json_to({"type": "crop", "view": 0, "box": [0, 2, 0, 2, 0, 4000]})
    cropped = await _until(communicator, lambda m: not isinstance(m, dict) and m.view == 0
                           and _black(m) > 0.99)
    assert cropped.sequence > plain.sequence
    await communicator.send_json_to({"type": "crop", "view": 0, "box": None})
    await _until(communicator, lambda m: not isinstance(m, dict) and m.view == 0
                 and _black(m) < before + 0.05)
    await communicator.send_json_to({"type": "crop", "view": 0, "box": [0, 40, 0, 40, 9, 4]})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["of"] == "crop" and "k_min" in refused["message"], refused
    await communicator.disconnect()


async def test_crop_to_a_new_series_is_a_derived_series_probing_like_the_ct(client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    assert ready["derive"]["crop"] == {"operation": "crop", "space": "box"}
    ct = next(s["uid"] for s in ready["series"] if s["modality"] == "CT")
    volume = await database_sync_to_async(_ct_volume)(ct)
    extent = (np.array(volume.shape[::-1]) - 1) * np.array(volume.spacing[::-1])
    box = [float(v) for axis in range(3) for v in (extent[axis] * 0.25, extent[axis] * 0.75)]
    made, ready = await _derived(communicator, {"type": "derive", "operation": "crop", "series": [ct],
                                                "space": "box", "box": box})
    listed = next(s for s in ready["series"] if s["uid"] == made["series"])
    assert listed["description"].startswith("Derived: crop of") and listed["mpr"] is True, listed
    assert listed["images"] < volume.shape[0]
    probe = await _probe_of(communicator, 0, made["series"])
    at = volume.patient_to_index(np.asarray(probe["point"]))
    near = [sorted({int(np.floor(v + 0.5 - 0.02)), int(np.floor(v + 0.5 + 0.02))}) for v in at]
    values = {float(volume.voxels[k, j, i]) for k in near[0] for j in near[1] for i in near[2]}
    assert probe["value"] in values, (probe, at, values)
    await communicator.disconnect()
