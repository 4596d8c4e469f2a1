"""The view-state validator: the only way untrusted JSON becomes a ViewState."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rendering.viewstate import (
    WINDOW_PRESETS,
    Palette,
    SlabMode,
    ViewKind,
    ViewStateError,
    WindowUnit,
    viewstate_from_dict,
    viewstate_to_dict,
)

VALID = {
    "view": "oblique",
    "layers": [
        {"series_id": "1.2.3", "window_center": 40, "window_width": 400},
        {"series_id": "1.2.4", "window_preset": "pet_suv_0_5", "palette": "hot_iron", "opacity": 0.5},
    ],
    "focus_mm": [1.5, -20, -300],
    "oblique_deg": [15, -30],
    "slab": {"mode": "mip", "thickness_mm": 10},
    "camera2d": {"zoom": 2, "pan_mm": [10, -5]},
    "camera3d": {"azimuth": 90, "elevation": 10, "zoom": 1.5},
    "preset3d": "pet_mip",
    "width": 640,
    "height": 480,
    "quality": "interactive",
}


def test_valid_state_round_trips():
    state = viewstate_from_dict(VALID)
    assert state.view is ViewKind.OBLIQUE
    assert state.slab.mode is SlabMode.MIP
    assert state.layers[1].palette is Palette.HOT_IRON
    assert state.layers[1].window_unit is WindowUnit.SUV
    assert (state.layers[1].window_center, state.layers[1].window_width) == (2.5, 5.0)
    assert viewstate_from_dict(viewstate_to_dict(state)) == state


def test_minimal_state_gets_defaults():
    state = viewstate_from_dict({"view": "axial", "layers": [{"series_id": "x", "window_preset": "lung"}]})
    assert (state.width, state.height, state.focus_mm) == (512, 512, None)
    assert state.layers[0].opacity == 1.0


def test_window_presets_are_data():
    assert {"brain", "lung", "bone", "abdomen", "pet_suv_0_5", "pet_suv_0_10"} <= set(WINDOW_PRESETS)
    assert WINDOW_PRESETS["pet_suv_0_10"].unit is WindowUnit.SUV
    assert WINDOW_PRESETS["pet_suv_0_10"].center - WINDOW_PRESETS["pet_suv_0_10"].width / 2 == 0


def mutate(path, value):
    data = copy.deepcopy(VALID)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    (("view",), "axial3", "view: must be one of"),
    (("view",), KeyError, "missing view"),
    (("extra",), 1, "unknown key"),
    (("width",), 4096, "width: must be between"),
    (("width",), 63, "width: must be between"),
    (("width",), 512.0, "width: must be an integer"),
    (("height",), True, "height: must be an integer"),
    (("focus_mm",), [0, 0], "focus_mm: must be a list of 3"),
    (("focus_mm",), [0, 0, math.nan], r"focus_mm\[2\]: must be between"),
    (("focus_mm",), [0, 0, "1"], r"focus_mm\[2\]: must be a number"),
    (("oblique_deg",), [0, 181], "oblique_deg"),
    (("slab", "mode"), "max", "slab.mode"),
    (("slab", "thickness_mm"), -1, "slab.thickness_mm"),
    (("camera2d", "zoom"), 0, "camera2d.zoom"),
    (("camera3d", "elevation"), 91, "camera3d.elevation"),
    (("camera3d", "spin"), 1, "unknown key"),
    (("quality",), "best", "quality"),
    (("layers",), [], "layers: must be a list of 1 to 4"),
    (("layers",), [{"series_id": "a", "window_preset": "lung"}] * 5, "layers"),
    (("layers", 0, "series_id"), "a/b", "series_id"),
    (("layers", 0, "series_id"), "x" * 129, "series_id"),
    (("layers", 0, "series_id"), 7, "series_id"),
    (("layers", 0, "window_width"), 0, "window_width"),
    (("layers", 0, "window_center"), 1e9, "window_center"),
    (("layers", 0, "opacity"), 1.5, "opacity"),
    (("layers", 0, "palette"), "jet", "palette"),
    (("layers", 0, "window_preset"), "liver", "give window_preset or"),
    (("layers", 1, "window_preset"), "liver", "window_preset: must be one of"),
    (("layers", 0, "registration"), [1] * 16, "last row"),
    (("layers", 0, "registration"), [0] * 12 + [0, 0, 0, 1], "invertible"),
])
def test_malformed_states_are_refused_with_one_error(path, value, message):
    with pytest.raises(ViewStateError, match=message):
        viewstate_from_dict(mutate(path, value))


@pytest.mark.parametrize("data", [None, [], "state", 3, {1: 2}, {"view": "axial"}])
def test_non_objects_are_refused(data):
    with pytest.raises(ViewStateError):
        viewstate_from_dict(data)


def test_registration_is_accepted():
    identity = [1, 0, 0, 5, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    state = viewstate_from_dict(mutate(("layers", 1, "registration"), identity))
    assert state.layers[1].registration[3] == 5


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=30,
)
KEYS = [("view",), ("layers",), ("width",), ("slab",), ("slab", "mode"), ("camera2d",),
        ("camera2d", "pan_mm"), ("layers", 0), ("layers", 0, "series_id"), ("layers", 0, "window_center"),
        ("layers", 1, "registration"),
        ("focus_mm",), ("quality",), ("preset3d",), ("oblique_deg",)]


def accepted_or_refused(data) -> None:
    with contextlib.suppress(ViewStateError):
        viewstate_from_dict(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_never_raises_anything_else(data):
    accepted_or_refused(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), json_values)
def test_mutated_valid_state_never_raises_anything_else(path, value):
    accepted_or_refused(mutate(path, value))
