"""Registration in a live viewer: a PET of another frame of reference registered onto its CT.

The phantom's PET is rewritten as if the patient had moved by a known rigid transform T
(tests/rendering/moved.py: new planes, new frame of reference, pixels untouched) and imported
with the CT as one study. Fusing it is refused until a registration connects the frames; an
automatic job in the workers proposes one while the socket keeps working, and the proposal is
checked against T at the lesion centres (truth.json), not against the code's own output; a
nudge moves it by exactly what was asked; accepting stores a DICOM REG that dciodvfy passes and
that reads back to the matrix, and a later reading fuses through it at once.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from channels.db import database_sync_to_async
from pydicom.uid import generate_uid

from imaging import storage
from imaging.models import Instance, Registration
from imaging.registration_dicom import registration_read, spatial_registration
from imaging.registrations import accepted_links
from tests.conftest import ZONES
from tests.rendering.moved import pet_move
from tests.rendering.test_consumer import _open, _until, phantom_dir  # noqa: F401
from tests.stores import phantom_study

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

JOB_S = 240  # a registration on a busy two-core machine


def _moved_root(out, truth, root, *, same_frame: bool = False):
    patient = truth["patients"][0]
    shutil.copytree(out / patient["folder"] / "CT", root / patient["folder"] / "CT")
    return (pet_move(out / patient["folder"] / "PT", root / patient["folder"] / "PT", same_frame=same_frame),
            root / patient["folder"])


@pytest.fixture
def moved(phantom_dir, keys_dir, tmp_path, settings):  # noqa: F811
    """(study, truth, T): the CT as written and the PET moved, T taking the moved PET onto the CT."""
    out, truth = phantom_dir
    transform, _ = _moved_root(out, truth, tmp_path / "moved")
    with phantom_study(tmp_path / "moved", truth, settings, tmp_path / "objects") as (study, entry):
        yield study, entry, transform


@pytest.fixture
def moved_within(phantom_dir, keys_dir, tmp_path, settings):  # noqa: F811
    """As ``moved``, but the moved PET keeps the CT's frame of reference (a PET/CT's patient moved)."""
    out, truth = phantom_dir
    transform, _ = _moved_root(out, truth, tmp_path / "moved", same_frame=True)
    with phantom_study(tmp_path / "moved", truth, settings, tmp_path / "objects") as (study, entry):
        yield study, entry, transform


@pytest.fixture
def registered_elsewhere(phantom_dir, keys_dir, tmp_path, settings):  # noqa: F811
    """The moved study, imported with a REG another system made of it (the truth T)."""
    out, truth = phantom_dir
    transform, folder = _moved_root(out, truth, tmp_path / "moved")
    ct, pet = ([pydicom.dcmread(path, stop_before_pixels=True)
                for path in sorted((folder / name).glob("*.dcm"))] for name in ("CT", "PT"))
    reg = spatial_registration(fixed=ct[:3], moving=pet[:3], matrix=[float(v) for v in transform.ravel()],
                               kind="RIGID", description="PACS fusion", author="Other^System",
                               series_instance_uid=generate_uid(), series_number=50)
    reg.Manufacturer = "Other Vendor"
    reg.save_as(folder / "reg.dcm", enforce_file_format=True)
    with phantom_study(tmp_path / "moved", truth, settings, tmp_path / "objects") as (study, _):
        yield study


async def test_a_registration_another_system_sent_with_the_study_is_fused_through(
        client, signed_in, registered_elsewhere):
    await database_sync_to_async(signed_in)("doctor")
    communicator, _, _ = await _open(client, registered_elsewhere.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    await communicator.send_json_to({"type": "set", "view": 0, "name": "fuse", "value": _series(ready, "PT")})
    fused = await _until(communicator, lambda m: (isinstance(m, dict) and m["type"] == "error")
                         or (not isinstance(m, dict) and m.view == 0
                             and len(m.overlay.get("windows", [])) == 2))
    await communicator.disconnect()
    assert not isinstance(fused, dict), fused


def _series(ready: dict, modality: str) -> str:
    return next(series["uid"] for series in ready["series"] if series["modality"] == modality)


async def _answer(communicator, of: str, predicate=lambda m: True) -> dict:
    return await _until(communicator, lambda m: isinstance(m, dict) and (
        (m["type"] == "error" and m.get("of") == of) or (m["type"] != "error" and predicate(m))))


def _tre_mm(matrix: list[float], transform: np.ndarray, lesions: list[dict]) -> list[float]:
    """How far the proposal puts each lesion from where T (the truth) puts it, in the CT's frame."""
    found = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
    errors = []
    for lesion in lesions:
        centre = np.append(np.asarray(lesion["center_mm"], dtype=np.float64), 1.0)
        seen_in_moved = np.linalg.inv(transform) @ centre
        errors.append(float(np.linalg.norm((found @ seen_in_moved - centre)[:3])))
    return errors


