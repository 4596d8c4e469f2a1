"""The crop box over the socket: ``crop`` blacks out a view's pixels outside the box, null undoes it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from channels.db import database_sync_to_async
from PIL import Image

from tests.conftest import ZONES
from tests.rendering.test_consumer import _open, _until, phantom_dir, study  # noqa: F401

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
