"""A layer's file VOI preset (``voi``): strict on the wire, picked and dropped by the session, kept.

The grey values themselves are checked against pydicom in tests/imaging/test_voi_lut.py;
here the volume is built by hand, so the rendering side stands on its own.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import msgpack
import numpy as np
import pytest

from rendering import protocol
from rendering.engine.core import RenderEngine, RenderError
from rendering.hostvolumes import HostVolumes
from rendering.protocol import Input, ProtocolError, Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession
from rendering.viewstate import ViewStateError, viewstate_from_dict, viewstate_to_dict
from rendering.volume import Volume, presentation_from_dict, volume_describe
from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_client import VOCABULARY, viewer_page  # noqa: F401

ENGINE = RenderEngine()
ROWS, COLUMNS = 64, 96
GAMMA = [round(65535 * (i / 4095) ** 0.45) for i in range(4096)]
FACTS = {
    "kind": "images", "modality": "OT",
    "windows": [[40.0, 400.0], [1024.0, 4096.0]],
    "vois": [{"explanation": "ABDOMEN"},
             {"explanation": "", "lut": {"descriptor": [4096, -1024, 16], "data": GAMMA}}],
    "voi_function": "LINEAR",
}


def _volume(facts: dict = FACTS) -> Volume:
    voxels = np.linspace(-1024, 3071, ROWS * COLUMNS, dtype=np.float32).reshape(1, ROWS, COLUMNS)
    return Volume(voxels=np.rint(voxels), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                  direction=np.eye(3), modality="OT", series_id="9.1", frame_of_reference_uid="",
                  presentation=presentation_from_dict(facts), display=dict(facts))


def _state(voi=None, *, center: float = 1024.0, width: float = 4096.0, **layer) -> dict:
    return {"view": "native", "width": COLUMNS, "height": ROWS, "quality": "interactive",
            "layers": [{"series_id": "9.1", "window_center": center, "window_width": width,
                        **({} if voi is None else {"voi": voi}), **layer}]}


def _pixels(volume: Volume, state: dict) -> np.ndarray:
    return ENGINE.pixels(viewstate_from_dict(state), {volume.series_id: volume})


# --- view state and protocol ------------------------------------------------------------------


def test_a_layer_names_a_file_preset_by_index_or_none():
    assert viewstate_from_dict(_state()).layers[0].voi is None
    assert viewstate_from_dict(_state(voi=None)).layers[0].voi is None
    for voi in (0, 7):
        state = viewstate_from_dict(_state(voi))
        assert state.layers[0].voi == voi
        assert viewstate_from_dict(viewstate_to_dict(state)) == state


@pytest.mark.parametrize("bad", [
    {"voi": -1}, {"voi": 8}, {"voi": True}, {"voi": 1.5}, {"voi": "0"}, {"voi": [0]},
    {"voi": 0, "window_unit": "suv"},
])
def test_a_bad_voi_is_refused(bad):
    with pytest.raises(ViewStateError, match="voi"):
        viewstate_from_dict(_state(**bad))


def test_a_voi_with_a_named_preset_is_refused():
    state = _state()
    state["layers"][0] = {"series_id": "9.1", "window_preset": "lung", "voi": 0}
    with pytest.raises(ViewStateError, match="voi"):
        viewstate_from_dict(state)


def test_the_voi_travels_in_the_wire_form_workers_and_remote_hosts_read():
    state = viewstate_from_dict(_state(1))
    wire = msgpack.unpackb(msgpack.packb(viewstate_to_dict(state)))
    assert wire["layers"][0]["voi"] == 1
    assert viewstate_from_dict(wire) == state
    assert "voi" not in viewstate_to_dict(viewstate_from_dict(_state()))["layers"][0]


def test_the_voi_setting_is_announced_and_checked():
    assert protocol.vocabulary({})["settings"]["voi"] == {"min": 0, "max": 7, "integer": True}
    parsed = protocol.message_parse('{"type": "set", "view": 0, "name": "voi", "value": 1}', views=1)
    assert parsed == Setting(0, "voi", 1, 0)
    for value in ("8", "1.5", "-1", '"LUT 1"'):
        with pytest.raises(ProtocolError):
            protocol.message_parse(f'{{"type": "set", "view": 0, "name": "voi", "value": {value}}}', views=1)


# --- engine -------------------------------------------------------------------------------------


def test_a_preset_the_series_does_not_have_is_a_render_error():
    with pytest.raises(RenderError, match="window preset"):
        _pixels(_volume(), _state(2))


def test_a_lut_preset_differs_from_its_linear_window_and_follows_the_table():
    volume = _volume()
    exact = _pixels(volume, _state(1))
    table = np.rint(np.asarray(GAMMA) * 255 / 65535)
    values = np.asarray(volume.voxels[0])
    assert np.array_equal(exact, table[(values + 1024).astype(int)])
    assert np.abs(exact.astype(int) - _pixels(volume, _state()).astype(int)).max() > 40


def test_a_shared_volume_file_keeps_the_lut(tmp_path):
    volume = _volume()
    shared = HostVolumes(tmp_path, 1 << 24).put("9.1:v1", volume)
    assert shared is not volume and shared.presentation.vois == volume.presentation.vois
    assert np.array_equal(_pixels(shared, _state(1)), _pixels(volume, _state(1)))


# --- session ------------------------------------------------------------------------------------


def _session() -> ViewerSession:
    return ViewerSession(study_uid="9", series=[
        SeriesInfo("9.1", "OT", "curved", volume_describe(_volume()), number=1)])


def _layer(session: ViewerSession) -> dict:
    return session.views[0].layers[0]


def test_ready_names_each_file_preset_for_the_menu():
    series = _session().describe()["series"][0]
    assert series["windows"] == [
        {"name": "ABDOMEN", "function": "LINEAR", "center": 40.0, "width": 400.0},
        {"name": "LUT 1", "function": "LUT", "center": 1024.0, "width": 4096.0}]


def test_a_series_opens_in_its_first_preset_and_the_reader_picks_another():
    session = _session()
    assert _layer(session)["voi"] == 0 and session.state(0).layers[0].voi == 0
    assert session.apply_setting(Setting(0, "voi", 1, 0)) == [0]
    layer = session.state(0).layers[0]
    assert (layer.voi, layer.window_center, layer.window_width) == (1, 1024.0, 4096.0)
    with pytest.raises(SessionError):
        session.apply_setting(Setting(0, "voi", 2, 0))


def test_a_hand_window_change_drops_back_to_the_linear_window():
    session = _session()
    volume = _volume()
    session.apply_setting(Setting(0, "voi", 1, 0))
    chosen = session.state(0)
    linear = replace(chosen, layers=(replace(chosen.layers[0], voi=None),))
    session.apply_input(Input(0, "window", {"dc": 0.0, "dw": 0.0}))
    state = session.state(0)
    assert state.layers[0].voi is None
    shown = ENGINE.pixels(state, {"9.1": volume})
    assert np.array_equal(shown, ENGINE.pixels(linear, {"9.1": volume}))
    assert not np.array_equal(shown, ENGINE.pixels(chosen, {"9.1": volume}))


def test_a_named_preset_drops_the_file_preset_and_reset_brings_the_first_back():
    session = _session()
    session.apply_setting(Setting(0, "voi", 1, 0))
    session.apply_setting(Setting(0, "window_preset", "lung", 0))
    assert _layer(session)["voi"] is None
    session.apply_input(Input(0, "reset", {}))
    assert _layer(session)["voi"] == 0


def test_a_series_without_presets_opens_linear():
    facts = {"kind": "images", "modality": "OT", "windows": []}
    session = ViewerSession(study_uid="9", series=[
        SeriesInfo("9.1", "OT", "plain", volume_describe(_volume(facts)), number=1)])
    assert _layer(session)["voi"] is None
    assert session.describe()["series"][0]["windows"] == []


# --- the bundled client's preset menu -----------------------------------------------------------


@pytest.mark.browser
def test_the_preset_menu_offers_the_series_own_presets_and_sends_the_choice(viewer_page):  # noqa: F811
    from tests.rendering.test_viewer_controls_client import (
        CT,
        SERIES,
        ScriptedGateway,
        _open,
        _options,
        _ready,
    )

    vocabulary = copy.deepcopy(VOCABULARY)
    vocabulary["settings"]["voi"] = {"min": 0, "max": 7, "integer": True}
    ready = _ready(vocabulary=vocabulary)
    ready["series"] = [{**series, "windows": [
        {"name": "ABDOMEN", "function": "LINEAR", "center": 40, "width": 400},
        {"name": "LUT 1", "function": "LUT", "center": 1024, "width": 4096}]} if series["uid"] == CT
        else series for series in SERIES]
    gateway = ScriptedGateway(ready)
    page = _open(viewer_page, gateway)
    try:
        assert _options(page, "#window-preset") == [*VOCABULARY["settings"]["window_preset"]["choices"],
                                                    "voi:0", "voi:1"]
        labels = page.locator("#window-preset option").all_inner_texts()
        assert labels[-2:] == ["file: ABDOMEN", "file: LUT 1"]
        page.locator("#window-preset").select_option("voi:1")
        _until(page, lambda: gateway.sent("set", name="voi"), what="set voi")
        assert gateway.sent("set", name="voi") == [{"type": "set", "view": 0, "name": "voi", "value": 1}]
        assert page.locator("#window-preset").input_value() == "", "the preset menu returns to its prompt"
    finally:
        page.close()
