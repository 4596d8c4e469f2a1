"""Registration checked against a move known exactly: the phantom's PET rewritten by
``tests/rendering/moved.py`` as if the patient had moved by T^-1 (T: moved PET mm -> CT mm).

Every error is measured at the planted lesions' centres from ``truth.json`` and T, never
from the code's own output: a lesion at ``c`` in the CT is at ``T^-1 c`` in the moved PET,
so a registration ``M`` misses it by ``|M T^-1 c - c|`` (the target registration error).
"""

from __future__ import annotations

import numpy as np
import pytest

from imaging.phantom import phantom_write
from imaging.registrations import FrameLink
from rendering.engine.registration import (
    RegistrationCancelled,
    RegistrationError,
    compose,
    invert,
    is_rigid,
    register_automatic,
    register_landmarks,
)
from rendering.protocol import Setting
from rendering.session import SeriesInfo, ViewerSession
from rendering.testing import volume_from_dicom_folder, volumes_from_phantom
from rendering.viewstate import viewstate_from_dict
from rendering.volume import volume_describe
from tests.rendering.moved import pet_move, rigid_matrix, rotation_matrix

TRE_AUTOMATIC_MM = 2.0
TRE_LANDMARKS_MM = 3.0
CLICK_NOISE_MM = 1.0
FUSED_MISS_PX = 3.0
DEMO_SLICES = 200


def _centres(truth: dict) -> np.ndarray:
    return np.array([lesion["center_mm"] for lesion in truth["lesions"]], dtype=np.float64)


