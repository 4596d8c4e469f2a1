"""Quick functions (#20): invert, flips, quarter turns, fit and 1:1 — frames against numpy on the
same volume, the pixel-to-patient mapping under each turn, and the validators' refusals."""

from __future__ import annotations

import numpy as np
import pytest

from rendering.engine.core import RenderEngine
from rendering.protocol import ProtocolError, message_parse
from rendering.session import SeriesInfo, ViewerSession
from rendering.viewstate import ViewStateError, viewstate_from_dict, viewstate_to_dict
from rendering.volume import Volume

SIZE = 64
SLICE = 1


@pytest.fixture(scope="module")
def volume() -> Volume:
    rng = np.random.default_rng(20)
    voxels = np.where(rng.random((3, SIZE, SIZE)) > 0.5, 1000, 0).astype(np.int16)
    return Volume(voxels, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "CT", "q.1", "for.q")


@pytest.fixture(scope="module")
def engine() -> RenderEngine:
    return RenderEngine()


def _slice(volume: Volume) -> np.ndarray:
    """The axial slice as a reader sees it unturned: rows along +y (j), columns along +x (i);
    the window 0..1000 makes 0 black and 1000 white."""
    return np.where(np.asarray(volume.voxels)[SLICE] > 0, 255, 0).astype(np.uint8)


def _state(volume: Volume, *, invert: bool = False, **camera):
    return viewstate_from_dict({
        "view": "axial", "width": SIZE, "height": SIZE, "quality": "still", "invert": invert,
        "focus_mm": [31.5, 31.5, float(SLICE)], "camera2d": {"zoom": 1.0, "pan_mm": [0, 0], **camera},
        "layers": [{"series_id": volume.series_id, "window_center": 500.0, "window_width": 1000.0}]})


@pytest.mark.parametrize(("camera", "expect"), [
    ({}, lambda a: a),
    ({"rotation": 90}, lambda a: np.rot90(a, -1)),
    ({"rotation": 180}, lambda a: np.rot90(a, 2)),
    ({"rotation": 270}, lambda a: np.rot90(a, 1)),
    ({"flip_h": True}, np.fliplr),
    ({"flip_v": True}, np.flipud),
    ({"rotation": 90, "flip_h": True}, lambda a: np.fliplr(np.rot90(a, -1))),
    ({"rotation": 270, "flip_v": True, "flip_h": True}, lambda a: np.flipud(np.fliplr(np.rot90(a, 1)))),
])
def test_turned_and_mirrored_frames_are_the_numpy_transformed_slice(volume, engine, camera, expect):
    shown = engine.pixels(_state(volume, **camera), {volume.series_id: volume})
    assert np.array_equal(shown, expect(_slice(volume)))


def test_invert_shows_255_minus_each_grey(volume, engine):
    shown = engine.pixels(_state(volume, invert=True, rotation=90), {volume.series_id: volume})
    assert np.array_equal(shown, 255 - np.rot90(_slice(volume), -1))


def _geometry(volume: Volume) -> dict:
    return {"shape": [3, SIZE, SIZE], "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
            "direction": np.eye(3).tolist(), "center": [31.5, 31.5, 1.0], "modality": "CT",
            "frame_of_reference_uid": volume.frame_of_reference_uid, "suv": False, "range": [0.0, 1000.0],
            "plane": "axial", "mpr": True, "colour": False, "kind": "volume", "windows": []}


def _session(volume: Volume) -> ViewerSession:
    session = ViewerSession(study_uid="9.9", series=[SeriesInfo(volume.series_id, "CT", "q",
                                                                _geometry(volume), number=1)])
    session.views[0].width = session.views[0].height = SIZE
    session.focus[volume.frame_of_reference_uid] = np.array([31.5, 31.5, float(SLICE)])
    return session


def _press(session: ViewerSession, *operations: str) -> None:
    for operation in operations:
        message = message_parse(f'{{"type": "input", "view": 0, "op": "{operation}"}}', views=1)
        session.apply_input(message)  # type: ignore[arg-type]


@pytest.mark.parametrize(("keys", "expect"), [
    (("rotate_cw",), lambda a: np.rot90(a, -1)),
    (("rotate_ccw",), lambda a: np.rot90(a, 1)),
    (("flip_h", "rotate_cw"), lambda a: np.rot90(np.fliplr(a), -1)),
    (("rotate_cw", "flip_h", "rotate_cw", "flip_v"),
     lambda a: np.flipud(np.rot90(np.fliplr(np.rot90(a, -1)), -1))),
    (("flip_v", "rotate_ccw", "invert"), lambda a: 255 - np.rot90(np.flipud(a), 1)),
    (("rotate_cw", "flip_h", "invert", "reset"), lambda a: a),
])
def test_quick_functions_compose_in_the_order_pressed(volume, engine, keys, expect):
    session = _session(volume)
    _press(session, *keys)
    state = viewstate_from_dict(_plain(session.state(0, quality="still")))
    assert np.array_equal(engine.pixels(state, {volume.series_id: volume}), expect(_slice(volume)))


def _plain(state) -> dict:
    """The session's state with the test's window (the session opens on the series' own window)."""
    data = viewstate_to_dict(state)
    data["layers"][0].update(window_center=500.0, window_width=1000.0, window_unit="native", palette="grey")
    data["layers"][0].pop("voi", None)
    return data


