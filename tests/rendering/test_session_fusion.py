"""The session's fused layers: fusing across frames only through registrations (chains
included), hiding a layer and showing it again, reordering fused layers."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.registrations import FrameLink
from rendering.protocol import Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession


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