def _carry(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ np.asarray(matrix)[:3, :3].T + np.asarray(matrix)[:3, 3]


def _tre(matrix: np.ndarray, truth_move: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance (mm) from each CT lesion centre to where ``matrix`` puts the moved PET's lesion."""
    seen_in_moving = _carry(np.linalg.inv(truth_move), centres)
    return np.linalg.norm(_carry(matrix, seen_in_moving) - centres, axis=1)


@pytest.fixture(scope="module")
def registered(phantom, moved):
    """The rigid PET -> CT registration of the moved PET, and its progress reports."""
    ct = phantom[0]
    reports: list[tuple[int, int]] = []
    result = register_automatic(ct, moved[0], kind="rigid",
                                progress=lambda done, total: reports.append((done, total)))
    return result, reports


# --- automatic -----------------------------------------------------------------------------------


def test_the_moved_pet_is_registered_onto_the_ct_within_2_mm_at_every_lesion(phantom, moved, registered):
    _, _, truth, _ = phantom
    moved_pet, truth_move = moved
    result = registered[0]
    unregistered = _tre(np.eye(4), truth_move, _centres(truth))
    assert unregistered.min() > 4 * TRE_AUTOMATIC_MM, "the move must be large enough to need registering"
    errors = _tre(result.matrix, truth_move, _centres(truth))
    organs = [lesion["organ"] for lesion in truth["lesions"]]
    assert errors.max() <= TRE_AUTOMATIC_MM, list(zip(organs, errors, strict=True))
    assert moved_pet.frame_of_reference_uid != phantom[0].frame_of_reference_uid
    assert result.kind == "rigid" and is_rigid(result.matrix)
    assert result.levels == 3 and result.iterations > 0 and result.metric is not None and result.metric < 0


def test_the_pet_acquired_with_the_ct_registers_to_about_identity(phantom):
    ct, pet, truth, _ = phantom
    result = register_automatic(ct, pet, kind="rigid")
    assert _tre(result.matrix, np.eye(4), _centres(truth)).max() <= TRE_AUTOMATIC_MM


def test_an_affine_registration_starts_from_the_rigid_one_and_stays_within_2_mm(phantom, moved):
    ct, _, truth, _ = phantom
    reports: list[tuple[int, int]] = []
    result = register_automatic(ct, moved[0], kind="affine",
                                progress=lambda done, total: reports.append((done, total)))
    assert result.kind == "affine"
    assert _tre(result.matrix, moved[1], _centres(truth)).max() <= TRE_AUTOMATIC_MM
    assert reports[-1][0] == reports[-1][1] and {total for _, total in reports} == {reports[-1][1]}


def test_progress_rises_to_its_total_and_cancelling_stops_the_search_at_once(phantom, moved, registered):
    reports = registered[1]
    done = [d for d, _ in reports]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert {total for _, total in reports} == {reports[-1][1]} and done[-1] == reports[-1][1]

    seen: list[int] = []
    polls_after_cancel: list[int] = []

    def cancelled() -> bool:
        if seen:
            polls_after_cancel.append(1)
        return bool(seen)

    with pytest.raises(RegistrationCancelled):
        register_automatic(phantom[0], moved[0], progress=lambda d, t: seen.append(d), cancelled=cancelled)
    assert seen == [1], "nothing is reported after the cancel"
    assert len(polls_after_cancel) <= registered[0].levels + 2, "each level stops at its first iteration"


def test_bad_requests_are_refused_with_a_reason(phantom):
    ct, pet, _, _ = phantom
    with pytest.raises(RegistrationError, match="kind"):
        register_automatic(ct, pet, kind="elastic")
    with pytest.raises(RegistrationError, match="scales or shears"):
        register_automatic(ct, pet, kind="rigid", initial=np.diag([1.2, 1.0, 1.0, 1.0]))


@pytest.mark.slow
def test_the_demo_sized_pet_ct_registers_within_2_mm(tmp_path):
    phantom_write(out_dir=tmp_path / "phantom", slices=DEMO_SLICES, patients=1, seed=0)
    ct, _, truth = volumes_from_phantom(tmp_path / "phantom")
    truth_move = pet_move(tmp_path / "phantom" / truth["folder"] / "PT", tmp_path / "moved")
    result = register_automatic(ct, volume_from_dicom_folder(tmp_path / "moved"), kind="rigid")
    assert _tre(result.matrix, truth_move, _centres(truth)).max() <= TRE_AUTOMATIC_MM


# --- landmarks -----------------------------------------------------------------------------------


def test_four_clicked_lesions_register_within_3_mm_at_every_lesion(phantom, moved):
    truth, truth_move = phantom[2], moved[1]
    centres = _centres(truth)
    clicks = _carry(np.linalg.inv(truth_move), centres[:4])
    clicks += np.random.default_rng(5).uniform(-CLICK_NOISE_MM, CLICK_NOISE_MM, clicks.shape)
    result = register_landmarks(centres[:4], clicks)
    assert _tre(result.matrix, truth_move, centres).max() <= TRE_LANDMARKS_MM
    residuals = np.linalg.norm(_carry(result.matrix, clicks) - centres[:4], axis=1)
    assert result.fre_mm == pytest.approx(float(np.sqrt(np.mean(residuals ** 2))))
    assert 0 < result.fre_mm < np.sqrt(3) * CLICK_NOISE_MM
    assert is_rigid(result.matrix)


def test_landmarks_refined_by_the_images_register_within_2_mm(phantom, moved):
    ct, _, truth, _ = phantom
    centres = _centres(truth)
    clicks = _carry(np.linalg.inv(moved[1]), centres[:3])
    clicks += np.random.default_rng(6).uniform(-CLICK_NOISE_MM, CLICK_NOISE_MM, clicks.shape)
    result = register_landmarks(centres[:3], clicks, refine=True, fixed=ct, moving=moved[0])
    assert _tre(result.matrix, moved[1], centres).max() <= TRE_AUTOMATIC_MM
    assert result.iterations > 0 and result.fre_mm is not None
    with pytest.raises(RegistrationError, match="volumes"):
        register_landmarks(centres[:3], clicks, refine=True)


def test_too_few_collinear_or_unpaired_landmarks_are_refused(phantom):
    centres = _centres(phantom[2])
    with pytest.raises(RegistrationError, match="at least 3"):
        register_landmarks(centres[:2], centres[:2])
    line = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 0.0], [20.0, 20.0, 0.5], [35.0, 35.0, 0.0]])
    with pytest.raises(RegistrationError, match="on a line"):
        register_landmarks(line, line + 5.0)
    with pytest.raises(RegistrationError, match="partner"):
        register_landmarks(centres[:4], centres[:3])
    with pytest.raises(RegistrationError, match="affine"):
        register_landmarks(centres[:4], centres[:4], kind="affine")


