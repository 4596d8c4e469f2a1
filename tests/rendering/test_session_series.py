"""The viewer session with pictures beside volumes: opening plane, series switch, frames, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from rendering.protocol import Input, Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession

SAGITTAL = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # columns: i along y, j along -z, k along x


def _geometry(*, kind: str, plane: str, mpr: bool, shape=(20, 64, 64), direction=None,
              invert: bool = False) -> dict:
    direction = direction or ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    spacing = (2.0, 1.0, 1.0)
    origin = np.zeros(3)
    extent = np.array([(shape[2] - 1) * spacing[2], (shape[1] - 1) * spacing[1], (shape[0] - 1) * spacing[0]])
    center = origin + np.asarray(direction) @ (extent / 2)
    return {"shape": list(shape), "spacing": list(spacing), "origin": [0.0, 0.0, 0.0],
            "direction": [list(row) for row in direction], "center": [float(v) for v in center],
            "modality": "MR", "frame_of_reference_uid": "1.2.3", "suv": False, "range": [0.0, 100.0],
            "plane": plane, "mpr": mpr, "colour": False, "kind": kind, "invert": invert,
            "windows": [[50.0, 120.0]], "frame_time_ms": 40.0 if kind == "cine" else None}


def _session() -> ViewerSession:
    sagittal = np.array(SAGITTAL).T.tolist()
    return ViewerSession(study_uid="9.9", series=[
        SeriesInfo("1.1", "MR", "sag T1", _geometry(kind="volume", plane="sagittal", mpr=True,
                                                    direction=sagittal), number=1),
        SeriesInfo("1.2", "CR", "chest", _geometry(kind="images", plane="image", mpr=False,
                                                   shape=(1, 300, 200), invert=True), number=2),
        SeriesInfo("1.3", "US", "cine", _geometry(kind="cine", plane="image", mpr=False,
                                                  shape=(30, 64, 64)), number=3),
    ], unavailable=[{"uid": "1.4", "modality": "SR", "description": "", "number": 4,
                     "images": 1, "available": False, "reason": "not an image"}])


def test_a_sagittal_stack_opens_sagittal_and_pictures_open_in_their_own_plane():
    session = _session()
    assert session.views[0].kind == "sagittal"
    session.apply_setting(Setting(0, "series", "1.2", 0))
    view = session.views[0]
    assert view.kind == "native" and view.layers[0]["palette"] == "inverted"
    assert (view.layers[0]["window_center"], view.layers[0]["window_width"]) == (50.0, 120.0)


def test_the_ready_message_lists_every_series_in_order_with_why_one_cannot_be_shown():
    series = _session().describe()["series"]
    assert [s["uid"] for s in series] == ["1.1", "1.2", "1.3", "1.4"]
    assert series[2]["kind"] == "cine" and series[2]["frame_time_ms"] == 40.0
    assert series[3] == {"uid": "1.4", "modality": "SR", "description": "", "number": 4, "images": 1,
                         "available": False, "reason": "not an image"}


def test_pictures_refuse_reformats_and_unknown_series_are_refused():
    session = _session()
    session.apply_setting(Setting(0, "series", "1.3", 0))
    for kind in ("axial", "coronal", "3d"):
        with pytest.raises(SessionError):
            session.apply_setting(Setting(0, "kind", kind, 0))
    with pytest.raises(SessionError):
        session.apply_setting(Setting(0, "series", "1.4", 0))
    with pytest.raises(SessionError):
        _pictures_only().layout_apply("2x2")


def _pictures_only() -> ViewerSession:
    return ViewerSession(study_uid="9.9", series=[
        SeriesInfo("1.2", "CR", "chest", _geometry(kind="images", plane="image", mpr=False))])


def test_frame_moves_the_focus_to_that_image_of_a_cine():
    session = _session()
    session.apply_setting(Setting(0, "series", "1.3", 0))
    session.apply_input(Input(0, "frame", {"index": 7}))
    focus = session.focus["1.3"]
    assert focus[2] == pytest.approx(7 * 2.0)  # slice spacing 2 mm along k = z
    session.apply_input(Input(0, "frame", {"index": 500}))
    assert session.focus["1.3"][2] == pytest.approx(29 * 2.0)  # clamped to the last image


def test_a_time_point_change_reaches_every_view_of_the_dynamic_series_and_stops_at_the_last():
    dynamic = {**_geometry(kind="dynamic", plane="axial", mpr=True), "time_points": 5}
    session = ViewerSession(study_uid="9.9", series=[SeriesInfo("2.1", "PT", "dynamic", dynamic, number=1)])
    session.layout_apply("1x3")
    assert session.describe()["series"][0]["time_points"] == 5
    assert session.apply_input(Input(1, "time", {"index": 3})) == [0, 1, 2]
    assert [view.layers[0]["time_point"] for view in session.views] == [3, 3, 3]
    assert session.state(2).layers[0].time_point == 3
    session.apply_input(Input(0, "time", {"index": 40}))
    assert session.state(0).layers[0].time_point == 4


def test_a_time_point_does_nothing_to_a_series_with_one():
    session = _session()
    assert session.apply_input(Input(0, "time", {"index": 2})) == []
    assert session.state(0).layers[0].time_point == 0


def test_the_compare_layout_needs_a_second_study_and_hangs_its_closest_series_beside():
    session = _session()
    with pytest.raises(SessionError, match="another study"):
        session.layout_apply("compare")
    prior = [SeriesInfo("3.1", "CR", "old chest", _geometry(kind="images", plane="image", mpr=False,
                                                            shape=(1, 300, 200)), number=1, study="8.8"),
             SeriesInfo("3.2", "MR", "old sag T1", _geometry(kind="volume", plane="sagittal", mpr=True),
                        number=2, study="8.8")]
    session.study_add("8.8", prior, [])
    session.study_add("8.8", prior, [])
    assert session.describe()["studies"] == ["9.9", "8.8"]
    session.layout_apply("compare")
    assert [view.layers[0]["series_id"] for view in session.views] == ["1.1", "3.2"]
    assert {s["uid"]: s.get("study") for s in session.describe()["series"]}["3.1"] == "8.8"