@pytest.mark.parametrize(("keys", "corner_mm"), [
    ((), (0.0, 0.0)),
    (("flip_h",), (63.0, 0.0)),
    (("flip_v",), (0.0, 63.0)),
    (("rotate_cw",), (0.0, 63.0)),
    (("rotate_ccw",), (63.0, 0.0)),
    (("rotate_cw", "rotate_cw"), (63.0, 63.0)),
    (("rotate_cw", "flip_h"), (0.0, 0.0)),
])
def test_a_view_pixel_maps_to_the_patient_point_shown_there_under_turns(volume, engine, keys, corner_mm):
    session = _session(volume)
    _press(session, *keys)
    frame = engine.render(session.state(0), {volume.series_id: volume})
    session.rendered(0, frame.overlay.plane)
    assert np.allclose(session.view_point_mm(0, (0.5, 0.5)), [*corner_mm, SLICE])
    # and the crosshair drawn at the focus is where that point maps back
    x, y = frame.overlay.crosshair_px
    assert np.allclose(session.view_point_mm(0, (x, y)), [31.5, 31.5, SLICE])


def test_fit_and_one_to_one(volume, engine):
    session = _session(volume)
    session.views[0].width = session.views[0].height = 128
    _press(session, "fit")
    frame = engine.render(session.state(0), {volume.series_id: volume})
    session.rendered(0, frame.overlay.plane)
    assert frame.overlay.plane["mm_per_pixel"] == pytest.approx(0.5)  # 64 mm across 128 pixels
    _press(session, "one_to_one")
    frame = engine.render(session.state(0), {volume.series_id: volume})
    assert frame.overlay.plane["mm_per_pixel"] == pytest.approx(1.0)  # one voxel per screen pixel
    session.rendered(0, frame.overlay.plane)
    _press(session, "fit")
    assert session.views[0].zoom == 1.0 and session.views[0].pan_mm == (0.0, 0.0)


@pytest.mark.parametrize("camera", [{"rotation": 45}, {"rotation": 360}, {"rotation": "90"},
                                    {"rotation": 90.0}, {"flip_h": 1}, {"flip_v": "yes"}, {"spin": 1}])
def test_view_state_refuses_bad_turns(volume, camera):
    with pytest.raises(ViewStateError):
        viewstate_from_dict({"view": "axial", "layers": [{"series_id": "q.1", "window_preset": "brain"}],
                             "camera2d": camera})
    with pytest.raises(ViewStateError):
        viewstate_from_dict({"view": "axial", "layers": [{"series_id": "q.1", "window_preset": "brain"}],
                             "invert": 1})


@pytest.mark.parametrize("message", [
    '{"type": "input", "view": 0, "op": "rotate_cw", "degrees": 90}',
    '{"type": "input", "view": 0, "op": "rotate_45"}',
    '{"type": "input", "view": 0, "op": "invert", "on": true}',
    '{"type": "input", "view": 3, "op": "flip_h"}',
])
def test_protocol_refuses_bad_quick_functions(message):
    with pytest.raises(ProtocolError):
        message_parse(message, views=1)


def test_link_all_moves_every_view_of_the_layout_and_unlinks(volume):
    other = {**_geometry(volume), "frame_of_reference_uid": "for.other"}
    session = ViewerSession(study_uid="9.9", series=[
        SeriesInfo(volume.series_id, "CT", "q", _geometry(volume), number=1),
        SeriesInfo("q.2", "CT", "other frame", other, number=2)])
    session.layout_apply("1x2")
    assert [view.kind for view in session.views] == ["axial", "axial"]
    assert {session.view_frame_of_reference(0), session.view_frame_of_reference(1)} == {"for.q", "for.other"}

    def scroll_window_zoom() -> list[list[int]]:
        return [session.apply_input(message_parse(raw, views=2)) for raw in (  # type: ignore[arg-type]
            '{"type": "input", "view": 0, "op": "scroll", "delta": 1}',
            '{"type": "input", "view": 0, "op": "window", "dc": 0, "dw": 512}',
            '{"type": "input", "view": 0, "op": "zoom", "factor": 2}')]

    other_focus = session.focus["for.other"].copy()
    assert scroll_window_zoom() == [[0], [0], [0]]
    assert np.array_equal(session.focus["for.other"], other_focus) and session.views[1].zoom == 1.0
    assert session.describe()["linked"] is False
    _press(session, "link_all")
    assert session.describe()["linked"] is True, "ready says it, so a client's button shows it"
    width = session.views[1].layers[0]["window_width"]
    assert scroll_window_zoom() == [[0, 1], [0, 1], [0, 1]]
    assert session.focus["for.other"][2] == pytest.approx(other_focus[2] + 1.0)
    assert session.views[1].layers[0]["window_width"] == pytest.approx(2 * width)
    assert session.views[0].zoom == 4.0 and session.views[1].zoom == 2.0
    _press(session, "link_all")
    assert scroll_window_zoom() == [[0], [0], [0]]


def test_the_toolbox_table_is_whole_and_its_keys_are_unique():
    from django.utils.functional import Promise

    from rendering.protocol import OPERATIONS
    from rendering.toolbox import MODES, QUICK, toolbox_wire

    keys = [item.key for item in (*MODES, *QUICK)]
    assert len(keys) == len(set(keys))
    assert all(mode.input is None or mode.input in OPERATIONS for mode in MODES)
    assert all(quick.name in OPERATIONS and OPERATIONS[quick.name] == {} for quick in QUICK)
    assert all(isinstance(item.label, Promise) for item in (*MODES, *QUICK)), "labels marked for translation"
    wire = toolbox_wire(measuring=False)
    assert "measure" not in [mode["name"] for mode in wire["modes"]]
    assert "measure" in [mode["name"] for mode in toolbox_wire(measuring=True)["modes"]]
    assert all(isinstance(item["label"], str) for item in (*wire["modes"], *wire["quick"]))