# --- matrices ------------------------------------------------------------------------------------


def _random_rigid(rng: np.random.Generator) -> np.ndarray:
    angles = tuple(float(a) for a in rng.uniform(-30.0, 30.0, 3))
    return rigid_matrix(rotation_matrix(angles), rng.uniform(-50.0, 50.0, 3), rng.uniform(-100.0, 100.0, 3))


def test_a_chain_of_registrations_composes_and_inverts():
    rng = np.random.default_rng(11)
    points = rng.uniform(-200.0, 200.0, (20, 3))
    for _ in range(10):
        a_to_b, b_to_c = _random_rigid(rng), _random_rigid(rng)
        a_to_c = compose(a_to_b, b_to_c)
        np.testing.assert_allclose(_carry(a_to_c, points), _carry(b_to_c, _carry(a_to_b, points)), atol=1e-9)
        np.testing.assert_allclose(_carry(invert(a_to_c), _carry(a_to_c, points)), points, atol=1e-9)
        assert is_rigid(a_to_c) and is_rigid(invert(a_to_c))
    assert not is_rigid(np.diag([1.02, 1.0, 1.0, 1.0]))
    assert not is_rigid(np.diag([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(RegistrationError):
        invert(np.diag([0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(RegistrationError, match="last row"):
        compose(np.ones((4, 4)), np.eye(4))


# --- fused display -------------------------------------------------------------------------------


def _hot_spot_px(engine, ct, pet, lesion: dict, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where the CT lesion projects, centroid of the hottest PET pixels near it) in frame pixels.

    The PET layer is drawn opaque in grey, 0 .. SUVmax, so brightness is its value; the search
    is kept within 40 mm of the lesion so hotter organs elsewhere on the slice do not count.
    """
    suv = lesion["suv_max"]
    volumes = {ct.series_id: ct, pet.series_id: pet}
    state = viewstate_from_dict({
        "view": "axial", "focus_mm": lesion["center_mm"], "quality": "still", "width": 512, "height": 512,
        "layers": [{"series_id": ct.series_id, "window_preset": "abdomen"},
                   {"series_id": pet.series_id, "window_center": suv / 2, "window_width": suv,
                    "window_unit": "suv", "palette": "grey", "opacity": 1.0,
                    "registration": [float(v) for v in np.ravel(matrix)]}]})
    frame = engine.render(state, volumes)
    plane = frame.overlay.plane
    offset = np.asarray(lesion["center_mm"]) - np.asarray(plane["center_mm"])
    expected = np.array([offset @ np.asarray(plane["right"]) / plane["mm_per_pixel"] + frame.width / 2,
                         offset @ np.asarray(plane["down"]) / plane["mm_per_pixel"] + frame.height / 2])
    grey = engine.pixels(state, volumes)[..., 0].astype(int)
    rows, columns = np.mgrid[:grey.shape[0], :grey.shape[1]]
    centres = np.stack([columns + 0.5, rows + 0.5], axis=-1)
    near = np.linalg.norm(centres - expected, axis=-1) <= 40.0 / plane["mm_per_pixel"]
    hottest = near & (grey >= grey[near].max() - 2)
    return expected, centres[hottest].mean(axis=0)


def test_the_fused_frame_puts_the_moved_pets_lesion_on_the_cts(phantom, moved, registered, engine):
    ct, _, truth, _ = phantom
    moved_pet = moved[0]
    for lesion in truth["lesions"]:
        expected, found = _hot_spot_px(engine, ct, moved_pet, lesion, registered[0].matrix)
        assert np.linalg.norm(found - expected) <= FUSED_MISS_PX, (lesion["organ"], expected, found)
        expected, unregistered = _hot_spot_px(engine, ct, moved_pet, lesion, np.eye(4))
        assert np.linalg.norm(unregistered - expected) > 2 * FUSED_MISS_PX, "the check must see the move"


def test_the_moved_series_is_the_same_pixels_in_a_new_frame(phantom, moved):
    pet, truth = phantom[1], phantom[2]
    moved_pet = moved[0]
    assert moved_pet.shape == pet.shape and moved_pet.series_id != pet.series_id
    for lesion in truth["lesions"]:
        centre = np.asarray(lesion["center_mm"])
        before = tuple(np.rint(pet.patient_to_index(centre)).astype(int))
        seen_in_moved = _carry(np.linalg.inv(moved[1]), centre)
        after = tuple(np.rint(moved_pet.patient_to_index(seen_in_moved)).astype(int))
        assert moved_pet.voxels[after] == pet.voxels[before]


# --- two series of one frame ---------------------------------------------------------------------


def test_a_pet_moved_within_the_cts_frame_is_registered_and_fused_through_its_series_matrix(
        phantom, moved_same_frame, engine):
    """The moved PET keeps the CT's frame of reference (a PET/CT whose patient moved): as it is it
    fuses misplaced; registered, its layer (and only its) carries the matrix and the lesions land."""
    ct, pet, truth, _ = phantom
    moved_pet, truth_move = moved_same_frame
    assert moved_pet.frame_of_reference_uid == ct.frame_of_reference_uid == pet.frame_of_reference_uid
    result = register_automatic(ct, moved_pet, kind="rigid")
    errors = _tre(result.matrix, truth_move, _centres(truth))
    assert errors.max() <= TRE_AUTOMATIC_MM, errors
    assert _tre(np.eye(4), truth_move, _centres(truth)).min() > 4 * TRE_AUTOMATIC_MM

    session = ViewerSession(study_uid="9.9", series=[
        SeriesInfo(ct.series_id, "CT", "ct", volume_describe(ct), number=1),
        SeriesInfo(moved_pet.series_id, "PT", "pet, moved", volume_describe(moved_pet), number=2),
        SeriesInfo(pet.series_id, "PT", "pet", volume_describe(pet), number=3)])
    session.apply_setting(Setting(0, "series", ct.series_id, 0))
    session.apply_setting(Setting(0, "fuse", moved_pet.series_id, 0))
    session.apply_setting(Setting(0, "fuse", pet.series_id, 0))
    assert [layer.registration for layer in session.state(0).layers[1:]] == [None, None]
    lesion = truth["lesions"][0]
    expected, misplaced = _hot_spot_px(engine, ct, moved_pet, lesion, np.eye(4))
    assert np.linalg.norm(misplaced - expected) > 2 * FUSED_MISS_PX, "fused as it is, the PET is misplaced"

    matrix = [float(v) for v in np.ravel(result.matrix)]
    for shown in (lambda: session.proposal_show(moved_pet.series_id, ct.series_id, matrix),
                  lambda: session.registrations_set([FrameLink(
                      ct.frame_of_reference_uid, ct.frame_of_reference_uid, np.asarray(result.matrix),
                      series=moved_pet.series_id)])):
        session.proposal_clear()
        assert 0 in shown()
        registered, other = session.state(0).layers[1:]
        assert np.allclose(registered.registration, matrix) and other.registration is None
        for lesion in truth["lesions"]:
            expected, found = _hot_spot_px(engine, ct, moved_pet, lesion, np.asarray(registered.registration))
            assert np.linalg.norm(found - expected) <= FUSED_MISS_PX, (lesion["organ"], expected, found)
