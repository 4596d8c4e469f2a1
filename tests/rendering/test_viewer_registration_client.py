"""The viewer's Registration panel, against a scripted server.

As in test_viewer_measure_client.py, Playwright's websocket routing plays the
gateway: it announces ``ready`` with a CT and a PET series (of two frames of
reference, which the wire does not name), ``findings_store`` for a reader who
may register, answers every ``resize`` with a frame and records what the page
sends. The ``registration`` messages (a job running, a proposal, its end) are
sent by each test when it wants them, so each step checks exactly what the
panel sends and shows; no transform is computed by the client.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.scripted import viewer_pages
from tests.rendering.test_viewer_measure_client import (
    CT,
    PET,
    SERIES,
    ScriptedGateway,
    _at,
    _box,
    _click,
    _in_canvas_pixels,
    _options,
    _ready,
    _shapes,
    _text,
)

pytestmark = pytest.mark.browser

CT_LOW_DOSE = "2.25.22"
THREE_SERIES = [*SERIES, {**SERIES[0], "uid": CT_LOW_DOSE, "description": "Low dose", "number": 3}]
REFUSED = "registering is part of reporting, which is not granted here"


def _registration(identifier: int, state: str, **fields: Any) -> dict[str, Any]:
    """A ``registration`` message as the gateway sends it (imaging.registrations.registration_wire)."""
    return {"type": "registration", "id": identifier, "fixed": CT, "moving": PET, "method": "rigid",
            "state": state, "matrix": None, "metric": None, "error_mm": None, "done": 0, "total": 0,
            "reason": "", "by": "doctor", "reg_series": "", **fields}


class RegistrationGateway(ScriptedGateway):
    """The measure tests' gateway, announcing `set fuse` and sending the reading's registrations."""

    def __init__(self, ready: dict[str, Any], *, findings_store: bool = True,
                 listed: list[dict[str, Any]] | None = None) -> None:
        ready = copy.deepcopy(ready)
        ready["vocabulary"]["settings"]["fuse"] = {"identifier": True}
        ready["findings_store"] = findings_store
        super().__init__(ready)
        self.listed = copy.deepcopy(listed or [])
        self.page_errors: list[str] = []

    def __call__(self, ws: Any) -> None:
        super().__call__(ws)
        self.send({"type": "registrations", "registrations": self.listed})


@pytest.fixture(scope="module")
def registration_page(served_demo):
    with viewer_pages(served_demo) as open_page:
        yield open_page


def _side_by_side(**kwargs: Any) -> dict[str, Any]:
    """View 1 shows the CT, view 2 the PET: one view of each series."""
    return _ready(layout="1x2", views=[{"kind": "axial", "layers": [CT]}, {"kind": "axial", "layers": [PET]}],
                  **kwargs)


def _status(page) -> str:
    return " ".join(_text(page, "#reg-status").split())


def _nudge(page, field: str, axis: str, sign: int):
    return page.locator(f"#reg-nudges button[data-field='{field}'][data-axis='{axis}'][data-sign='{sign}']")


def _asked(page, gateway: RegistrationGateway, kind: str, count: int = 1) -> list[dict[str, Any]]:
    _until(page, lambda: len(gateway.sent(kind)) >= count, what=f"{kind} sent")
    return gateway.sent(kind)


def _run(page, gateway: RegistrationGateway) -> None:
    before = len(gateway.sent("reg_run"))
    page.locator("#reg-run").click()
    _asked(page, gateway, "reg_run", before + 1)


def _landmark_marks(page, view: int) -> list[str]:
    return _shapes(page, view).locator(".landmark .landmark-number").all_text_contents()


def _near(got: list[list[float]], want: list[tuple[float, float]]) -> bool:
    return len(got) == len(want) and all(abs(a[0] - b[0]) < 0.6 and abs(a[1] - b[1]) < 0.6
                                         for a, b in zip(got, want, strict=True))


def test_the_panel_offers_the_volume_pair_and_lists_the_readings_registrations(registration_page):
    accepted = _registration(2, "accepted", metric=-0.61, reg_series="2.25.90")
    gateway = RegistrationGateway(_ready(views=[{"kind": "axial", "layers": [CT]}]), listed=[accepted])
    page = registration_page(gateway)
    try:
        _until(page, lambda: page.locator("#registration-section").is_visible(), what="the panel")
        assert _options(page, "#reg-fixed") == [CT, PET] and _options(page, "#reg-moving") == [CT, PET]
        assert page.locator("#reg-fixed").input_value() == CT, "fixed is the active view's series"
        assert page.locator("#reg-moving").input_value() == PET, "moving is the PET"
        assert _options(page, "#reg-kind") == ["rigid", "affine"]
        assert not page.locator("#reg-running").is_visible()
        assert not page.locator("#reg-proposal").is_visible()
        _until(page, lambda: page.locator("#reg-list .reg-item").count() == 1, what="the list")
        item = " ".join(_text(page, "#reg-list .reg-item").split())
        assert item == "rigid PT · PET WB → CT · Thorax accepted"
        assert page.locator("#reg-landmarks").get_attribute("aria-pressed") == "false"
        assert page.locator("#reg-landmarks-run").is_disabled()
        assert _text(page, "#reg-landmark-counts") == "fixed 0 / moving 0"
        # Choosing the other's series swaps the two.
        page.locator("#reg-moving").select_option(CT)
        assert page.locator("#reg-fixed").input_value() == PET
        assert not gateway.sent("reg_run") and not gateway.page_errors
    finally:
        page.close()


def test_a_reader_who_may_not_report_gets_no_registration_panel(registration_page):
    gateway = RegistrationGateway(_side_by_side(), findings_store=False)
    page = registration_page(gateway)
    try:
        page.wait_for_timeout(200)
        assert page.locator("#registration-section").is_hidden()
        assert "Landmarks" not in _text(page, "#mouse-map")
        box = _box(page, 0)
        _click(page, _at(box, .5, .5))
        _until(page, lambda: gateway.sent("input", op="focus"), what="the crosshair moved by a click")
        assert not [m for m in gateway.received if m["type"].startswith("reg_")]
        assert not gateway.page_errors
    finally:
        page.close()


def test_register_follows_the_job_and_cancel_stops_it(registration_page):
    gateway = RegistrationGateway(_side_by_side())
    page = registration_page(gateway)
    try:
        page.locator("#reg-kind").select_option("affine")
        _run(page, gateway)
        assert gateway.sent("reg_run") == [{"type": "reg_run", "fixed": CT, "moving": PET, "kind": "affine"}]
        assert page.locator("#reg-run").is_disabled(), "a second run while one is asked"

        # Another registration's progress is not this one's.
        gateway.send(_registration(3, "running", fixed=PET, moving=CT, done=9, total=10))
        gateway.send(_registration(5, "running", method="affine", done=3, total=20))
        progress = page.locator("#reg-progress")
        _until(page, lambda: page.locator("#reg-running").is_visible(), what="the progress bar")
        assert progress.evaluate("bar => [bar.value, bar.max]") == [3, 20]
        assert " ".join(_text(page, "#reg-progress-text").split()) == "affine (mutual information): 3 / 20"
        gateway.send(_registration(5, "running", method="affine", done=11, total=20))
        _until(page, lambda: progress.evaluate("bar => bar.value") == 11, what="the progress followed")

        page.locator("#reg-cancel").click()
        cancel = _asked(page, gateway, "reg_decide")
        assert cancel == [{"type": "reg_decide", "registration": 5, "decision": "cancel"}]
        gateway.send(_registration(5, "cancelled", method="affine", done=12, total=20,
                                   reason="cancelled by the reader"))
        _until(page, lambda: not page.locator("#reg-running").is_visible(), what="the job gone")
        assert _status(page) == "cancelled: cancelled by the reader"
        assert page.locator("#reg-run").is_enabled()

        # A failed run says why.
        _run(page, gateway)
        gateway.send(_registration(6, "failed", reason="the two series do not overlap"))
        _until(page, lambda: _status(page) == "failed: the two series do not overlap", what="the failure")
        assert page.locator("#reg-status").evaluate("line => line.classList.contains('failed')")
        assert not gateway.page_errors
    finally:
        page.close()


NUDGES = [("translate_mm", axis, sign, 2) for axis in range(3) for sign in (-1, 1)] + \
         [("rotate_deg", axis, sign, 1) for axis in range(3) for sign in (-1, 1)]


def test_a_proposal_is_nudged_accepted_or_rejected(registration_page):
    gateway = RegistrationGateway(_side_by_side())
    page = registration_page(gateway)
    try:
        _run(page, gateway)
        identity = [1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
        gateway.send(_registration(6, "proposed", metric=-0.5312, matrix=identity))
        _until(page, lambda: page.locator("#reg-proposal").is_visible(), what="the proposal")
        assert " ".join(_text(page, "#reg-proposal-text").split()) == \
            "rigid (mutual information): PT · PET WB onto CT · Thorax · metric -0.53"
        assert page.locator("#reg-nudges button").count() == 12

        for field, axis, sign, step in NUDGES:
            before = len(gateway.sent("reg_nudge"))
            _nudge(page, field, "xyz"[axis], sign).click()
            sent = _asked(page, gateway, "reg_nudge", before + 1)[-1]
            change = {"translate_mm": [0, 0, 0], "rotate_deg": [0, 0, 0]}
            change[field][axis] = sign * step
            assert sent == {"type": "reg_nudge", "registration": 6, **change}
        assert len(gateway.sent("reg_nudge")) == 12

        # The server answers a nudge with the moved proposal, now by hand.
        gateway.send(_registration(6, "proposed", method="manual", metric=-0.5312))
        _until(page, lambda: _text(page, "#reg-proposal-text").startswith("adjusted by hand"), what="manual")
        assert "metric -0.53 before the adjustment" in _text(page, "#reg-proposal-text")

        page.locator("#reg-accept").click()
        assert _asked(page, gateway, "reg_decide") == [
            {"type": "reg_decide", "registration": 6, "decision": "accept"}]
        assert page.locator("#reg-reject").is_disabled(), "a second decision while one is asked"
        gateway.send(_registration(6, "accepted", method="manual", reg_series="2.25.90"))
        _until(page, lambda: _status(page).startswith("accepted"), what="the acceptance")
        assert not page.locator("#reg-proposal").is_visible()
        assert "accepted" in _text(page, "#reg-list .reg-item[data-registration='6']")

        _run(page, gateway)
        gateway.send(_registration(7, "proposed", metric=-0.4))
        _until(page, lambda: page.locator("#reg-proposal").is_visible(), what="the second proposal")
        page.locator("#reg-reject").click()
        assert _asked(page, gateway, "reg_decide", 2)[-1] == {
            "type": "reg_decide", "registration": 7, "decision": "reject"}
        gateway.send(_registration(7, "rejected"))
        _until(page, lambda: _status(page) == "rejected", what="the rejection")
        assert not page.locator("#reg-proposal").is_visible()
        assert not gateway.page_errors
    finally:
        page.close()


def test_an_error_answering_a_registration_shows_in_the_panel(registration_page):
    gateway = RegistrationGateway(_side_by_side())
    page = registration_page(gateway)
    try:
        _run(page, gateway)
        gateway.send({"type": "error", "code": "refused", "of": "reg_run", "message": REFUSED})
        _until(page, lambda: _status(page) == f"refused: {REFUSED}", what="the refusal in the panel")
        assert page.locator("#reg-status").evaluate("line => line.classList.contains('failed')")
        assert page.locator("#reg-run").is_enabled(), "the ask was answered"
        assert not gateway.page_errors
    finally:
        page.close()


def test_fuse_lays_the_moving_series_over_the_active_view(registration_page):
    gateway = RegistrationGateway(_side_by_side())
    page = registration_page(gateway)
    try:
        _canvas(page, 0).focus()
        fuse = page.locator("#reg-fuse")
        assert fuse.is_enabled() and fuse.get_attribute("aria-pressed") == "false"
        fuse.click()
        assert _asked(page, gateway, "set") == [{"type": "set", "view": 0, "name": "fuse", "value": PET}]
        assert fuse.get_attribute("aria-pressed") == "true"
        # Refused (another frame of reference, not registered yet): the toggle goes back.
        gateway.send({"type": "error", "code": "refused", "of": "set", "view": 0,
                      "message": "that series is in another frame of reference: register it onto "
                                 "this view's series first"})
        _until(page, lambda: fuse.get_attribute("aria-pressed") == "false", what="the toggle back")
        assert _status(page).startswith("not fused: that series is in another frame of reference")
        # The moving series' own view: nothing to fuse it over.
        _canvas(page, 1).focus()
        assert fuse.is_disabled()
        assert not gateway.page_errors
    finally:
        page.close()


def test_landmarks_clicked_on_each_view_register_in_viewport_pixels(registration_page):
    gateway = RegistrationGateway(_side_by_side())
    page = registration_page(gateway)
    try:
        _until(page, lambda: page.locator("#registration-section").is_visible(), what="the panel")
        # Landmarks off: a click moves the crosshair, as ever.
        fixed_box, moving_box = _box(page, 0), _box(page, 1)
        _click(page, _at(fixed_box, .5, .5))
        _until(page, lambda: gateway.sent("input", op="focus", view=0), what="the crosshair moved")

        page.locator("#reg-landmarks").click()
        assert page.locator("#reg-landmarks").get_attribute("aria-pressed") == "true"
        focus_before = len(gateway.sent("input", op="focus"))
        spots = [(.3, .3), (.6, .35), (.45, .7)]
        fixed = [_at(fixed_box, *spot) for spot in spots]
        moving = [_at(moving_box, x + .05, y - .05) for x, y in spots]
        for where in fixed:
            _click(page, where)
        assert _text(page, "#reg-landmark-counts") == "fixed 3 / moving 0"
        assert page.locator("#reg-landmarks-run").is_disabled()
        for where in moving:
            _click(page, where)
        assert _text(page, "#reg-landmark-counts") == "fixed 3 / moving 3"
        assert _landmark_marks(page, 0) == ["1", "2", "3"] and _landmark_marks(page, 1) == ["1", "2", "3"]
        circle = _shapes(page, 0).locator(".landmark circle").first
        drawn = [float(circle.get_attribute(name) or "nan") for name in ("cx", "cy")]
        assert _near([drawn], [_in_canvas_pixels(fixed_box, *fixed[0])])

        page.locator("#reg-refine").check()
        page.locator("#reg-landmarks-run").click()
        sent = _asked(page, gateway, "reg_landmarks")
        assert len(sent) == 1
        message = sent[0]
        assert set(message) == {"type", "fixed_view", "moving_view", "fixed_points", "moving_points",
                                "refine"}
        assert (message["fixed_view"], message["moving_view"], message["refine"]) == (0, 1, True)
        assert _near(message["fixed_points"], [_in_canvas_pixels(fixed_box, *where) for where in fixed])
        assert _near(message["moving_points"], [_in_canvas_pixels(moving_box, *where) for where in moving])
        assert len(gateway.sent("input", op="focus")) == focus_before, "a landmark click moved the crosshair"
        assert not gateway.sent("input", op="window")

        # The answer is the registration of that pair, with its landmark error.
        gateway.send(_registration(8, "proposed", method="landmarks", error_mm=1.84))
        _until(page, lambda: page.locator("#reg-proposal").is_visible(), what="the landmark proposal")
        assert " ".join(_text(page, "#reg-proposal-text").split()) == \
            "landmarks: PT · PET WB onto CT · Thorax · landmark error 1.84 mm (RMS)"

        # Landmarks off again: a click moves the crosshair and adds nothing.
        page.locator("#reg-landmarks").click()
        _click(page, _at(fixed_box, .2, .8))
        _until(page, lambda: len(gateway.sent("input", op="focus")) == focus_before + 1, what="the crosshair")
        assert _text(page, "#reg-landmark-counts") == "fixed 3 / moving 3"
        page.locator("#reg-landmarks-clear").click()
        assert _text(page, "#reg-landmark-counts") == "fixed 0 / moving 0"
        assert _landmark_marks(page, 0) == [] and _landmark_marks(page, 1) == []
        assert len(gateway.sent("reg_landmarks")) == 1
        assert not gateway.page_errors
    finally:
        page.close()


def test_landmarks_come_from_one_view_of_each_series(registration_page):
    ready = _ready(layout="2x2", views=[{"kind": "axial", "layers": [CT]}, {"kind": "axial", "layers": [PET]},
                                        {"kind": "axial", "layers": [CT]},
                                        {"kind": "axial", "layers": [CT_LOW_DOSE]}])
    ready["series"] = THREE_SERIES
    gateway = RegistrationGateway(ready)
    page = registration_page(gateway)
    try:
        page.locator("#reg-landmarks").click()
        boxes = [_box(page, view) for view in range(4)]
        _click(page, _at(boxes[0], .4, .4))
        _click(page, _at(boxes[0], .6, .4))
        assert _text(page, "#reg-landmark-counts") == "fixed 2 / moving 0"

        # A view of neither series: nothing added, and the panel says why.
        _click(page, _at(boxes[3], .5, .5))
        assert _text(page, "#reg-landmark-counts") == "fixed 2 / moving 0"
        assert _status(page) == "view 4 shows neither the fixed nor the moving series: no landmark there"

        # Another view of the fixed series: its list begins again there.
        _click(page, _at(boxes[2], .5, .5))
        assert _text(page, "#reg-landmark-counts") == "fixed 1 / moving 0"
        assert _status(page) == "fixed landmarks begun again on view 3: all of them come from one view"
        assert _landmark_marks(page, 0) == [] and _landmark_marks(page, 2) == ["1"]

        # Choosing a measuring tool switches landmarks off (one click, one tool).
        page.locator("#measure-tool").select_option("line")
        assert page.locator("#reg-landmarks").get_attribute("aria-pressed") == "false"
        assert not gateway.sent("reg_landmarks") and not gateway.page_errors
    finally:
        page.close()
