"""Tabs, grids and the reading state a bookmark keeps, in the viewer session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rendering.grids import GridError, grid_parse
from rendering.protocol import Input, Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession, ViewLimitError
from rendering.viewstate import viewstate_to_dict
from rendering.workspaces import MAX_VIEWS


def _geometry(modality: str, frame: str) -> dict:
    shape, spacing = (40, 64, 64), (2.5, 1.0, 1.0)
    extent = np.array([(shape[2] - 1) * spacing[2], (shape[1] - 1) * spacing[1], (shape[0] - 1) * spacing[0]])
    return {"shape": list(shape), "spacing": list(spacing), "origin": [0.0, 0.0, 0.0],
            "direction": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            "center": [float(v) for v in extent / 2], "modality": modality,
            "frame_of_reference_uid": frame, "suv": False, "range": [0.0, 100.0], "plane": "axial",
            "mpr": True, "colour": False, "kind": "volume", "invert": False, "windows": [],
            "frame_time_ms": None}


def _session() -> ViewerSession:
    return ViewerSession(study_uid="9.9", series=[
        SeriesInfo("1.1", "CT", "body", _geometry("CT", "for.1"), number=1),
        SeriesInfo("1.2", "MR", "head", _geometry("MR", "for.2"), number=2),
    ])


def _slice_z(session: ViewerSession, tab: int) -> float:
    return float(session.tabs[tab].focus["for.1"][2])


def test_tabs_hold_sixteen_views_in_all_and_a_seventeenth_is_refused_saying_so():
    session = _session()
    session.layout_apply("2x2")
    for _ in range(3):
        session.tab_add("2x2")
    assert [len(tab.views) for tab in session.tabs] == [4, 4, 4, 4] and session.tab == 3
    with pytest.raises(ViewLimitError) as refused:
        session.tab_add("1x1")
    assert refused.value.code == "too_many_views" and str(MAX_VIEWS) in str(refused.value)
    assert len(session.tabs) == 4 and session.tab == 3
    with pytest.raises(ViewLimitError):
        session.grid_apply(grid_parse({"rows": 2, "columns": 3,
                                       "cells": [[r, c, 1, 1] for r in range(2) for c in range(3)]}))
    session.tab_close(0)
    assert session.tab == 2 and len(session.tabs) == 3
    assert session.tab_add("1x1") == [0] and sum(len(tab.views) for tab in session.tabs) == 13


def test_the_last_tab_stays_and_an_unknown_tab_is_refused():
    session = _session()
    with pytest.raises(SessionError):
        session.tab_close(0)
    with pytest.raises(SessionError):
        session.tab_select(3)


def test_a_scroll_moves_a_linked_tab_and_not_an_unlinked_one():
    session = _session()
    session.tab_add("1x1")
    session.tab_add("1x1")
    session.tab_link(0, True)
    session.tab_link(1, True)
    session.tab_select(0)
    before = [_slice_z(session, tab) for tab in range(3)]
    session.apply_input(Input(0, "scroll", {"delta": 4}))
    after = [_slice_z(session, tab) for tab in range(3)]
    assert after[0] == pytest.approx(before[0] + 4 * 2.5) and after[1] == after[0]
    assert after[2] == before[2]
    session.tab_link(1, False)
    session.apply_input(Input(0, "scroll", {"delta": 2}))
    assert _slice_z(session, 1) == after[1] and _slice_z(session, 0) == pytest.approx(after[0] + 5.0)


def test_window_and_zoom_follow_into_linked_tabs_where_the_modality_and_dimension_match():
    session = _session()
    session.tab_add("1x1")
    session.apply_setting(Setting(0, "series", "1.2", 0))  # tab 1 shows the MR
    session.tab_add("1x1")  # tab 2 shows the CT
    for tab in range(3):
        session.tab_link(tab, True)
    session.tab_select(0)
    ct_window = dict(session.tabs[2].views[0].layers[0])
    mr_window = dict(session.tabs[1].views[0].layers[0])
    session.apply_input(Input(0, "window", {"dc": 100, "dw": 50}))
    session.apply_input(Input(0, "zoom", {"factor": 2.0}))
    assert session.tabs[2].views[0].layers[0]["window_center"] != ct_window["window_center"]
    assert session.tabs[2].views[0].layers[0]["window_center"] == session.views[0].layers[0]["window_center"]
    assert session.tabs[1].views[0].layers[0]["window_center"] == mr_window["window_center"]
    assert session.tabs[1].views[0].zoom == session.tabs[2].views[0].zoom == 2.0


def test_a_grid_with_a_merged_cell_keeps_the_views_in_order_and_adds_what_it_lacks():
    session = _session()
    first = session.views[0]
    grid = grid_parse({"rows": 2, "columns": 2, "cells": [[1, 1, 1, 1], [0, 0, 2, 1], [0, 1, 1, 1]]})
    assert grid.cells == ((0, 0, 2, 1), (0, 1, 1, 1), (1, 1, 1, 1))
    assert session.grid_apply(grid) == [0, 1, 2]
    assert session.views[0] is first and session.describe()["grid"] == grid.wire()
    assert session.views[1].layers[0]["series_id"] == "1.2"  # the series not yet shown


@pytest.mark.parametrize("grid", [
    {"rows": 5, "columns": 1, "cells": [[r, 0, 1, 1] for r in range(5)]},
    {"rows": 2, "columns": 2, "cells": [[0, 0, 2, 2], [1, 1, 1, 1]]},
    {"rows": 2, "columns": 2, "cells": [[0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 1, 1]]},
    {"rows": 1, "columns": 2, "cells": [[0, 0, 1, 3]]},
    {"rows": 1, "columns": 1, "cells": [[0, 0, 1, True]]},
    {"rows": 1, "columns": 1, "cells": [[0, 0, 1, 1]], "extra": 1},
])
def test_a_grid_that_does_not_tile_is_refused(grid):
    with pytest.raises(GridError):
        grid_parse(grid)


def test_a_duplicated_view_opens_alone_in_a_new_tab_at_the_same_place():
    session = _session()
    session.layout_apply("1x3")
    session.apply_input(Input(1, "zoom", {"factor": 1.5}))
    wanted = viewstate_to_dict(session.state(1))
    assert session.view_duplicate(1) == [0]
    assert session.tab == 1 and session.layout == "1x1"
    assert viewstate_to_dict(session.state(0)) == wanted


def _all_states(session: ViewerSession) -> list[list[dict]]:
    shown, states = session.tab, []
    for number, tab in enumerate(session.tabs):
        session.tab = number
        states.append([viewstate_to_dict(session.state(i)) for i in range(len(tab.views))])
    session.tab = shown
    return states


def test_a_reading_kept_as_json_comes_back_identical_in_a_new_session():
    session = _session()
    session.layout_apply("2x2")
    session.apply_input(Input(0, "scroll", {"delta": 3}))
    session.apply_input(Input(2, "window", {"dc": 40, "dw": -30}))
    session.apply_setting(Setting(1, "palette", "hot_iron", 0))
    session.tab_add("1x2")
    session.tab_rename(1, "prior")
    session.apply_input(Input(1, "rotate_cw", {}))
    session.tab_link(0, True)
    session.tab_link(1, True)
    kept = json.loads(json.dumps(session.reading_snapshot()))
    again = _session()
    assert again.reading_restore(kept) == [0, 1]
    assert _all_states(again) == _all_states(session)
    assert [tab.wire() for tab in again.tabs] == [tab.wire() for tab in session.tabs]
    assert again.tabs[0].focus is again.tabs[1].focus  # linked tabs share their focus again


@pytest.mark.parametrize("spoil", [
    lambda state: state["tabs"][0]["views"][0]["layers"][0].update(series_id="6.6.6"),
    lambda state: state["tabs"][0]["views"][0].update(zoom="big"),
    lambda state: state["tabs"][0]["views"][0].update(zoom=float("nan")),
    lambda state: state["tabs"][0]["views"][0].update(secret=1),
    lambda state: state["tabs"][0]["views"][0].update(kind="teapot"),
    lambda state: state["tabs"][0]["views"].pop(),
    lambda state: state["tabs"].extend([state["tabs"][0]] * 4),
])
def test_a_bookmark_that_names_another_series_or_is_malformed_is_refused_and_changes_nothing(spoil):
    session = _session()
    session.layout_apply("2x2")
    kept = json.loads(json.dumps(session.reading_snapshot()))
    spoil(kept)
    reading = _session()
    before = _all_states(reading)
    with pytest.raises(SessionError):
        reading.reading_restore(kept)
    assert _all_states(reading) == before and len(reading.tabs) == 1


def test_two_views_exchange_cells_each_taking_the_size_of_its_new_cell():
    session = _session()
    session.grid_apply(grid_parse({"rows": 1, "columns": 2, "cells": [[0, 0, 1, 1], [0, 1, 1, 1]]}))
    session.resize(0, 300, 200)
    session.resize(1, 500, 400)
    first, second = (viewstate_to_dict(session.state(i)) for i in (0, 1))
    assert session.views_swap(0, 1) == [0, 1]
    swapped = [viewstate_to_dict(session.state(i)) for i in (0, 1)]
    assert swapped[0]["layers"] == second["layers"] and swapped[1]["layers"] == first["layers"]
    assert (swapped[0]["width"], swapped[0]["height"]) == (300, 200)
    assert (swapped[1]["width"], swapped[1]["height"]) == (500, 400)
