"""A reoriented series in a live viewer: made through the derived path, the same anatomy, refused when bad.

A doctor turns the phantom CT 90° about the patient's x axis: the new series joins the reading
marked derived (``Derived: rotate_x``), opens in its new acquisition plane (coronal), and a probe
of it finds the value of the CT's voxel at the probed point, read here from the CT (every voxel
keeps its patient position); it fuses over the CT without a registration. A tilt by 15° is made
too; a fifth quarter turn is refused with a reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from channels.db import database_sync_to_async

from tests.conftest import ZONES
from tests.rendering.test_consumer import _open, _until, phantom_dir, study  # noqa: F401
from tests.rendering.test_consumer_derived import _ct_volume, _derived, _probe_of

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


async def test_a_turned_ct_is_a_derived_series_probing_like_the_ct(client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    offered = {item["name"]: item for item in ready["derive"]["reorient"]}
    assert {"flip_i", "swap_jk", "rotate_z"} <= set(offered)
    assert offered["rotate_x"]["params"][0]["name"] == "turns"
    ct = next(s for s in ready["series"] if s["modality"] == "CT")
    assert ct["plane"] == "axial"

    turned, ready = await _derived(communicator, {"type": "derive", "operation": "rotate_x",
                                                  "series": [ct["uid"]], "parameters": {"turns": 1}})
    listed = next(s for s in ready["series"] if s["uid"] == turned["series"])
    assert turned["series"].startswith("drv:")
    assert listed["description"].startswith("Derived: rotate_x"), listed
    assert listed["plane"] == "coronal" and listed["mpr"] is True, listed
    probe = await _probe_of(communicator, 0, turned["series"])
    volume = await database_sync_to_async(_ct_volume)(ct["uid"])
    at = volume.patient_to_index(np.asarray(probe["point"]))
    # the view's plane may pass midway between two rows of voxels (the point is given to 0.01 mm):
    # at a tie either neighbour is the nearest voxel
    near = [sorted({int(np.floor(v + 0.5 - 0.02)), int(np.floor(v + 0.5 + 0.02))}) for v in at]
    values = {float(volume.voxels[k, j, i]) for k in near[0] for j in near[1] for i in near[2]}
    assert probe["value"] in values, (probe, at, values)

    # fused over the CT without a registration: the same frame of reference
    await communicator.send_json_to({"type": "set", "view": 0, "name": "series", "value": ct["uid"]})
    await communicator.send_json_to({"type": "set", "view": 0, "name": "fuse", "value": turned["series"]})
    fused = await _until(communicator, lambda m: (isinstance(m, dict) and m["type"] == "error") or (
        not isinstance(m, dict) and m.view == 0 and len(m.overlay.get("windows", [])) == 2))
    assert not isinstance(fused, dict), fused

    tilted, ready = await _derived(communicator, {"type": "derive", "operation": "tilt_x",
                                                  "series": [ct["uid"]], "parameters": {"degrees": 15}})
    listed = next(s for s in ready["series"] if s["uid"] == tilted["series"])
    assert listed["description"].startswith("Derived: tilt_x 15°") and listed["mpr"] is True, listed

    await communicator.send_json_to({"type": "derive", "operation": "rotate_x", "series": [ct["uid"]],
                                     "parameters": {"turns": 5}})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["of"] == "derive" and "turns" in refused["message"], refused
    await communicator.disconnect()