async def _registered(communicator, ready: dict) -> dict:
    ct, pet = _series(ready, "CT"), _series(ready, "PT")
    await communicator.send_json_to({"type": "reg_run", "fixed": ct, "moving": pet})
    return await _answer(communicator, "reg_run", lambda m: m["type"] == "registration"
                         and m["state"] in {"proposed", "failed", "cancelled"})


async def test_a_moved_pet_is_registered_nudged_accepted_and_fused_through_its_reg(
        client, signed_in, moved, tmp_path):
    await database_sync_to_async(signed_in)("doctor")
    study, truth, transform = moved
    communicator, _, _ = await _open(client, study.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    ct, pet = _series(ready, "CT"), _series(ready, "PT")
    await communicator.send_json_to({"type": "set", "view": 0, "name": "fuse", "value": pet})
    refused = await _answer(communicator, "set", lambda m: False)
    assert "register it onto" in refused["message"]

    proposal = await _registered(communicator, ready)
    assert proposal["state"] == "proposed", proposal
    errors = _tre_mm(proposal["matrix"], transform, truth["lesions"])
    assert max(errors) <= 3.0, f"target registration error per lesion (mm): {errors}"

    await communicator.send_json_to({"type": "set", "view": 0, "name": "fuse", "value": pet})
    fused = await _until(communicator, lambda m: not isinstance(m, dict) and m.view == 0
                         and len(m.overlay.get("windows", [])) == 2)
    assert fused.overlay["windows"][1]["modality"] == "PT"

    await communicator.send_json_to({"type": "reg_nudge", "registration": proposal["id"],
                                     "translate_mm": [2, 0, -1], "rotate_deg": [0, 0, 0]})
    nudged = await _answer(communicator, "reg_nudge", lambda m: m["type"] == "registration"
                           and m["matrix"] != proposal["matrix"])
    before, after = (np.asarray(m["matrix"]).reshape(4, 4) for m in (proposal, nudged))
    assert np.allclose(after[:3, :3], before[:3, :3])
    assert np.allclose(after[:3, 3] - before[:3, 3], [2, 0, -1])
    assert nudged["method"] == "manual" and nudged["state"] == "proposed"

    await communicator.send_json_to({"type": "reg_decide", "registration": proposal["id"],
                                     "decision": "accept"})
    accepted = await _answer(communicator, "reg_decide", lambda m: m["type"] == "registration"
                             and m["state"] == "accepted")
    assert accepted["reg_series"]
    await communicator.disconnect()

    def stored_reg() -> pydicom.Dataset:
        (instance,) = Instance.objects.filter(series__series_instance_uid=accepted["reg_series"])
        return pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))

    reg = await database_sync_to_async(stored_reg)()
    reg.save_as(tmp_path / "reg.dcm", enforce_file_format=True)
    checked = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", str(tmp_path / "reg.dcm")],
                             capture_output=True, text=True)
    assert not [line for line in (checked.stdout + checked.stderr).splitlines() if "Error" in line], checked
    facts = registration_read(pydicom.dcmread(tmp_path / "reg.dcm"))
    (frame,) = facts.frames
    assert np.allclose(frame.matrix, after, atol=1e-4)

    again, _, _ = await _open(client, study.study_instance_uid)
    listed = await _until(again, lambda m: isinstance(m, dict) and m["type"] == "registrations")
    assert [r["state"] for r in listed["registrations"]] == ["accepted"]
    await again.send_json_to({"type": "set", "view": 0, "name": "fuse", "value": pet})
    await _until(again, lambda m: not isinstance(m, dict) and m.view == 0
                 and len(m.overlay.get("windows", [])) == 2)
    await again.disconnect()
    assert ct != pet


