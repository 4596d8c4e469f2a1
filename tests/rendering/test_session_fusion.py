"""The session's fused layers: fusing across frames only through registrations (chains
included), hiding a layer and showing it again, reordering fused layers; a 3-D view's fused
layer drawn as the viewer asks for it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imaging.registrations import FrameLink
from rendering.operations import WorkerContext, operation_named
from rendering.protocol import Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession
from rendering.viewstate import viewstate_from_dict, viewstate_to_dict
from rendering.volume import volume_describe


def _geometry(frame: str, modality: str) -> dict:
    return {"shape": [20, 64, 64], "spacing": [2.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
            "direction": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "center": [31.5, 31.5, 19.0],
            "modality": modality, "frame_of_reference_uid": frame, "suv": False, "range": [0.0, 100.0],
            "plane": "axial", "mpr": True, "colour": False, "kind": "volume"}


def _session() -> ViewerSession:
    return ViewerSession(study_uid="9.9", series=[
        SeriesInfo("1.1", "CT", "ct", _geometry("F.A", "CT"), number=1),
        SeriesInfo("1.2", "PT", "pet", _geometry("F.B", "PT"), number=2),
        SeriesInfo("1.3", "MR", "mr", _geometry("F.C", "MR"), number=3),
        SeriesInfo("1.4", "PT", "pet again", _geometry("F.A", "PT"), number=4),
    ])


def _shift(x: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[0, 3] = x
    return matrix


def _fuse(session: ViewerSession, uid: str) -> None:
    session.apply_setting(Setting(0, "series", "1.1", 0))
    session.apply_setting(Setting(0, "fuse", uid, 0))


def test_another_frame_fuses_only_through_a_registration_and_chains_compose():
    session = _session()
    session.apply_setting(Setting(0, "series", "1.1", 0))
    with pytest.raises(SessionError, match="register it onto"):
        session.apply_setting(Setting(0, "fuse", "1.3", 0))
    # MR (C) onto PET (B) and PET (B) onto CT (A): MR fuses over CT through both, composed.
    session.registrations_set([FrameLink("F.C", "F.B", _shift(5.0)), FrameLink("F.B", "F.A", _shift(7.0))])
    session.apply_setting(Setting(0, "fuse", "1.3", 0))
    fused = session.state(0).layers[1]
    assert fused.series_id == "1.3"
    assert np.allclose(np.asarray(fused.registration).reshape(4, 4), _shift(12.0))
    # A link used backwards is inverted: CT over PET is the PET->CT transform undone.
    session.apply_setting(Setting(1, "series", "1.2", 0))
    session.apply_setting(Setting(1, "fuse", "1.1", 0))
    assert np.allclose(np.asarray(session.state(1).layers[1].registration).reshape(4, 4), _shift(-7.0))
    # The same frame needs none.
    session.apply_setting(Setting(0, "fuse", "1.4", 0))
    assert session.state(0).layers[2].registration is None


def test_a_proposal_is_fused_until_cleared():
    session = _session()
    session.proposal_show("1.2", "1.1", list(_shift(3.0).ravel()))
    _fuse(session, "1.2")
    assert np.allclose(np.asarray(session.state(0).layers[1].registration).reshape(4, 4), _shift(3.0))
    session.proposal_clear()
    assert session.state(0).layers[1].registration is None  # drawn by the engine as refused


def test_a_hidden_layer_is_transparent_keeps_its_opacity_and_layers_reorder():
    session = _session()
    session.registrations_set([FrameLink("F.B", "F.A", np.eye(4)), FrameLink("F.C", "F.A", np.eye(4))])
    _fuse(session, "1.2")
    session.apply_setting(Setting(0, "fuse", "1.3", 0))
    session.apply_setting(Setting(0, "opacity", 0.7, 1))
    session.apply_setting(Setting(0, "visible", False, 1))
    assert [layer.opacity for layer in session.state(0).layers[1:]] == [0.0, 0.5]
    session.apply_setting(Setting(0, "visible", True, 1))
    assert session.state(0).layers[1].opacity == 0.7
    session.apply_setting(Setting(0, "order", 2, 1))
    assert [layer.series_id for layer in session.state(0).layers] == ["1.1", "1.3", "1.2"]
    for name, value in (("visible", False), ("order", 1)):
        with pytest.raises(SessionError, match="base layer"):
            session.apply_setting(Setting(0, name, value, 0))
    with pytest.raises(SessionError, match="fused layer"):
        session.apply_setting(Setting(0, "order", 3, 1))


def test_a_3d_view_draws_its_registered_fused_pet_through_the_render_operation(phantom, moved, engine):
    """The moved PET (its own frame) over the CT in a 3-D view: refused until a registration links
    the frames, then drawn; hidden again, the frame is exactly the unfused one. Each frame is the
    session's state as the consumer submits it, crossing as a dict into the worker's operation."""
    ct, _, _, volumes = phantom
    moved_pet, truth_move = moved
    volumes = {**volumes, moved_pet.series_id: moved_pet}
    session = ViewerSession(study_uid="9.9", series=[
        SeriesInfo(ct.series_id, "CT", "ct", volume_describe(ct), number=1),
        SeriesInfo(moved_pet.series_id, "PT", "pet, moved", volume_describe(moved_pet), number=2)])
    session.apply_setting(Setting(0, "series", ct.series_id, 0))
    session.apply_setting(Setting(0, "kind", "3d", 0))
    context = WorkerContext(engine, "phantom")

    def frame() -> tuple[bytes, np.ndarray]:
        state = viewstate_from_dict(viewstate_to_dict(session.state(0, segmentation=True)))
        rendered = operation_named("render").run(context, state, volumes, {"encoding": None})
        return rendered.data, np.asarray(Image.open(io.BytesIO(rendered.data)))

    unfused_data, unfused = frame()
    with pytest.raises(SessionError, match="register it onto"):
        session.apply_setting(Setting(0, "fuse", moved_pet.series_id, 0))
    session.registrations_set([FrameLink(moved_pet.frame_of_reference_uid, ct.frame_of_reference_uid,
                                         truth_move)])
    session.apply_setting(Setting(0, "fuse", moved_pet.series_id, 0))
    state = session.state(0, segmentation=True)
    assert state.view.value == "3d" and state.layers[1].registration is not None
    fused_data, fused = frame()
    assert fused.shape == unfused.shape
    assert (np.abs(fused.astype(int) - unfused.astype(int)).sum(axis=2) > 30).mean() > 0.01
    session.apply_setting(Setting(0, "visible", False, 1))
    assert frame()[0] == unfused_data
    session.apply_setting(Setting(0, "visible", True, 1))
    assert frame()[0] == fused_data


def test_a_series_level_registration_moves_only_its_series_and_composes_with_frame_links():
    """Two series of one frame registered (a PET/CT's PET that moved): the matrix is that series'
    alone, over a base of its frame or through the frame's links; undone when it is the base."""
    session = _session()
    session.series_join([SeriesInfo("1.5", "CT", "ct again", _geometry("F.A", "CT"), number=5)])
    session.apply_setting(Setting(0, "series", "1.1", 0))
    session.apply_setting(Setting(0, "fuse", "1.4", 0))
    session.apply_setting(Setting(0, "fuse", "1.5", 0))
    assert [layer.registration for layer in session.state(0).layers[1:]] == [None, None]
    changed = session.registrations_set([FrameLink("F.A", "F.A", _shift(4.0), series="1.4"),
                                         FrameLink("F.C", "F.A", _shift(5.0))])
    assert 0 in changed
    pet, other = session.state(0).layers[1:]
    assert np.allclose(np.asarray(pet.registration).reshape(4, 4), _shift(4.0))
    assert other.series_id == "1.5" and other.registration is None
    # The frame's links are not the series': nothing between frames came of it.
    assert session.frame_transform("F.A", "F.B") is None
    # The corrected PET as the base: the CT (its frame) and the MR (through F.C -> F.A) are
    # carried into the PET's own mm, the correction undone.
    session.apply_setting(Setting(1, "series", "1.4", 0))
    session.apply_setting(Setting(1, "fuse", "1.1", 0))
    session.apply_setting(Setting(1, "fuse", "1.3", 0))
    ct, mr = session.state(1).layers[1:]
    assert np.allclose(np.asarray(ct.registration).reshape(4, 4), _shift(-4.0))
    assert np.allclose(np.asarray(mr.registration).reshape(4, 4), _shift(1.0))
    # Over another frame the corrected PET goes through its correction, then the frames' link.
    session.apply_setting(Setting(1, "series", "1.3", 0))
    session.apply_setting(Setting(1, "fuse", "1.4", 0))
    assert np.allclose(np.asarray(session.state(1).layers[1].registration).reshape(4, 4), _shift(-1.0))
    # A proposal for the series wins over its accepted one until cleared.
    assert {0, 1} <= set(session.proposal_show("1.4", "1.1", list(_shift(3.0).ravel())))
    assert np.allclose(np.asarray(session.state(0).layers[1].registration).reshape(4, 4), _shift(3.0))
    assert session.state(0).layers[2].registration is None
    assert {0, 1} <= set(session.proposal_clear())
    assert np.allclose(np.asarray(session.state(0).layers[1].registration).reshape(4, 4), _shift(4.0))


def test_arithmetic_inputs_take_accepted_corrections_of_either_series_and_no_proposal():
    """What image arithmetic resamples through: frame links and series-level corrections that were
    accepted (a proposal on screen is not a result to compute with); frames nothing connects refused."""
    session = _session()
    assert session.series_transform("1.4", "1.1") is None  # one frame, nothing corrected
    with pytest.raises(KeyError):
        session.series_transform("1.2", "1.1")
    session.registrations_set([FrameLink("F.A", "F.A", _shift(4.0), series="1.4"),
                               FrameLink("F.B", "F.A", _shift(7.0))])
    assert np.allclose(session.series_transform("1.4", "1.1"), _shift(4.0))
    assert np.allclose(session.series_transform("1.1", "1.4"), _shift(-4.0))
    assert np.allclose(session.series_transform("1.2", "1.4"), _shift(3.0))
    session.proposal_show("1.4", "1.1", list(_shift(9.0).ravel()))
    assert np.allclose(session.series_transform("1.4", "1.1"), _shift(4.0))