async def test_a_running_registration_can_be_cancelled_and_a_nurse_cannot_register(client, signed_in, moved):
    await database_sync_to_async(signed_in)("doctor")
    study, _, _ = moved
    communicator, _, _ = await _open(client, study.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    await communicator.send_json_to({"type": "reg_run", "fixed": _series(ready, "CT"),
                                     "moving": _series(ready, "PT"), "kind": "affine"})
    running = await _answer(communicator, "reg_run", lambda m: m["type"] == "registration")
    assert running["state"] == "running" and running["method"] == "affine"
    await communicator.send_json_to({"type": "reg_decide", "registration": running["id"],
                                     "decision": "cancel"})
    ended = await _answer(communicator, "reg_decide", lambda m: m["type"] == "registration"
                          and m["state"] != "running")
    assert ended["state"] == "cancelled", ended
    await communicator.disconnect()
    stored = await database_sync_to_async(Registration.objects.get)(pk=running["id"])
    assert stored.state == "cancelled" and stored.matrix is None

    await database_sync_to_async(client.logout)()
    await database_sync_to_async(signed_in)("nurse")
    communicator, _, _ = await _open(client, study.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    await communicator.send_json_to({"type": "reg_run", "fixed": _series(ready, "CT"),
                                     "moving": _series(ready, "PT")})
    refused = await _answer(communicator, "reg_run", lambda m: False)
    assert refused["code"] == "refused" and "reporting" in refused["message"]
    await communicator.disconnect()


def _dciodvfy_errors(path) -> list[str]:
    checked = subprocess.run([shutil.which("dciodvfy") or "dciodvfy", str(path)],
                             capture_output=True, text=True)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if "Error" in line]


async def test_a_pet_moved_within_the_cts_frame_is_registered_by_a_job_and_stored_per_series(
        client, signed_in, moved_within, tmp_path):
    """The PET shares the CT's frame: it fuses as it is at once, a job registers it all the same
    (within 2 mm of T at every lesion), and the accepted REG moves that series only."""
    await database_sync_to_async(signed_in)("doctor")
    study, truth, transform = moved_within
    communicator, _, _ = await _open(client, study.study_instance_uid)
    ready = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    pet = _series(ready, "PT")
    await communicator.send_json_to({"type": "set", "view": 0, "name": "fuse", "value": pet})
    await _until(communicator, lambda m: not isinstance(m, dict) and m.view == 0
                 and len(m.overlay.get("windows", [])) == 2)

    proposal = await _registered(communicator, ready)
    assert proposal["state"] == "proposed", proposal
    errors = _tre_mm(proposal["matrix"], transform, truth["lesions"])
    assert max(errors) <= 2.0, f"target registration error per lesion (mm): {errors}"
    await communicator.send_json_to({"type": "reg_decide", "registration": proposal["id"],
                                     "decision": "accept"})
    accepted = await _answer(communicator, "reg_decide", lambda m: m["type"] == "registration"
                             and m["state"] == "accepted")
    await communicator.disconnect()

    def stored_reg() -> pydicom.Dataset:
        (instance,) = Instance.objects.filter(series__series_instance_uid=accepted["reg_series"])
        return pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))

    reg = await database_sync_to_async(stored_reg)()
    reg.save_as(tmp_path / "reg.dcm", enforce_file_format=True)
    assert not _dciodvfy_errors(tmp_path / "reg.dcm")
    assert {str(item.FrameOfReferenceUID) for item in reg.RegistrationSequence} == {reg.FrameOfReferenceUID}
    facts = registration_read(pydicom.dcmread(tmp_path / "reg.dcm"))
    (within,) = facts.within
    assert facts.frames == () and within.series_instance_uids == (pet,)
    assert np.allclose(within.matrix, np.asarray(proposal["matrix"]).reshape(4, 4), atol=1e-4)
    (link,) = await database_sync_to_async(accepted_links)([study.study_instance_uid])
    assert link.series == pet and link.source == link.target
    assert np.allclose(link.matrix.ravel(), proposal["matrix"])
